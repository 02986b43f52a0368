"""The ``lrpfx`` command line."""
from __future__ import annotations

import argparse
import sys

from .errors import LrpfxError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="lrpfx", description="Layer-wise Relevance Propagation for PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train a small CNN on scikit-learn's digits and draw relevance maps",
                          epilog="example: lrpfx demo --out digits.png")
    demo.add_argument("--out", default="lrpfx_digits.png", help="PNG file to write (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs (default: %(default)s)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from . import demo as demo_module

            demo_module.run(out=args.out, epochs=args.epochs)
        return 0
    except (LrpfxError, ImportError, OSError) as exc:
        if args.debug:
            raise
        print(f"lrpfx: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
