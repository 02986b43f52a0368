"""``lrpfx explain``: explain one prediction, print the top classes and the relevance sums, write a PNG."""
from __future__ import annotations

from typing import List, Optional

import torch

from ..api import Explainer
from ..progress import Progress
from ..viz import image as img
from .arguments import check_rule, check_writable
from .errors import CliError
from .inputs import PreparedInput, input_for
from .models import load_model


def run_explain(args) -> int:
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
    check_rule(args.rule)
    progress = Progress(3, "lrpfx explain", unit="stage")
    try:
        with progress.step("loading the model"):
            loaded = load_model(args.model, args.weights, args.device)
        with progress.step("preparing the input"):
            prepared = input_for(args, loaded)
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
        maps = [img.upscale(img.heatmap(r[b], **options)) for b in range(r.shape[0])]
        if len(maps) == 1:
            return maps[0]
        return img.grid(maps, nrow=min(len(maps), 8), captions=[f"sample {b}" for b in range(len(maps))])
    over = img.overlay(prepared.display, r[0], alpha=args.alpha, **options)
    if style == "overlay":
        return over
    return img.grid([prepared.display, img.heatmap(r[0], **options), over], nrow=3)
