"""The README's Python snippets run as written (in order, in one namespace)."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    text = README.read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_has_snippets():
    assert len(python_blocks()) >= 4


@pytest.mark.slow
def test_readme_snippets_run():
    namespace = {}
    for block in python_blocks():
        if "lrpfx_rules_affine" in block:  # an excerpt of generated code, not a runnable snippet
            continue
        exec(compile(block, str(README), "exec"), namespace)
