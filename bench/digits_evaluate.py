"""The faithfulness table of the digits demo model across rules (bench/RESULTS_dataset.md).

Trains the demo's small CNN on scikit-learn's 8x8 digits (lrpfx/demo.py: same data split, same training) with
initial weights from each of ``--seeds``, then compares rules on the 360 test digits with
lrpfx.eval.evaluate_rules: pixel flipping (patch 1, 32 steps, deleted pixels set to 0 = the background) as
MoRF/LeRF areas of the target logit, input relevance over the initial relevance, and the randomisation check on
64 test digits. Prints one table per seed and the mean ± standard deviation over seeds.
Run: ``python -m bench.digits_evaluate`` (a few minutes on 2 cores).

The same table for one model from the command line, with a factory file whose ``trained()`` returns the model and
``test_set()`` the data: ``lrpfx evaluate --model digits.py:trained --dataset digits.py:test_set``.
"""
import argparse
import statistics
import time

import torch

from lrpfx import demo
from lrpfx.eval import EVALUATION_COLUMNS, evaluate_rules

RULES = ("epsilon", "epsilon-plus-flat", "epsilon-plus", "alpha2beta1", "epsilon-gamma-box", "gradient",
         "gradient*input")


def trained(seed: int = 0):
    (x_train, y_train), _ = demo.load_digits_tensors()
    torch.manual_seed(seed)  # demo.train seeds the batch order, not the initial weights
    return demo.train(demo.digits_cnn(x_train.shape[-1]), x_train, y_train, epochs=15)


def test_set():
    _, (x_test, y_test) = demo.load_digits_tensors()
    return x_test, y_test


def summary(tables, rules) -> str:
    keys = [(k, h) for k, h in EVALUATION_COLUMNS if k not in ("rule", "seconds")]
    lines = ["| rule | " + " | ".join(h for _, h in keys) + " |", "|" + "---|" * (len(keys) + 1)]
    for i, rule in enumerate(rules):
        cells = []
        for key, _ in keys:
            values = [t[i][key] for t in tables if t[i][key] is not None]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            cells.append(f"{statistics.mean(values):+.2f} ± {spread:.2f}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rules", default=",".join(RULES))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--randomization-samples", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    rules = args.rules.split(",")
    x_test, y_test = test_set()
    tables = []
    for seed in (int(s) for s in args.seeds.split(",")):
        start = time.time()
        model = trained(seed)
        accuracy = demo.accuracy(model, x_test, y_test)
        print(f"\nseed {seed}: test accuracy {accuracy:.1%}, trained in {time.time() - start:.1f}s; "
              f"{len(x_test)} test digits, target = the predicted class, pixels deleted to 0 (patch 1, 32 steps), "
              f"randomisation on {args.randomization_samples} digits")
        table = evaluate_rules(model, (x_test, y_test), rules, batch_size=120, patch_size=1, steps=32,
                               baseline=0.0, randomization_samples=args.randomization_samples, seed=seed)
        print(table.to_markdown())
        tables.append(table)
    print(f"\nmean ± standard deviation over seeds {args.seeds}:")
    print(summary(tables, rules))
    return tables


if __name__ == "__main__":
    main()
