"""Train a small CNN on scikit-learn's digits, fit PatternNet patterns, and draw TorchLRP's figure.

    python examples/explain_digits.py --out digits.png        # the same as `lrpfx demo`
    python examples/explain_digits.py --dataset mnist         # torchvision's MNIST, when it can be downloaded
"""
import argparse

from lrpfx.demo import run

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="lrpfx_digits.png")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--dataset", choices=["digits", "mnist"], default="digits")
    args = parser.parse_args()
    run(out=args.out, epochs=args.epochs, dataset=args.dataset)
