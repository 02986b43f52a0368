"""``lrpfx concepts``: concept mining, atlas and concept graph for the digits CNN (scikit-learn's bundled digits).

Trains the demo's small CNN for a few seconds, mines the concepts of its second convolution over the test split
(relevance maximization for each sample's label), renders the atlas of the most relevant concepts and the
concept graph of one test digit from a unit of the hidden linear layer down through both convolutions.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import torch

from ..api import Explainer
from ..concepts import atlas_rows, concept_graph, concept_relevance, mine_concepts, render_atlas
from ..demo import accuracy, digits_cnn, load_digits_tensors, train

DESCRIPTION = __doc__.split("\n\n")[1]


def run_concepts(args) -> int:
    run(args.out_dir, args.rule, args.epochs, args.layer, args.concepts, args.top_k, args.sample, args.seed,
        verbose=True)
    return 0


def run(out_dir="lrpfx_concepts", rule="epsilon-plus-flat", epochs: int = 15, layer: str = "2",
        concepts: int = 6, top_k: int = 6, sample: int = 0, seed: int = 0, verbose: bool = False) -> Dict:
    """Train, mine, draw: returns a summary (accuracy, chosen concepts, file paths)."""
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
    explainer = Explainer(model, rule)
    rows = atlas_rows(explainer, lambda i: (x_test[i:i + 1], int(y_test[i])), layer, chosen, stats.top_relevance,
                      k=top_k)
    labels = [f"conv {layer} #{c}: " + " ".join(str(int(y_test[r.index])) for r in row)
              for c, row in zip(chosen, rows)]
    render_atlas(rows, labels, out / "atlas.png", title=f"digits CNN, layer {layer}, {rule}: top-{top_k} samples "
                                                        "by relevance (crop | conditional heatmap)")
    x = x_test[sample:sample + 1]
    target = int(y_test[sample])
    units = concept_relevance(explainer, x, ["6"], target=target).relevance["6"][0]
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
