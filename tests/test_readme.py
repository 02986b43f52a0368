"""The Python snippets of the README and of every page under docs/ run as written.

The ```python blocks of one file run in order in one namespace, so a page's snippets may build on each other
but never on another page's. A page added to docs/ is picked up without changing this file.
"""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def python_blocks(path: Path):
    return re.findall(r"^```python\n(.*?)^```", path.read_text(), flags=re.S | re.M)


def test_readme_has_snippets():
    assert len(python_blocks(ROOT / "README.md")) >= 3


def test_pages_are_found():
    names = {page.name for page in PAGES}
    assert {"README.md", "getting-started.md", "rules.md", "extending.md"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(ROOT)) for page in PAGES])
def test_snippets_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a snippet that writes a file relative to the working directory writes it here
    namespace = {"__name__": f"snippets_{page.stem}"}
    for number, block in enumerate(python_blocks(page), 1):
        exec(compile(block, f"{page.relative_to(ROOT)} (python block {number})", "exec"), namespace)
