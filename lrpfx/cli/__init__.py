"""The ``lrpfx`` command line: ``demo``, ``explain``, ``graph``, ``bench``, ``explain-dataset``, ``evaluate``,
``concepts``.

Every failure prints one line, ``lrpfx: error: ...``, and exits non-zero; ``--debug`` shows the traceback.

Layout: parser.py holds the options of every command; each command runs in its own module (demo, explain, graph,
bench, explain_dataset, evaluate, concepts), on models.py (--model, --weights), inputs.py (--image, --input,
--shape), datasets.py (--dataset, --images) and arguments.py (checks of the other option values).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

from .arguments import check_writable, import_attribute
from .bench import bench_passthrough, bench_script, run_bench
from .concepts import run_concepts
from .datasets import IMAGE_SUFFIXES, ImageFiles, load_dataset
from .demo import run_demo
from .errors import CliError, one_line
from .evaluate import run_evaluate
from .explain import run_explain
from .explain_dataset import run_explain_dataset
from .graph import run_graph
from .inputs import IMAGENET_MEAN, IMAGENET_STD, PreparedInput, load_input, prepare_image
from .models import LoadedModel, load_model
from .parser import build_parser

__all__ = ["main", "build_parser", "CliError", "LoadedModel", "load_model", "PreparedInput", "prepare_image",
           "load_input", "IMAGENET_MEAN", "IMAGENET_STD", "IMAGE_SUFFIXES", "ImageFiles", "load_dataset",
           "check_writable", "import_attribute", "bench_script", "run_demo", "run_explain", "run_graph", "run_bench",
           "run_explain_dataset", "run_evaluate", "run_concepts"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    bench_args = bench_passthrough(argv)
    if bench_args is not None:
        debug, rest = bench_args
        args = argparse.Namespace(command="bench", debug=debug, args=rest, run=run_bench)
    else:
        args = parser.parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("lrpfx: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into head & co.
        sys.stdout = open(os.devnull, "w")
        return 1
    except Exception as exc:  # one line per failure; --debug shows the traceback
        if getattr(args, "debug", False):
            raise
        print(f"lrpfx: error: {one_line(exc)}", file=sys.stderr)
        return 1
