"""The ``lrpfx`` argument parser: every command's options, help texts and examples; each command's ``run``
comes from its own module."""
from __future__ import annotations

import argparse

from ..program.save import SUFFIXES
from .bench import run_bench
from .concepts import DESCRIPTION as CONCEPTS_DESCRIPTION, run_concepts
from .demo import run_demo
from .evaluate import run_evaluate
from .explain import run_explain
from .explain_dataset import run_explain_dataset
from .graph import run_graph

EXPLAIN_EXAMPLES = """examples:
  lrpfx explain --model torchvision:resnet50 --weights DEFAULT --image cat.jpg --rule epsilon-gamma-box --out heat.png
  lrpfx explain --model torchvision:vgg16 --weights vgg16.pt --image cat.jpg --target 281 --cmap coldnhot
  lrpfx explain --model torchvision:resnet18 --image cat.jpg --size 64     # random weights, 64x64 input
  lrpfx explain --model mypkg.models:build_net --input batch.pt --rule epsilon --out maps.png
  lrpfx explain --model ./net.py:Net --weights net.pt --input x.pt --save-relevance r.pt

--model is 'torchvision:NAME' or 'module.path:factory' (or 'file.py:factory'); the factory is called without
arguments and returns an nn.Module. --weights is DEFAULT or a weights name of a torchvision model (downloaded
by torchvision, needs network), or a file with a state dict. An --input file holds a tensor [B, ...] (or a
dict with one tensor); an --image is resized, center-cropped and normalised with the weights' transforms, or
ImageNet's standard ones (resize to size*256/224, crop --size, ImageNet mean/std).
"""

GRAPH_EXAMPLES = """examples:
  lrpfx graph --model torchvision:resnet18 --rule epsilon-gamma-box --table
  lrpfx graph --model torchvision:resnet18 --rule epsilon-gamma-box --out prog.dot --out prog.py
  lrpfx graph --model torchvision:vgg16 --shape 1,3,224,224 --out prog.svg      # needs Graphviz's dot
  lrpfx graph --model mypkg.models:build_net --input x.pt --out prog.pt2 --target-input

.dot/.gv: Graphviz text (needs nothing); .svg/.png/.pdf: rendered with Graphviz's dot; .py: the program as a
readable module; .pt2: torch.export archive, run with torch.export.load('prog.pt2').module()(x) -- no lrpfx
needed there (with --target-input: module()(x, target)).
"""

BENCH_EXAMPLES = """examples:
  lrpfx bench                                        # python -m bench.report: CPU, VGG16 and ResNet50
  lrpfx bench --models resnet18 --batches 1 --rounds 2 --no-peers
  lrpfx bench -- --help                              # report.py's own options

Runs bench/report.py of an lrpfx source checkout (from the current directory or next to the installed
package) with every argument passed through.
"""

DEMO_EXAMPLES = "example: lrpfx demo --out digits.png"

EXPLAIN_DATASET_EXAMPLES = """examples:
  lrpfx explain-dataset --model mypkg.models:build_net --weights net.pt --dataset mypkg.data:test_set --out expl/
  lrpfx explain-dataset --model torchvision:resnet50 --weights DEFAULT --images val/ --batch-size 8 --out expl/
  lrpfx explain-dataset --model ./net.py:Net --dataset ./net.py:data --target label --store float32 --out expl/
  torchrun --nproc_per_node=2 -m lrpfx.cli explain-dataset --model ./net.py:Net --dataset ./net.py:data --out expl/

--dataset is 'module.path:factory' or 'file.py:factory': called without arguments, it returns a map-style
Dataset (items: an input, or (input, label)), a DataLoader, a tensor [N, ...] or a tuple of tensors (x, y).
--images is a folder of image files, preprocessed as in 'explain'; when every image sits in a subfolder, the
subfolder (sorted) is the label. Shards of --shard-size samples go to --out with a manifest.json; running the
same command again resumes (verified shards are kept). Under torchrun each process explains every
WORLD_SIZE-th shard (gloo on CPU, nccl on GPUs; --device auto takes cuda:LOCAL_RANK) and rank 0 writes the
manifest. Read the result with lrpfx.load_explanations(out).
"""

