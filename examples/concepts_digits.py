"""Concept Relevance Propagation on scikit-learn's bundled digits (no download): train the demo CNN, mine the
concepts of its second convolution over the test split, draw the concept atlas and one concept graph.

    python examples/concepts_digits.py [--out-dir concepts_digits]

The same as ``lrpfx concepts``; see lrpfx/cli/concepts.py for the steps.
"""
import argparse

from lrpfx.cli.concepts import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="concepts_digits")
    parser.add_argument("--rule", default="epsilon-plus-flat")
    args = parser.parse_args()
    run(args.out_dir, rule=args.rule, verbose=True)
