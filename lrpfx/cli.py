"""The ``lrpfx`` command line: ``demo``, ``explain``, ``graph``, ``bench``, ``explain-dataset``, ``evaluate``.

Every failure prints one line, ``lrpfx: error: ...``, and exits non-zero; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, List, NamedTuple, Optional, Sequence, Tuple

from .errors import LrpfxError
from .program.save import SUFFIXES
from .progress import Progress

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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
  lrpfx bench                                        # python bench/report.py: CPU, VGG16 and ResNet50
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


class CliError(LrpfxError):
    """A command-line usage error: bad --model spec, missing file, wrong suffix."""


class _Parser(argparse.ArgumentParser):
    """argparse with errors as one line, ``lrpfx: error: ...``."""

    def error(self, message):
        self.exit(2, f"lrpfx: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="lrpfx", description="Layer-wise Relevance Propagation for PyTorch.",
                     formatter_class=formatter,
                     epilog="examples:\n  lrpfx demo\n"
                            "  lrpfx explain --model torchvision:resnet50 --weights DEFAULT --image cat.jpg "
                            "--out heat.png\n"
                            "  lrpfx graph --model torchvision:resnet18 --table --out prog.dot\n"
                            "  lrpfx bench --models resnet18\n\n'lrpfx COMMAND --help' shows each command's options.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    debug = _Parser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks")

    demo = sub.add_parser("demo", help="train a small CNN on scikit-learn's digits and draw relevance maps",
                          epilog=DEMO_EXAMPLES, parents=[debug])
    demo.add_argument("--out", default="lrpfx_digits.png", help="PNG file to write (default: %(default)s)")
    demo.add_argument("--epochs", type=int, default=15, help="training epochs (default: %(default)s)")
    demo.add_argument("--dataset", choices=["digits", "mnist"], default="digits",
                      help="scikit-learn's bundled digits (offline) or torchvision's MNIST (downloads)")
    demo.set_defaults(run=run_demo)

    explain = sub.add_parser("explain", help="explain one prediction and write a heatmap PNG",
                             description="Explain a model's prediction for an image or a saved input tensor; "
                                         "prints the top classes and writes the relevance as a PNG.",
                             epilog=EXPLAIN_EXAMPLES, formatter_class=formatter, parents=[debug])
    _model_options(explain)
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("--image", help="image file to explain (JPEG, PNG, ...; needs Pillow)")
    source.add_argument("--input", help="torch.save'd input tensor [B, ...] to explain")
    explain.add_argument("--rule", default="epsilon-plus-flat",
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

    graph = sub.add_parser("graph", help="build the relevance program; print its rule table, save it",
                           description="Build the relevance program of a model and a rule; print its rule table "
                                       "and write it as DOT, SVG/PNG, Python or a torch.export archive.",
                           epilog=GRAPH_EXAMPLES, formatter_class=formatter, parents=[debug])
    _model_options(graph)
    source = graph.add_mutually_exclusive_group()
    source.add_argument("--shape", default=None,
                        help="input shape to build the program for, e.g. 1,3,224,224 (the default)")
    source.add_argument("--image", help="an image, preprocessed as in 'explain', as the example input")
    source.add_argument("--input", help="torch.save'd example input tensor")
    graph.add_argument("--size", type=int, default=None, help="crop size for --image")
    graph.add_argument("--rule", default="epsilon-plus-flat", help="preset or rule string (default: %(default)s)")
    graph.add_argument("--out", action="append", default=[], metavar="FILE",
                       help=f"write the program; the suffix picks the format ({', '.join(SUFFIXES)}); "
                            "may be repeated")
    graph.add_argument("--table", action="store_true", help="print the rule table")
    graph.add_argument("--code", action="store_true", help="print the program's code")
    graph.add_argument("--params", action="store_true", help="draw parameter reads in .dot/.svg/.png")
    graph.add_argument("--target-input", action="store_true",
                       help=".pt2: take the target class tensor [B] as a second input instead of the argmax")
    graph.set_defaults(run=run_graph)

    bench = sub.add_parser("bench", help="run the benchmark report (bench/report.py), arguments passed through",
                           description="Run bench/report.py with every argument passed through.",
                           epilog=BENCH_EXAMPLES, formatter_class=formatter, parents=[debug])
    bench.add_argument("args", nargs=argparse.REMAINDER, help="arguments for bench/report.py")
    bench.set_defaults(run=run_bench)

    explain_ds = sub.add_parser("explain-dataset", help="explain a whole data set into resumable relevance shards",
                                description="Explain every sample of a data set and write safetensors shards "
                                            "plus a manifest.json; resumable, and distributed under torchrun.",
                                epilog=EXPLAIN_DATASET_EXAMPLES, formatter_class=formatter, parents=[debug])
    _model_options(explain_ds)
    _dataset_options(explain_ds)
    explain_ds.add_argument("--out", required=True, metavar="DIR", help="output folder (created when missing)")
    explain_ds.add_argument("--rule", default="epsilon-plus-flat", help="preset or rule string (default: %(default)s)")
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

    evaluate = sub.add_parser("evaluate", help="compare rules on a data set: perturbation AUCs, conservation, "
                                               "randomisation",
                              description="Compare rules on a data set and print a table of faithfulness metrics.",
                              epilog=EVALUATE_EXAMPLES, formatter_class=formatter, parents=[debug])
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

    from .concepts.cli import add_concepts_command
    add_concepts_command(sub, formatter, [debug])
    return parser


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


# ---- entry point ----------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    bench_args = _bench_passthrough(argv)
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
        print(f"lrpfx: error: {_one_line(exc)}", file=sys.stderr)
        return 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, (LrpfxError, OSError, ImportError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text} (run with --debug for the traceback)"


def _bench_passthrough(argv: List[str]) -> Optional[Tuple[bool, List[str]]]:
    """``lrpfx [--debug] bench ARGS...``: every ARG goes to report.py (``-h``/``--help`` alone shows ours;
    a leading ``--`` is dropped, so ``lrpfx bench -- --help`` shows report.py's)."""
    debug = False
    i = 0
    while i < len(argv) and argv[i] == "--debug":
        debug, i = True, i + 1
    if i >= len(argv) or argv[i] != "bench":
        return None
    rest = argv[i + 1:]
    if rest in (["-h"], ["--help"]):
        return None
    if rest and rest[0] == "--":
        rest = rest[1:]
    return debug, rest


# ---- models ---------------------------------------------------------------------------------------------------
class LoadedModel(NamedTuple):
    model: Any
    description: str
    transforms: Any  # a torchvision weights preset, or None
    categories: Optional[List[str]]


def load_model(spec: str, weights: Optional[str] = None, device: str = "cpu") -> LoadedModel:
    """The model named by ``spec`` (``torchvision:NAME`` or ``module.path:factory`` / ``file.py:factory``), in
    eval mode on ``device``, with weights from ``weights`` (a torchvision weights name or a state-dict file)."""
    if ":" not in spec or spec.startswith(":") or spec.endswith(":"):
        hint = ""
        if ":" not in spec and _torchvision_has(spec):
            hint = f"; did you mean --model torchvision:{spec}?"
        raise CliError(f"--model takes 'torchvision:NAME' or 'module.path:factory', got '{spec}'{hint}")
    source, name = spec.rsplit(":", 1)
    import torch

    torch.manual_seed(0)  # random weights (no --weights) are the same on every run of the same command
    if source == "torchvision":
        loaded = _torchvision_model(name, weights)
    else:
        loaded = _factory_model(source, name, spec)
        if weights is not None:
            _load_state_dict(loaded.model, _weights_file(weights, spec))
            loaded = loaded._replace(description=f"{spec} (weights {weights})")
    model = loaded.model.to(torch.device(device)).eval()
    return loaded._replace(model=model)


def check_writable(path, option: str = "--out") -> Path:
    """Fail before the work, not after it, when ``path`` cannot be written."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise CliError(f"{option} '{path}': the folder '{folder}' does not exist; create it or choose another path")
    if not os.access(folder, os.W_OK):
        raise CliError(f"{option} '{path}': the folder '{folder}' is not writable; choose another path")
    if path.is_dir():
        raise CliError(f"{option} '{path}' is a folder; give a file name")
    return path


def _torchvision_has(name: str) -> bool:
    try:
        import torchvision

        return name in torchvision.models.list_models()
    except Exception:
        return False


def _torchvision_model(name: str, weights: Optional[str]) -> LoadedModel:
    try:
        import torchvision
    except ImportError as exc:
        raise CliError("--model torchvision:... needs torchvision: pip install torchvision") from exc
    if name not in torchvision.models.list_models():
        close = [m for m in torchvision.models.list_models() if name.lower() in m][:5]
        raise CliError(f"torchvision has no model '{name}'"
                       + (f" (close: {', '.join(close)})" if close else "; see torchvision.models.list_models()"))
    try:
        enum = torchvision.models.get_model_weights(name)
    except Exception:
        enum = None
    default = getattr(enum, "DEFAULT", None) if enum is not None else None
    categories = (default.meta.get("categories") if default is not None else None)
    if weights is None:
        return LoadedModel(torchvision.models.get_model(name, weights=None), f"torchvision:{name} (random weights)",
                           None, categories)
    if _looks_like_file(weights):
        model = torchvision.models.get_model(name, weights=None)
        _load_state_dict(model, _weights_file(weights, f"torchvision:{name}"))
        return LoadedModel(model, f"torchvision:{name} (weights {weights})", None, categories)
    if enum is None:
        raise CliError(f"torchvision:{name} has no named weights; pass a state-dict file with --weights")
    member = weights.split(".")[-1]
    if member.upper() == "DEFAULT":
        chosen = enum.DEFAULT
    elif member in enum.__members__:
        chosen = enum[member]
    else:
        raise CliError(f"torchvision:{name} has no weights '{weights}': use DEFAULT, "
                       f"{', '.join(enum.__members__)}, or a state-dict file")
    try:
        model = torchvision.models.get_model(name, weights=chosen)
    except Exception as exc:
        raise CliError(f"could not load the weights {chosen} ({' '.join(str(exc).split())}); torchvision downloads "
                       f"them on first use, which needs network: download once elsewhere and pass the file with "
                       f"--weights path.pth") from exc
    return LoadedModel(model, f"torchvision:{name} (weights {chosen})", chosen.transforms,
                       chosen.meta.get("categories"))


def _looks_like_file(weights: str) -> bool:
    return (os.sep in weights or "/" in weights or Path(weights).suffix.lower() in (".pt", ".pth", ".bin", ".ckpt")
            or Path(weights).exists())


def _weights_file(weights: str, spec: str) -> Path:
    path = Path(weights)
    if not path.is_file():
        raise CliError(f"weights file not found: {weights}" + ("" if _looks_like_file(weights) else
                       f" (named weights such as DEFAULT exist only for torchvision models, not {spec})"))
    return path


def _load_state_dict(model, path: Path) -> None:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(f"cannot read the weights file {path} as a state dict: {' '.join(str(exc).split())[:300]}")
    if isinstance(state, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise CliError(f"{path} does not hold a state dict (got {type(state).__name__})")
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        lines = [" ".join(line.split()) for line in str(exc).strip().splitlines()[1:] if line.strip()]
        detail = "; ".join(lines[:2]) + (f"; and {len(lines) - 2} more" if len(lines) > 2 else "")
        raise CliError(f"the weights in {path} do not fit {type(model).__name__}: {detail}") from exc
    if missing or unexpected:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                parts.append(f"{len(keys)} {what} key(s) ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise CliError(f"the weights in {path} do not fit {type(model).__name__}: {'; '.join(parts)}")


def _factory_model(source: str, name: str, spec: str) -> LoadedModel:
    from torch import nn

    obj: Any = _import_attribute(spec, "--model")
    if not isinstance(obj, nn.Module):
        if not callable(obj):
            raise CliError(f"--model {spec}: '{name}' is neither an nn.Module nor a factory")
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise CliError(f"--model {spec}: the factory returned {type(obj).__name__}, not an nn.Module")
    return LoadedModel(obj, spec, None, None)


# ---- inputs ---------------------------------------------------------------------------------------------------
class PreparedInput(NamedTuple):
    x: Any                       # the model input, [B, ...]
    display: Any                 # RGB uint8 [H, W, 3] of the (cropped) image, or None
    description: str


def prepare_image(path: str, loaded: LoadedModel, size: Optional[int], device: str = "cpu") -> PreparedInput:
    """Load an image and turn it into a model input: the weights' own transforms when the model has named
    weights, else resize (short side size*256/224), center-crop ``size`` (224) and ImageNet normalisation."""
    import numpy as np
    import torch

    from .viz import image as img

    file = Path(path)
    if not file.is_file():
        raise CliError(f"image file not found: {path}")
    try:
        from PIL import Image
    except ImportError as exc:
        raise CliError("--image needs Pillow: pip install pillow (or pass a tensor with --input)") from exc
    try:
        with Image.open(file) as opened:
            pil = opened.convert("RGB")
    except Exception as exc:
        raise CliError(f"cannot read {path} as an image: {' '.join(str(exc).split())}") from exc
    if loaded.transforms is not None:
        preset = loaded.transforms(crop_size=size, resize_size=round(size * 256 / 224)) if size else \
            loaded.transforms()
        x = preset(pil).unsqueeze(0)
        mean, std = tuple(preset.mean), tuple(preset.std)
    else:
        crop = size or 224
        resize = round(crop * 256 / 224)
        w, h = pil.size
        scale = resize / min(w, h)
        pil = pil.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), Image.BILINEAR)
        left, top = (pil.size[0] - crop) // 2, (pil.size[1] - crop) // 2
        pil = pil.crop((left, top, left + crop, top + crop))
        a = (np.asarray(pil, dtype=np.float32) / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
        x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).unsqueeze(0)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    display = img.to_rgb(x[0], mean=mean, std=std)
    return PreparedInput(x.to(device), display, f"{path} -> {tuple(x.shape)}")


def load_input(path: str, device: str = "cpu") -> PreparedInput:
    """A ``torch.save``'d tensor (or a dict holding exactly one tensor, or under 'x'/'input')."""
    import torch

    file = Path(path)
    if not file.is_file():
        raise CliError(f"input file not found: {path}")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(f"cannot read {path} with torch.load: {' '.join(str(exc).split())[:300]}") from exc
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        key = next((k for k in ("x", "input", "inputs") if k in tensors), None)
        if key is None and len(tensors) == 1:
            key = next(iter(tensors))
        if key is None:
            raise CliError(f"{path} holds a dict; save one tensor, or put it under the key 'x'")
        obj = tensors[key]
    if not isinstance(obj, torch.Tensor):
        raise CliError(f"{path} holds {type(obj).__name__}, not a tensor")
    return PreparedInput(obj.to(device), None, f"{path} -> {tuple(obj.shape)}")


def _input_for(args, loaded: LoadedModel, default_shape: str = "1,3,224,224") -> PreparedInput:
    import torch

    if args.image:
        return prepare_image(args.image, loaded, args.size, args.device)
    if args.input:
        return load_input(args.input, args.device)
    text = getattr(args, "shape", None) or default_shape
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise CliError(f"--shape takes comma-separated integers such as 1,3,224,224, got '{text}'")
    if not shape or any(s < 1 for s in shape):
        raise CliError(f"--shape takes positive sizes such as 1,3,224,224, got '{text}'")
    generator = torch.Generator().manual_seed(0)
    return PreparedInput(torch.randn(shape, generator=generator).to(args.device), None,
                         f"random {tuple(shape)}")


def _check_rule(rule: str):
    from .composites import as_composite

    return as_composite(rule)


# ---- commands -------------------------------------------------------------------------------------------------
def run_demo(args) -> int:
    from . import demo as demo_module

    check_writable(args.out)
    demo_module.run(out=args.out, epochs=args.epochs, dataset=args.dataset)
    return 0


def run_explain(args) -> int:
    import torch

    from .viz import image as img
    from .api import Explainer

    out = check_writable(args.out)
    if out.suffix.lower() != ".png":
        raise CliError(f"--out must be a .png file, got '{args.out}'")
    if args.save_relevance:
        check_writable(args.save_relevance, "--save-relevance")
    if args.topk < 0:
        raise CliError("--topk must be >= 0")
    if not 0 <= args.alpha <= 1:
        raise CliError(f"--alpha must be in [0, 1], got {args.alpha}")
    if not 0 < args.clip <= 100:
        raise CliError(f"--clip is a percentile in (0, 100], got {args.clip}")
    _check_rule(args.rule)
    progress = Progress(3, "lrpfx explain", unit="stage")
    try:
        with progress.step("loading the model"):
            loaded = load_model(args.model, args.weights, args.device)
        with progress.step("preparing the input"):
            prepared = _input_for(args, loaded)
        with progress.step("building the relevance program and explaining"):
            target = args.target
            result = Explainer(loaded.model, args.rule)(prepared.x, target=target)
    finally:
        progress.close()
    logits = result.output
    relevance = result.relevance
    print(f"model      {loaded.description}")
    print(f"input      {prepared.description}")
    print(f"rule       {args.rule}")
    if logits.dim() == 2 and args.topk:
        _print_topk(logits, loaded.categories, args.topk)
    chosen = logits.argmax(-1) if target is None else torch.full((logits.shape[0],), target)
    for b in range(logits.shape[0]):
        c = int(chosen[b])
        logit = float(logits[b, c])
        total = float(relevance[b].sum())
        pos = float(relevance[b].clamp(min=0).sum())
        neg = float(relevance[b].clamp(max=0).sum())
        prefix = "target    " if logits.shape[0] == 1 else f"target[{b}] "
        print(f"{prefix} {c}{_name(loaded.categories, c)}: logit {logit:.4g}, relevance sum {total:.4g} "
              f"(positive {pos:.4g}, negative {neg:.4g})")
    style = args.style or ("overlay" if prepared.display is not None else "heatmap")
    if style != "heatmap" and prepared.display is None:
        raise CliError(f"--style {style} needs an --image to draw on")
    picture = _picture(img, relevance, prepared, style, args)
    img.save_png(picture, out)
    print(f"wrote      {out} ({picture.shape[1]}x{picture.shape[0]} {style})")
    if args.save_relevance:
        torch.save(relevance.detach().cpu(), args.save_relevance)
        print(f"wrote      {args.save_relevance} (relevance {tuple(relevance.shape)})")
    return 0


def _name(categories: Optional[List[str]], index: int) -> str:
    if categories and 0 <= index < len(categories):
        return f" ({categories[index]})"
    return ""


def _print_topk(logits, categories, k: int) -> None:
    probs = logits.float().softmax(-1)
    k = min(k, logits.shape[-1])
    names = categories if categories is not None and len(categories) == logits.shape[-1] else None
    for b in range(logits.shape[0]):
        values, indices = probs[b].topk(k)
        label = f"top-{k}" if logits.shape[0] == 1 else f"top-{k}[{b}]"
        for rank, (p, i) in enumerate(zip(values.tolist(), indices.tolist()), 1):
            name = f"  {names[i]}" if names else ""
            print(f"{label if rank == 1 else '':<10} {rank}. {i:>5}{name}  p={p:.4f}  logit={float(logits[b, i]):.4g}")


def _picture(img, relevance, prepared: PreparedInput, style: str, args):
    r = relevance.detach().cpu()
    if r.dim() < 3:
        r = r.reshape(r.shape[0], 1, 1, -1) if r.dim() == 2 else r.reshape(1, 1, 1, -1)
    elif r.dim() == 3:
        r = r.unsqueeze(1)
    elif r.dim() > 4:
        r = r.flatten(1, -3)
    options = dict(cmap=args.cmap, reduce=args.reduce, clip=args.clip)
    if style == "heatmap":
        maps = [img.heatmap(r[b], **options) for b in range(r.shape[0])]
        if len(maps) == 1:
            return maps[0]
        return img.grid(maps, nrow=min(len(maps), 8), captions=[f"sample {b}" for b in range(len(maps))])
    over = img.overlay(prepared.display, r[0], alpha=args.alpha, **options)
    if style == "overlay":
        return over
    return img.grid([prepared.display, img.heatmap(r[0], **options), over], nrow=3)


def run_graph(args) -> int:
    from .api import export
    from .program.save import relevance_steps, save, split_nodes

    outs = [check_writable(o) for o in args.out]
    for o in outs:
        if o.suffix.lower() not in SUFFIXES:
            raise CliError(f"--out '{o}': use one of {', '.join(SUFFIXES)}")
    _check_rule(args.rule)
    progress = Progress(2 + len(outs), "lrpfx graph", unit="stage")
    try:
        with progress.step("loading the model"):
            loaded = load_model(args.model, args.weights, args.device)
            prepared = _input_for(args, loaded)
        with progress.step("building the relevance program"):
            program = export(loaded.model, prepared.x, rule=args.rule)
        forward, _ = split_nodes(program)
        steps = relevance_steps(program)
        print(f"relevance program for {loaded.description}, rule {args.rule}, input {prepared.description}: "
              f"{sum(1 for n in forward if n.op != 'get_attr')} forward nodes, {len(steps)} relevance steps")
        if args.table:
            print(program.rule_table())
        if args.code:
            print(program.code.strip("\n"))
        for o in outs:
            with progress.step(f"writing {o.name}"):
                suffix = o.suffix.lower()
                if suffix in (".dot", ".gv", ".svg", ".png", ".pdf") and args.params:
                    from .program.save import render_dot, to_dot

                    text = to_dot(program, params=True)
                    o.write_text(text) if suffix in (".dot", ".gv") else render_dot(text, o)
                elif suffix == ".pt2":
                    import torch

                    example = (prepared.x,)
                    if args.target_input:
                        example += (torch.zeros(prepared.x.shape[0], dtype=torch.long, device=prepared.x.device),)
                    save(program, o, example, target_input=args.target_input)
                else:
                    save(program, o)
            print(f"wrote {o}")
    finally:
        progress.close()
    if not outs and not args.table and not args.code:
        print("(nothing written: add --table, --code or --out FILE)")
    return 0


def bench_script() -> Optional[Path]:
    """bench/report.py of a source checkout: in the current directory, or next to the lrpfx package."""
    for root in (Path.cwd(), Path(__file__).resolve().parent.parent):
        candidate = root / "bench" / "report.py"
        if candidate.is_file():
            return candidate
    return None


# ---- data sets --------------------------------------------------------------------------------------------------
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFiles:
    """A map-style data set over the images under ``root`` (sorted by path), preprocessed as in ``explain``;
    items are ``(x, label)`` when every image sits in a subfolder (labels: sorted subfolder names), else x."""

    def __init__(self, root: str, loaded: LoadedModel, size: Optional[int]):
        folder = Path(root)
        if not folder.is_dir():
            raise CliError(f"image folder not found: {root}")
        self.files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise CliError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        parts = [p.relative_to(folder).parts for p in self.files]
        self.classes = sorted({q[0] for q in parts}) if all(len(q) > 1 for q in parts) else None
        self.labels = [self.classes.index(q[0]) for q in parts] if self.classes else None
        self.loaded, self.size = loaded._replace(model=None), size  # no model in the (picklable) data set

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        x = prepare_image(str(self.files[i]), self.loaded, self.size).x[0]
        return x if self.labels is None else (x, self.labels[i])


def _import_attribute(spec: str, option: str):
    """The object named by ``module.path:name`` or ``file.py:name`` (a file already loaded, e.g. by --model, is
    reused, so a model and its data set may share one module and its caches)."""
    if ":" not in spec or spec.startswith(":") or spec.endswith(":"):
        raise CliError(f"{option} takes 'module.path:factory' or 'file.py:factory', got '{spec}'")
    source, name = spec.rsplit(":", 1)
    if source.endswith(".py"):
        path = Path(source)
        if not path.is_file():
            raise CliError(f"file not found: {source} (from {option} {spec})")
        module = sys.modules.get(path.stem)
        if module is None or Path(getattr(module, "__file__", "") or "").resolve() != path.resolve():
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules.setdefault(path.stem, module)
            module_spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())
        try:
            module = importlib.import_module(source)
        except ModuleNotFoundError as exc:
            raise CliError(f"cannot import '{source}' (from {option} {spec}): {exc}") from exc
    obj: Any = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise CliError(f"'{source}' has no attribute '{name}' (from {option} {spec})")
        obj = getattr(obj, part)
    return obj


