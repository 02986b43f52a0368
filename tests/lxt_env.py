"""A side interpreter with LXT 2.1 (the AttnLRP reference implementation) for the optional equivalence test.

LXT 2.1 is tested against ``transformers==4.52.4`` and replaces parts of that version's modeling code (BERT is a
copy of the 4.52 module), so it cannot run in the main environment with transformers 5.x. We build a virtual
environment with ``--system-site-packages`` so the system torch (and torchvision, zennit) are reused, and install
only the packages whose versions must differ into it; the venv's site-packages come first on ``sys.path`` and
shadow the system transformers/tokenizers/huggingface_hub.

``lxt`` itself goes in with ``--no-deps``: its declared dependencies (bitsandbytes, open_clip_torch, accelerate,
...) are not needed by ``lxt.efficient`` and would drag in a second torch.

Environment variables:
  LRPFX_LXT_VENV    where the venv lives (default ``~/.cache/lrpfx/lxt-venv``)
  LRPFX_NO_LXT=1    never build it (the test then skips)
"""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

LXT_VERSION = "2.1"
TRANSFORMERS_VERSION = "4.52.4"
PIP_TIMEOUT_S = 600
_MARKER = "lrpfx-lxt-ready.json"

_reason: Optional[str] = None
_cached: Optional[str] = None

# Run inside the venv: the versions must be the pinned ones and transformers must come from the venv itself,
# not from the system site-packages it was created with.
_CHECK = f"""
import json, sys, torch, transformers, lxt.efficient
assert transformers.__version__ == {TRANSFORMERS_VERSION!r}, transformers.__version__
assert transformers.__file__.startswith(sys.prefix), ("system transformers not shadowed", transformers.__file__)
from importlib.metadata import version
print(json.dumps({{"torch": torch.__version__, "transformers": transformers.__version__, "lxt": version("lxt")}}))
"""


def venv_dir() -> Path:
    return Path(os.environ.get("LRPFX_LXT_VENV", Path.home() / ".cache" / "lrpfx" / "lxt-venv"))


def _python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(cmd, timeout):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(map(str, cmd[:4]))} ... failed ({proc.returncode}):\n" + "\n".join(tail))
    return proc.stdout


def _build(venv: Path) -> dict:
    """Create the venv and install the pinned packages; returns the installed versions."""
    start = time.monotonic()
    if not _python(venv).exists():
        _run([sys.executable, "-m", "venv", "--system-site-packages", venv], 120)
    py = _python(venv)
    pip = [py, "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"]
    _run(pip + ["--no-deps", f"lxt=={LXT_VERSION}"], PIP_TIMEOUT_S)
    # transformers with its own deps: pip resolves tokenizers/huggingface_hub versions 4.52.4 accepts and puts
    # them in the venv; torch is not a dependency of transformers, so the system one stays.
    _run(pip + [f"transformers=={TRANSFORMERS_VERSION}"], PIP_TIMEOUT_S)
    versions = json.loads(_run([py, "-c", _CHECK], 300).strip().splitlines()[-1])
    versions["build_s"] = round(time.monotonic() - start, 1)
    return versions


def lxt_python() -> Optional[str]:
    """Path of a Python with lxt 2.1 and transformers 4.52.4, building the venv on first use; None if impossible."""
    global _reason, _cached
    if _cached is not None:
        return _cached
    if _reason is not None:  # failed earlier in this process: don't retry a 10-minute pip run per test
        return None
    if os.environ.get("LRPFX_NO_LXT"):
        _reason = "LRPFX_NO_LXT is set"
        return None
    venv = venv_dir()
    marker = venv / _MARKER
    try:
        venv.parent.mkdir(parents=True, exist_ok=True)
        # a lock file beside the venv so parallel test workers build it once
        with open(str(venv) + ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (marker.exists() and _python(venv).exists()):
                versions = _build(venv)
                marker.write_text(json.dumps(versions))
    except Exception as exc:  # no network, pip failure, import failure, timeout
        _reason = f"LXT environment unavailable at {venv}: {type(exc).__name__}: {exc}"
        return None
    _cached = str(_python(venv))
    return _cached


def lxt_unavailable_reason() -> Optional[str]:
    """Why :func:`lxt_python` returned None (None if it has not failed)."""
    return _reason


def lxt_versions() -> Optional[dict]:
    """Versions recorded when the venv was built (torch, transformers, lxt, build_s)."""
    marker = venv_dir() / _MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


if __name__ == "__main__":
    t0 = time.monotonic()
    path = lxt_python()
    print(path or lxt_unavailable_reason(), lxt_versions(), f"{time.monotonic() - t0:.1f}s")
    sys.exit(0 if path else 1)
