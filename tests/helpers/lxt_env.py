"""A side interpreter with LXT 2.1 (the AttnLRP reference implementation) for the equivalence tests.

LXT 2.1 is tested against ``transformers==4.52.4`` and replaces parts of that version's modeling code, so it
cannot run in the main environment with transformers 5.x. :class:`side_env.SideEnv` builds a virtual environment
that sees the running torch and holds only the packages whose versions must differ. ``lxt`` goes in with
``--no-deps``: its declared dependencies (bitsandbytes, open_clip_torch, accelerate, ...) are not needed by
``lxt.efficient`` and would drag in a second torch. The first run installs them (about a minute with a network).
"""
from __future__ import annotations

import sys
import time
from typing import Optional

from .side_env import SideEnv

LXT_VERSION = "2.1"
TRANSFORMERS_VERSION = "4.52.4"

# Run inside the side environment: the versions must be the pinned ones and transformers must come from the side
# environment itself, not from the running one it sees.
_CHECK = f"""
import json, sys, torch, transformers, lxt.efficient
assert transformers.__version__ == {TRANSFORMERS_VERSION!r}, transformers.__version__
assert transformers.__file__.startswith(sys.prefix), ("running transformers not shadowed", transformers.__file__)
from importlib.metadata import version
print(json.dumps({{"torch": torch.__version__, "transformers": transformers.__version__, "lxt": version("lxt")}}))
"""

LXT_ENV = SideEnv("lxt", [["--no-deps", f"lxt=={LXT_VERSION}"], [f"transformers=={TRANSFORMERS_VERSION}"]], _CHECK,
                  shares=("torchvision",))  # lxt.efficient imports torchvision


def lxt_python() -> Optional[str]:
    """Path of a Python with lxt 2.1 and transformers 4.52.4, building the environment on first use."""
    return LXT_ENV.python()


def lxt_unavailable_reason() -> Optional[str]:
    """Why :func:`lxt_python` returned None."""
    return LXT_ENV.reason


def lxt_versions() -> Optional[dict]:
    """Versions recorded when the environment was built (torch, transformers, lxt, build_s)."""
    return LXT_ENV.versions()


if __name__ == "__main__":
    t0 = time.monotonic()
    path = lxt_python()
    print(path or lxt_unavailable_reason(), lxt_versions(), f"{time.monotonic() - t0:.1f}s")
    sys.exit(0 if path else 1)