def load_dataset(args, loaded: LoadedModel):
    """The data set of ``--dataset SPEC`` (the factory's result) or ``--images DIR``, cut to ``--limit``."""
    import torch

    if args.images:
        data = ImageFiles(args.images, loaded, args.size)
    else:
        obj = _import_attribute(args.dataset, "--dataset")
        data = obj() if callable(obj) and not isinstance(obj, torch.utils.data.Dataset) else obj
        if isinstance(data, torch.utils.data.DataLoader):
            pass
        elif not (isinstance(data, (torch.Tensor, torch.utils.data.Dataset, tuple, list))
                  or hasattr(data, "__getitem__")):
            raise CliError(f"--dataset {args.dataset}: the factory returned {type(data).__name__}, not a data set, "
                           "a DataLoader or tensors")
    if args.limit is not None:
        if args.limit < 1:
            raise CliError(f"--limit must be >= 1, got {args.limit}")
        from .data.dataset import as_source

        source = as_source(data)
        subset = torch.utils.data.Subset(source.dataset, range(min(args.limit, len(source))))
        if isinstance(data, torch.utils.data.DataLoader):  # keep its collate_fn and workers
            return torch.utils.data.DataLoader(subset, batch_size=data.batch_size, collate_fn=data.collate_fn,
                                               num_workers=data.num_workers)
        return subset
    return data


