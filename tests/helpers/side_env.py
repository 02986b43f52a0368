"""Side interpreters for reference implementations whose pins clash with the main environment.

LXT 2.1 needs ``transformers==4.52.4`` and zennit-crp 0.6.0 pins ``zennit==0.4.6``; neither can be installed next
to the packages the tests run with. A side environment is a virtual environment of its own in which only the
pinned packages are installed, and which sees the *running* interpreter's torch — and only what it shares on
purpose: the distributions named in ``shares`` and everything they require, nothing else of the main
environment. A folder of links to those distributions' files is added behind the side environment's own
packages by a ``.pth`` file, so a pinned package there shadows the main one, and a package the main environment
has in a newer release (transformers 5 needs a newer ``huggingface_hub`` and ``kernels``) cannot leak into a
side environment pinned to an older one.

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
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import List, Optional, Sequence

import torch
from packaging.requirements import Requirement

PIP_TIMEOUT_S = 900
_MARKER = "lrpfx-side-env.json"


def _run(cmd, timeout: float) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        raise RuntimeError(f"{' '.join(map(str, cmd[:6]))} ... failed ({proc.returncode}):\n" + "\n".join(tail))
    return proc.stdout


def required_closure(names: Sequence[str]) -> List[metadata.Distribution]:
    """The running interpreter's distributions ``names`` and, recursively, every one they require (extras and
    requirements whose markers do not hold here are left out; a requirement not installed is skipped)."""
    found: dict = {}
    pending = list(names)
    while pending:
        name = _canonical(pending.pop())
        if name in found:
            continue
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found[name] = dist
        for text in dist.requires or []:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return list(found.values())


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def link_distributions(dists: Sequence[metadata.Distribution], folder: Path) -> None:
    """Fill ``folder`` with links to the top-level files and folders of ``dists`` (packages, their metadata, and
    the shared libraries they ship), so that a path entry on ``folder`` imports exactly these."""
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for dist in dists:
        for top in {PurePosixPath(str(f)).parts[0] for f in dist.files or ()} - {".."}:
            source, link = Path(dist.locate_file(top)), folder / top
            if source.exists() and not link.exists():
                link.symlink_to(source, target_is_directory=source.is_dir())


class SideEnv:
    """A cached virtual environment with pinned packages that also sees the running interpreter's packages.

    ``installs`` is a list of pip argument lists, run in order (``[["--no-deps", "lxt==2.1"], ...]``);
    ``shares`` names the running interpreter's distributions the environment sees (with what they require);
    ``check`` is Python code run in the environment that prints one JSON line of versions and fails when the
    environment is not what the tests need.
    """

    def __init__(self, name: str, installs: Sequence[Sequence[str]], check: str, shares: Sequence[str] = ("torch",)):
        self.name, self.installs, self.check = name, [list(i) for i in installs], check
        self.shares = tuple(shares)
        self.reason: Optional[str] = None
        self._python: Optional[str] = None

    @property
    def directory(self) -> Path:
        key = hashlib.sha256(f"{sys.prefix}|{torch.__version__}|{self.installs}|{self.shares}".encode()).hexdigest()[:10]
        root = Path(os.environ.get("LRPFX_SIDE_ENV_DIR", Path.home() / ".cache" / "lrpfx"))
        return root / f"{self.name}-{key}"

    def _interpreter(self) -> Path:
        return self.directory / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def _link_running_packages(self) -> None:
        """Make the shared distributions of the running interpreter visible behind the environment's own."""
        py = self._interpreter()
        own = _run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], 60).strip()
        shared = self.directory / "running"
        link_distributions(required_closure(self.shares), shared)
        (Path(own) / "_lrpfx_running_env.pth").write_text(f"import site; site.addsitedir({str(shared)!r})\n")

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
