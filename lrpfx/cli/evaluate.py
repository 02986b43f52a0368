"""``lrpfx evaluate``: compare rules on a data set with faithfulness metrics and print the table."""
from __future__ import annotations

import json
from pathlib import Path

from ..eval import evaluate_rules
from .arguments import baseline_option, check_rule, device_option, split_rules, target_option
from .datasets import load_dataset
from .errors import CliError
from .models import load_model


def run_evaluate(args) -> int:
    rules = split_rules(args.rules)
    for rule in rules:
        check_rule(rule)
    target = target_option(args.target)
    baseline = baseline_option(args.baseline)
    if args.patch_size < 1:
        raise CliError(f"--patch-size must be >= 1, got {args.patch_size}")
    if args.steps is not None and args.steps < 1:
        raise CliError(f"--steps must be >= 1, got {args.steps}")
    args.device = device_option(args.device)
    loaded = load_model(args.model, args.weights, args.device)
    data = load_dataset(args, loaded)
    table = evaluate_rules(loaded.model, data, rules, target=target, batch_size=args.batch_size,
                           patch_size=args.patch_size, steps=args.steps, baseline=baseline,
                           randomization_samples=args.randomization_samples)
    print(f"model      {loaded.description}")
    print(f"data       {args.dataset or args.images}: {_count(data)} samples, target {args.target}, patch "
          f"{args.patch_size}, baseline {args.baseline}")
    print(table.to_markdown() if args.markdown else table)
    if args.json:
        Path(args.json).write_text(json.dumps(list(table), indent=1) + "\n")
        print(f"wrote      {args.json}")
    return 0


def _count(data) -> str:
    try:
        return str(len(data.dataset if hasattr(data, "dataset") and hasattr(data, "batch_size") else data))
    except TypeError:
        return "?"