def _target_option(text: str):
    if text == "argmax":
        return None
    if text == "label":
        return "label"
    try:
        return int(text)
    except ValueError:
        raise CliError(f"--target takes argmax, label or a class index, got '{text}'") from None


def _device_option(text: str) -> str:
    if text == "auto":
        from .data.dataset import local_device

        return str(local_device())
    return text


def run_explain_dataset(args) -> int:
    from .data.dataset import explain_dataset

    _check_rule(args.rule)
    target = _target_option(args.target)
    args.device = _device_option(args.device)
    loaded = load_model(args.model, args.weights, args.device)
    data = load_dataset(args, loaded)
    result = explain_dataset(loaded.model, data, args.rule, args.out, batch_size=args.batch_size, target=target,
                             compile=args.compile, shard_size=args.shard_size, num_shards=args.num_shards,
                             resume=not args.no_resume, overwrite=args.overwrite,
                             progress=not args.no_progress and sys.stderr.isatty(), store=args.store,
                             num_workers=args.num_workers)
    s = result.stats
    if s.rank != 0:
        return 0
    world = f" (this process, rank 0 of {s.world_size})" if s.world_size > 1 else ""
    print(f"model      {loaded.description}")
    print(f"rule       {args.rule}")
    print(f"explained  {s.samples} samples{world}: {s.shards_written} shards written, {s.shards_skipped} kept "
          f"(verified), {s.shards_redone} redone")
    if s.samples:
        print(f"speed      {s.samples_per_second:.1f} samples/s{world}; writing shards took "
              f"{100 * s.write_overhead:.1f}% of the explain time")
    print(f"wrote      {args.out} ({len(result)} samples in {result.num_shards} shards, {args.store}, "
          f"manifest.json)")
    return 0


