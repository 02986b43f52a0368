"""Side interpreters for reference implementations whose pins clash with the main environment.

LXT 2.1 needs ``transformers==4.52.4`` and zennit-crp 0.6.0 pins ``zennit==0.4.6``; neither can be installed next
to the packages the tests run with. A side environment is a virtual environment of its own in which only the
pinned packages are installed, and which sees the *running* interpreter's packages (torch above all) behind its
own: a ``.pth`` file in its site-packages adds the running interpreter's site directories after the side
environment's own, so a pinned package there shadows the main one.

Why not ``venv --system-site-packages``: created from inside a virtual environment, that flag exposes the *base*
interpreter's packages, not the active environment's, so torch installed in a venv (the normal case) would be
missing there.

The environment is built on first use (a lock file keeps parallel workers from building it twice), cached under
``~/.cache/lrpfx/<name>-<key>`` where the key names the running interpreter and torch version, and reused.
``LRPFX_SIDE_ENV_DIR`` moves the cache.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import site
import subprocess
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

PIP_TIMEOUT_S = 900
_MARKER = "lrpfx-side-env.json"


def _run(cmd, timeout: float) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} ... failed ({proc.returncode}):\n" + "\n".join(tail))
    return proc.stdout


def running_site_dirs() -> List[str]:
    """The running interpreter's site directories (a venv's own site-packages when it runs in one)."""
    dirs = list(site.getsitepackages())
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    return [d for d in dirs if os.path.isdir(d)]


class SideEnv:
    """A cached virtual environment with pinned packages that also sees the running interpreter's packages.

    ``installs`` is a list of pip argument lists, run in order (``[["--no-deps", "lxt==2.1"], ...]``);
    ``check`` is Python code run in the environment that prints one JSON line of versions and fails when the
    environment is not what the tests need.
    """

    def __init__(self, name: str, installs: Sequence[Sequence[str]], check: str):
        self.name, self.installs, self.check = name, [list(i) for i in installs], check
        self.reason: Optional[str] = None
        self._python: Optional[str] = None

    @property
    def directory(self) -> Path:
        key = hashlib.sha256(f"{sys.prefix}|{torch.__version__}|{self.installs}".encode()).hexdigest()[:10]
        root = Path(os.environ.get("LRPFX_SIDE_ENV_DIR", Path.home() / ".cache" / "lrpfx"))
        return root / f"{self.name}-{key}"

    def _interpreter(self) -> Path:
        return self.directory / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def _link_running_packages(self) -> None:
        """Make the running interpreter's packages visible behind the environment's own (site.addsitedir also
        processes their .pth files: editable installs keep working)."""
        py = self._interpreter()
        own = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], 60).strip()
        lines = "".join(f"import site; site.addsitedir({d!r})\n" for d in running_site_dirs())
        (Path(own) / "_lrpfx_running_env.pth").write_text(lines)

    def _build(self) -> dict:
        start = time.monotonic()
        if not self._interpreter().exists():
            _run([sys.executable, "-m", "venv", self.directory], 180)
        self._link_running_packages()  # before pip: pins are resolved against the running torch, not a new one
        pip = [self._interpreter(), "-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-q"]
        for args in self.installs:
            _run(pip + args, PIP_TIMEOUT_S)
        versions = self._check()
        versions["build_s"] = round(time.monotonic() - start, 1)
        return versions

    def _check(self) -> dict:
        return json.loads(_run([self._interpreter(), "-c", self.check], 300).strip().splitlines()[-1])

    def python(self) -> Optional[str]:
        """Path of the environment's interpreter, built on first use; None (see :attr:`reason`) if impossible."""
        if self._python is not None or self.reason is not None:
            return self._python
        marker = self.directory / _MARKER
        try:
            self.directory.parent.mkdir(parents=True, exist_ok=True)
            with open(str(self.directory) + ".lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (marker.exists() and self._interpreter().exists()):
                    marker.write_text(json.dumps(self._build()))
                else:
                    self._link_running_packages()
        except Exception as exc:  # no network, pip failure, import failure, timeout
            self.reason = f"{self.name} environment unavailable at {self.directory}: {type(exc).__name__}: {exc}"
            return None
        self._python = str(self._interpreter())
        return self._python

    def versions(self) -> Optional[dict]:
        """Versions recorded when the environment was built (plus ``build_s``)."""
        marker = self.directory / _MARKER
        return json.loads(marker.read_text()) if marker.exists() else None
