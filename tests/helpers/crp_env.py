"""A side interpreter with zennit-crp 0.6.0 (Concept Relevance Propagation's reference) for the equivalence tests.

zennit-crp 0.6.0 pins ``zennit==0.4.6`` (and ``torch<2``, ``numpy<=1.23.5``, which its attribution code does not
need), while the main environment runs a newer zennit. :class:`side_env.SideEnv` builds a virtual environment
that sees the running torch, numpy, tqdm and matplotlib and holds only zennit 0.4.6 and zennit-crp 0.6.0, both
installed with ``--no-deps`` so pip never pulls a second torch. The first run installs them (seconds with a
network); the environment is cached under ``~/.cache/lrpfx``.
"""
from __future__ import annotations

import sys
import time
from typing import Optional

from .side_env import SideEnv

CRP_VERSION = "0.6.0"
ZENNIT_VERSION = "0.4.6"

# Run inside the side environment: zennit must be the pinned 0.4.6 *from the side environment itself* (not the
# running environment's newer zennit it also sees), and crp must import with it.
_CHECK = f"""
import json, sys, torch, zennit, crp.attribution, crp.concepts
from importlib.metadata import version
assert version("zennit") == {ZENNIT_VERSION!r}, version("zennit")
assert zennit.__file__.startswith(sys.prefix), ("running zennit not shadowed", zennit.__file__)
assert crp.attribution.__file__.startswith(sys.prefix), crp.attribution.__file__
print(json.dumps({{"torch": torch.__version__, "zennit": version("zennit"), "zennit-crp": version("zennit-crp")}}))
"""

CRP_ENV = SideEnv("zennit-crp", [["--no-deps", f"zennit=={ZENNIT_VERSION}"],
                                  ["--no-deps", f"zennit-crp=={CRP_VERSION}"]], _CHECK, shares=("torchvision", "tqdm"))


def crp_python() -> Optional[str]:
    """Path of a Python with zennit 0.4.6 and zennit-crp 0.6.0, building the environment on first use."""
    return CRP_ENV.python()


def crp_unavailable_reason() -> Optional[str]:
    """Why :func:`crp_python` returned None."""
    return CRP_ENV.reason


def crp_versions() -> Optional[dict]:
    """Versions recorded when the environment was built (torch, zennit, zennit-crp, build_s)."""
    return CRP_ENV.versions()


if __name__ == "__main__":
    t0 = time.monotonic()
    path = crp_python()
    print(path or crp_unavailable_reason(), crp_versions(), f"{time.monotonic() - t0:.1f}s")
    sys.exit(0 if path else 1)