def _split_rules(text: str) -> List[str]:
    """Comma-separated rule strings; commas inside parentheses belong to the rule (alphabeta(2,1))."""
    rules, depth, current = [], 0, ""
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            rules.append(current.strip())
            current = ""
        else:
            current += ch
    rules.append(current.strip())
    rules = [r for r in rules if r]
    if not rules:
        raise CliError("--rules is empty")
    return rules


def _baseline_option(text: str):
    if text in ("zero", "mean", "uniform"):
        return text
    try:
        return float(text)
    except ValueError:
        raise CliError(f"--baseline takes a number, zero, mean or uniform, got '{text}'") from None


def run_evaluate(args) -> int:
    import json

    from .eval.metrics import evaluate_rules

    rules = _split_rules(args.rules)
    for rule in rules:
        _check_rule(rule)
    target = _target_option(args.target)
    baseline = _baseline_option(args.baseline)
    if args.patch_size < 1:
        raise CliError(f"--patch-size must be >= 1, got {args.patch_size}")
    if args.steps is not None and args.steps < 1:
        raise CliError(f"--steps must be >= 1, got {args.steps}")
    args.device = _device_option(args.device)
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


def run_bench(args) -> int:
    script = bench_script()
    if script is None:
        raise CliError("bench/report.py not found: the benchmark suite ships with the lrpfx source checkout, not "
                       "the installed package; run 'lrpfx bench' from the checkout's root")
    return subprocess.call([sys.executable, str(script), *args.args])


if __name__ == "__main__":
    sys.exit(main())
