"""``lrpfx demo``: train a small CNN on the digits and draw its relevance maps (lrpfx.demo does the work)."""
from __future__ import annotations

from .. import demo as digits_demo
from .arguments import check_writable


def run_demo(args) -> int:
    check_writable(args.out)
    digits_demo.run(out=args.out, epochs=args.epochs, dataset=args.dataset)
    return 0
