"""``lrpfx bench``: run bench/report.py of a source checkout with every argument passed through."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from .errors import CliError


def bench_passthrough(argv: List[str]) -> Optional[Tuple[bool, List[str]]]:
    """``lrpfx [--debug] bench ARGS...``: every ARG goes to report.py (``-h``/``--help`` alone shows ours;
    a leading ``--`` is dropped, so ``lrpfx bench -- --help`` shows report.py's)."""
    debug = False
    i = 0
    while i < len(argv) and argv[i] == "--debug":
        debug, i = True, i + 1
    if i >= len(argv) or argv[i] != "bench":
        return None
    rest = argv[i + 1:]
    if rest in (["-h"], ["--help"]):
        return None
    if rest and rest[0] == "--":
        rest = rest[1:]
    return debug, rest


def bench_script() -> Optional[Path]:
    """bench/report.py of a source checkout: in the current directory, or next to the lrpfx package."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[2]):  # lrpfx/cli/bench.py -> the checkout
        candidate = root / "bench" / "report.py"
        if candidate.is_file():
            return candidate
    return None


def run_bench(args) -> int:
    script = bench_script()
    if script is None:
        raise CliError("bench/report.py not found: the benchmark suite ships with the lrpfx source checkout, not "
                       "the installed package; run 'lrpfx bench' from the checkout's root")
    return subprocess.call(bench_command(script, args.args), env=bench_environment(script))


def bench_command(script: Path, args: List[str]) -> List[str]:
    """report.py runs as the module ``bench.report`` (it imports ``bench.common`` and ``tests.helpers``)."""
    return [sys.executable, "-m", "bench.report", *args]


def bench_environment(script: Path) -> dict:
    """The checkout root on ``PYTHONPATH`` (not the working folder: a relative ``--out`` stays the user's)."""
    root = str(script.parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
