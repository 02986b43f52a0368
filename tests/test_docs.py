"""The documentation site builds with warnings as errors, and what the docs, docstrings and tests refer to exists.

A reference to a file of the repository (``docs/rules.md``, ``lrpfx/graph/registry.py``), to a module or object
(``lrpfx.graph.classification``, ``:class:`~lrpfx.kinds.NodeInfo```) must resolve in this checkout; nothing may
point outside the repository or to numbered sections of a document users do not have.
"""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_FOLDERS = ("lrpfx", "docs", "tests", "bench", "examples")
PATH = re.compile(r"(?<![\w./~-])((?:%s)/[\w./*-]*[\w*])" % "|".join(TOP_FOLDERS))
DOTTED = re.compile(r"(?<![\w./-])(lrpfx(?:\.[A-Za-z_]\w*)+)")
OUTSIDE = ("../" + "shared", "/work/" + "shared")  # spelled in pieces so this file does not match itself
SECTION = "\u00a7"


def sources():
    """README, the docs pages, and every Python file of the package and the tests."""
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "mkdocs.yml"]
    files += sorted((ROOT / "lrpfx").rglob("*.py")) + sorted((ROOT / "tests").rglob("*.py"))
    return [f for f in files if f.exists()]


def _lines(path):
    return enumerate(path.read_text(encoding="utf-8").splitlines(), 1)


def _resolves(dotted: str) -> bool:
    """``dotted`` names an importable module, or an attribute reached from one."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name) and name not in getattr(obj, "__dataclass_fields__", {}) \
                    and name not in getattr(obj, "__annotations__", {}):
                return False
            obj = getattr(obj, name, None)
        return True
    return False


def test_file_references_exist():
    missing = []
    for path in sources():
        if path.name == Path(__file__).name:  # its own made-up paths below
            continue
        for number, line in _lines(path):
            for ref in PATH.findall(line):
                if not any(ROOT.glob(ref)):
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {ref}")
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)


def test_dotted_names_resolve():
    missing = []
    for path in sources():
        if path.name == Path(__file__).name:
            continue
        for number, line in _lines(path):
            for ref in DOTTED.findall(line):
                if ref.endswith((".py", ".md")) or "lrpfx/" in line and f"{ref}/" in line:
                    continue
                if not _resolves(ref.rstrip(".")):
                    missing.append(f"{path.relative_to(ROOT)}:{number}: {ref}")
    assert not missing, "names that do not resolve:\n" + "\n".join(missing)


def test_nothing_points_outside_the_repository():
    found = [f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
             for path in sources() if path.name != Path(__file__).name
             for number, line in _lines(path)
             if SECTION in line or any(outside in line for outside in OUTSIDE)]
    assert not found, "section numbers or paths outside the repository:\n" + "\n".join(found)


def test_reference_check_catches_a_missing_file():
    """The checks above can fail: a made-up path and a made-up module are reported."""
    assert PATH.findall("see `docs/no-such-page.md`") == ["docs/no-such-page.md"]
    assert not (ROOT / "docs/no-such-page.md").exists()
    assert not _resolves("lrpfx.graph.no_such_module.NodeInfo")
    assert _resolves("lrpfx.kinds.NodeInfo")


def test_site_builds_strict(tmp_path):
    """``mkdocs build --strict`` turns every warning (a broken link or anchor, a docstring mkdocstrings cannot
    render, a page missing from the nav) into an error."""
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"),
                           "--config-file", str(ROOT / "mkdocs.yml")], cwd=ROOT, capture_output=True, text=True,
                          env={"NO_MKDOCS_2_WARNING": "1", "PATH": "", "HOME": str(tmp_path)}, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING" not in done.stderr, done.stderr
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("lrpfx.Explainer", "lrpfx.explain", "lrpfx.Composite", "lrpfx.rules.Epsilon", "lrpfx.explain_dataset"):
        assert f'id="{name}"' in api, f"{name} missing from the API reference"
