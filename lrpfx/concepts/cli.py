"""``lrpfx concepts``: concept mining, atlas and concept graph for the digits CNN (scikit-learn's bundled digits).

Trains the demo's small CNN for a few seconds, mines the concepts of its second convolution over the test split
(relevance maximization for each sample's label), renders the atlas of the most relevant concepts and the
concept graph of one test digit from a unit of the hidden linear layer down through both convolutions.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Dict, Optional

import torch

EXAMPLES = """examples:
  lrpfx concepts --out-dir concepts_digits
  lrpfx concepts --out-dir out --rule epsilon-gamma-box --concepts 8 --top-k 6 --sample 3
"""


def add_concepts_command(sub, formatter, parents) -> None:
    """Register the ``concepts`` subcommand on ``sub`` (the parser's subparsers)."""
    p = sub.add_parser("concepts", help="mine concepts of the digits CNN; write the concept atlas and a concept "
                                        "graph", description=__doc__.split("\n\n")[1], epilog=EXAMPLES,
                       formatter_class=formatter, parents=parents)
    p.add_argument("--out-dir", default="lrpfx_concepts", help="folder for the shards, atlas.png and graph.* "
                                                               "(default: %(default)s)")
    p.add_argument("--rule", default="epsilon-plus-flat", help="preset or rule string (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs (default: %(default)s)")
    p.add_argument("--layer", default="2", help="layer to mine (default: %(default)s, the second conv)")
    p.add_argument("--concepts", type=int, default=6, help="concepts in the atlas (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=6, help="reference samples per concept (default: %(default)s)")
    p.add_argument("--sample", type=int, default=0, help="test sample of the concept graph (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    p.set_defaults(run=lambda args: run(args.out_dir, args.rule, args.epochs, args.layer, args.concepts,
                                        args.top_k, args.sample, args.seed, verbose=True) and 0)


def run(out_dir="lrpfx_concepts", rule="epsilon-plus-flat", epochs: int = 15, layer: str = "2",
        concepts: int = 6, top_k: int = 6, sample: int = 0, seed: int = 0, verbose: bool = False) -> Dict:
    """Train, mine, draw: returns a summary (accuracy, chosen concepts, file paths)."""
    import lrpfx
    from lrpfx.demo import accuracy, digits_cnn, load_digits_tensors, train
    from lrpfx.concepts import atlas_rows, concept_graph, mine_concepts, render_atlas

    torch.manual_seed(seed)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (x_train, y_train), (x_test, y_test) = load_digits_tensors(seed)
    model = train(digits_cnn(), x_train, y_train, epochs=epochs, seed=seed)
    acc = accuracy(model, x_test, y_test)
    data = torch.utils.data.TensorDataset(x_test, y_test)
    mining = mine_concepts(model, data, rule, [layer, "6"], out / "mining", top_k=top_k, batch_size=64,
                           target="label", progress=False, overwrite=True)
    stats = mining[layer]
    # the concepts with the largest mean relevance over the data set
    mean = stats.class_relevance.mul(stats.class_counts.unsqueeze(1)).sum(0) / stats.class_counts.sum()
    chosen = mean.topk(min(concepts, mean.numel())).indices.tolist()
    explainer = lrpfx.Explainer(model, rule)
    rows = atlas_rows(explainer, lambda i: (x_test[i:i + 1], int(y_test[i])), layer, chosen, stats.top_relevance,
                      k=top_k)
    labels = [f"conv {layer} #{c}: " + " ".join(str(int(y_test[r.index])) for r in row)
              for c, row in zip(chosen, rows)]
    render_atlas(rows, labels, out / "atlas.png", title=f"digits CNN, layer {layer}, {rule}: top-{top_k} samples "
                                                        "by relevance (crop | conditional heatmap)")
    x = x_test[sample:sample + 1]
    target = int(y_test[sample])
    units = lrpfx.concepts.concept_relevance(explainer, x, ["6"], target=target).relevance["6"][0]
    unit = int(units.abs().argmax())
    graph = concept_graph(explainer, x, "6", unit, target=target, width=(3, 2))
    paths = {s: str(graph.save(out / f"graph{s}")) for s in (".dot", ".csv", ".svg")}
    summary = {"accuracy": acc, "layer": layer, "concepts": chosen, "atlas": str(out / "atlas.png"),
               "graph_root": ["6", unit], "sample": sample, "label": target, "graph": paths}
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if verbose:
        print(f"digits CNN test accuracy {acc:.3f}; mined layer {layer} over {len(data)} test digits")
        print(f"atlas of concepts {chosen}: {out / 'atlas.png'}")
        print(f"concept graph of test digit {sample} (label {target}) from unit {unit} of layer 6:")
        for r in graph.table():
            print(f"  {r['parent_layer']}#{r['parent_concept']} -> {r['layer']}#{r['concept']}: {r['relevance']:.4g}")
        print("written: " + ", ".join(paths.values()))
    return summary