CONCEPTS_EXAMPLES = """examples:
  lrpfx concepts --out-dir concepts_digits
  lrpfx concepts --out-dir out --rule epsilon-gamma-box --concepts 8 --top-k 6 --sample 3
"""

EVALUATE_EXAMPLES = """examples:
  lrpfx evaluate --model ./digits.py:trained --dataset ./digits.py:test_set
  lrpfx evaluate --model mypkg.models:build_net --weights net.pt --dataset mypkg.data:test_set --limit 512 \\
                 --rules "epsilon,epsilon-plus-flat,alphabeta(2,1),gradient" --patch-size 4 --markdown
  lrpfx evaluate --model torchvision:resnet18 --weights DEFAULT --images val/ --limit 64 --baseline mean

Per rule: region perturbation (MoRF and LeRF areas under the target-logit curve as patches are deleted in
order of relevance; LeRF-MoRF is larger for more faithful explanations), the mean of input relevance over the
initial relevance (1 = conserved), and the Spearman rank correlation between the heatmaps of the trained model
and of the model with its top layer / all layers randomised (lower = the explanation depends on the weights).
"""


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one line, ``lrpfx: error: ...``."""

    def error(self, message):
        self.exit(2, f"lrpfx: error: {message} (see '{self.prog} --help')\n")


_FORMATTER = argparse.RawDescriptionHelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lrpfx", description="Layer-wise Relevance Propagation for PyTorch.",
                     formatter_class=_FORMATTER,
                     epilog="examples:\n  lrpfx demo\n"
                            "  lrpfx explain --model torchvision:resnet50 --weights DEFAULT --image cat.jpg "
                            "--out heat.png\n"
                            "  lrpfx graph --model torchvision:resnet18 --table --out prog.dot\n"
                            "  lrpfx bench --models resnet18\n\n'lrpfx COMMAND --help' shows each command's options.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")
    for add_command in (_demo_command, _explain_command, _graph_command, _bench_command, _explain_dataset_command,
                        _evaluate_command, _concepts_command):
        add_command(sub, debug)
    return parser


def _demo_command(sub, debug: argparse.ArgumentParser) -> None:
    demo = sub.add_parser("demo", help="train a small CNN on scikit-learn's digits and draw relevance maps",
                          epilog=DEMO_EXAMPLES, parents=[debug])
    demo.add_argument("--out", default="lrpfx_digits.png", help="PNG file to write (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs (default: %(default)s)")
    demo.add_argument("--dataset", choices=["digits", "mnist"], default="digits",
                      help="scikit-learn's bundled digits (offline) or torchvision's MNIST (downloads)")
    demo.set_defaults(run=run_demo)


def _explain_command(sub, debug: argparse.ArgumentParser) -> None:
    explain = sub.add_parser("explain", help="explain one prediction and write a heatmap PNG",
                             description="Explain a model's prediction for an image or a saved input tensor; "
                                         "prints the top classes and writes the relevance as a PNG.",
                             epilog=EXPLAIN_EXAMPLES, formatter_class=_FORMATTER, parents=[debug])
    _model_options(explain)
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="image file to explain (JPEG, PNG, ...; needs Pillow)")
    source.add_argument("--input", help="torch.save'd input tensor [B, ...] to explain")
    explain.add_argument("--rule", default="auto",
                         help="preset or rule string, e.g. epsilon-gamma-box, epsilon(0.1) (default: %(default)s)")
    explain.add_argument("--target", type=int, default=None, help="class index to explain (default: the argmax)")
    explain.add_argument("--out", default="lrpfx_heatmap.png", help="PNG file to write (default: %(default)s)")
    explain.add_argument("--size", type=int, default=None,
                         help="crop size for --image (default: the weights' transforms, else 224)")
    explain.add_argument("--style", choices=("overlay", "heatmap", "panel"), default=None,
                         help="overlay on the image, the heatmap alone, or image|heatmap|overlay side by side "
                              "(default: overlay for --image, heatmap for --input)")
    explain.add_argument("--cmap", choices=("bwr", "seismic", "coldnhot"), default="bwr",
                         help="colour map (default: %(default)s)")
    explain.add_argument("--alpha", type=float, default=0.7, help="heatmap opacity in the overlay (default: "
                                                                  "%(default)s)")
    explain.add_argument("--reduce", choices=("sum", "maxabs"), default="sum",
                         help="how channels are combined (default: %(default)s)")
    explain.add_argument("--clip", type=float, default=99.5,
                         help="percentile of |R| mapped to full colour; 100 = the maximum (default: %(default)s)")
    explain.add_argument("--topk", type=int, default=5, help="classes to print (default: %(default)s)")
    explain.add_argument("--save-relevance", metavar="PATH", help="also torch.save the relevance tensor")
    explain.set_defaults(run=run_explain)


def _graph_command(sub, debug: argparse.ArgumentParser) -> None:
    graph = sub.add_parser("graph", help="build the relevance program; print its rule table, save it",
                           description="Build the relevance program of a model and a rule; print its rule table "
                                       "and write it as DOT, SVG/PNG, Python or a torch.export archive.",
                           epilog=GRAPH_EXAMPLES, formatter_class=_FORMATTER, parents=[debug])
    _model_options(graph)
    source = graph.add_mutually_exclusive_group()
    source.add_argument("--shape", default=None,
                        help="input shape to build the program for, e.g. 1,3,224,224 (the default)")
    source.add_argument("--image", help="an image, preprocessed as in 'explain', as the example input")
    source.add_argument("--input", help="torch.save'd example input tensor")
    graph.add_argument("--size", type=int, default=None, help="crop size for --image")
    graph.add_argument("--rule", default="auto", help="preset or rule string (default: %(default)s)")
    graph.add_argument("--out", action="append", default=[], metavar="FILE",
                       help=f"write the program; the suffix picks the format ({', '.join(SUFFIXES)}); "
                            "may be repeated")
    graph.add_argument("--table", action="store_true", help="print the rule table")
    graph.add_argument("--code", action="store_true", help="print the program's code")
    graph.add_argument("--params", action="store_true", help="draw parameter reads in .dot/.svg/.png")
    graph.add_argument("--target-input", action="store_true",
                       help=".pt2: take the target class tensor [B] as a second input instead of the argmax")
    graph.set_defaults(run=run_graph)


def _bench_command(sub, debug: argparse.ArgumentParser) -> None:
    bench = sub.add_parser("bench", help="run the benchmark report (bench/report.py), arguments passed through",
                           description="Run bench/report.py with every argument passed through.",
                           epilog=BENCH_EXAMPLES, formatter_class=_FORMATTER, parents=[debug])
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for bench/report.py")
    bench.set_defaults(run=run_bench)


def _explain_dataset_command(sub, debug: argparse.ArgumentParser) -> None:
    explain_ds = sub.add_parser("explain-dataset", help="explain a whole data set into resumable relevance shards",
                                description="Explain every sample of a data set and write safetensors shards "
                                            "plus a manifest.json; resumable, and distributed under torchrun.",
                                epilog=EXPLAIN_DATASET_EXAMPLES, formatter_class=_FORMATTER, parents=[debug])
    _model_options(explain_ds)
    _dataset_options(explain_ds)
    explain_ds.add_argument("--out", required=True, metavar="DIR", help="output folder (created when missing)")
    explain_ds.add_argument("--rule", default="auto", help="preset or rule string (default: %(default)s)")
    explain_ds.add_argument("--batch-size", type=int, default=32, help="samples per explanation call "
                                                                      "(default: %(default)s)")
    sizes = explain_ds.add_mutually_exclusive_group()
    sizes.add_argument("--shard-size", type=int, default=None,
                       help="samples per shard (default: about 512, in whole batches)")
    sizes.add_argument("--num-shards", type=int, default=None, help="split the data set into this many shards")
    explain_ds.add_argument("--store", choices=("float16", "bfloat16", "float32", "float64"), default="float16",
                            help="dtype of the stored relevance (default: %(default)s)")
    explain_ds.add_argument("--compile", action="store_true", help="run the relevance program through torch.compile")
    explain_ds.add_argument("--num-workers", type=int, default=0, help="data loader worker processes (default: 0)")
    explain_ds.add_argument("--no-resume", action="store_true", help="redo every shard even if it verifies")
    explain_ds.add_argument("--overwrite", action="store_true",
                            help="replace an out folder that holds another run (other model, rule, ...)")
    explain_ds.add_argument("--no-progress", action="store_true",
                            help="no progress bar (it is shown on rank 0 when stderr is a terminal)")
    explain_ds.set_defaults(run=run_explain_dataset)


def _evaluate_command(sub, debug: argparse.ArgumentParser) -> None:
    evaluate = sub.add_parser("evaluate", help="compare rules on a data set: perturbation AUCs, conservation, "
                                               "randomisation",
                              description="Compare rules on a data set and print a table of faithfulness metrics.",
                              epilog=EVALUATE_EXAMPLES, formatter_class=_FORMATTER, parents=[debug])
    _model_options(evaluate)
    _dataset_options(evaluate)
    evaluate.add_argument("--rules", default="epsilon,epsilon-plus-flat,alpha2beta1,epsilon-gamma-box,gradient",
                          help="comma-separated presets or rule strings (default: %(default)s)")
    evaluate.add_argument("--batch-size", type=int, default=64, help="samples per batch (default: %(default)s)")
    evaluate.add_argument("--patch-size", type=int, default=1, help="side of the deleted patches in pixels "
                                                                   "(default: %(default)s)")
    evaluate.add_argument("--steps", type=int, default=None,
                          help="deletion steps (default: one per patch, at most 32)")
    evaluate.add_argument("--baseline", default="0",
                          help="value of deleted pixels: a number, zero, mean or uniform (default: %(default)s)")
    evaluate.add_argument("--randomization-samples", type=int, default=32,
                          help="samples for the randomisation check; 0 skips it (default: %(default)s)")
    evaluate.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    evaluate.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    evaluate.set_defaults(run=run_evaluate)


def _concepts_command(sub, debug: argparse.ArgumentParser) -> None:
    concepts = sub.add_parser("concepts", help="mine concepts of the digits CNN; write the concept atlas and a "
                                               "concept graph", description=CONCEPTS_DESCRIPTION,
                              epilog=CONCEPTS_EXAMPLES, formatter_class=_FORMATTER, parents=[debug])
    concepts.add_argument("--out-dir", default="lrpfx_concepts", help="folder for the shards, atlas.png and graph.* "
                                                                      "(default: %(default)s)")
    concepts.add_argument("--rule", default="epsilon-plus-flat", help="preset or rule string (default: %(default)s)")
    concepts.add_argument("--epochs", type=int, default=15, help="training epochs (default: %(default)s)")
    concepts.add_argument("--layer", default="2", help="layer to mine (default: %(default)s, the second conv)")
    concepts.add_argument("--concepts", type=int, default=6, help="concepts in the atlas (default: %(default)s)")
    concepts.add_argument("--top-k", type=int, default=6, help="reference samples per concept (default: "
                                                               "%(default)s)")
    concepts.add_argument("--sample", type=int, default=0, help="test sample of the concept graph (default: "
                                                                "%(default)s)")
    concepts.add_argument("--seed", type=int, default=0, help="training seed (default: %(default)s)")
    concepts.set_defaults(run=run_concepts)


def _dataset_options(p: argparse.ArgumentParser) -> None:
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", metavar="SPEC", help="module.path:factory or file.py:factory returning the "
                                                          "data set")
    source.add_argument("--images", metavar="DIR", help="a folder of images (labels from subfolders)")
    p.add_argument("--size", type=int, default=None, help="crop size for --images (default: the weights' "
                                                          "transforms, else 224)")
    p.add_argument("--target", default="argmax",
                   help="argmax, label (the data set's label) or a class index (default: %(default)s)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N samples")
    p.set_defaults(device="auto")


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="SPEC",
                   help="torchvision:NAME, module.path:factory or file.py:factory")
    p.add_argument("--weights", default=None,
                   help="torchvision weights name (DEFAULT, IMAGENET1K_V2, ...) or a state-dict file "
                        "(default: random weights)")
    p.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
