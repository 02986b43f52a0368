"""LXT 2.1's side of ``bench/long_context_lxt.py``: peak memory of one AttnLRP explanation with Hugging Face's
gradient checkpointing on, in the LXT environment (transformers 4.52.4 + lxt 2.1, ``tests/helpers/lxt_env.py``).

    $(python -m tests.helpers.lxt_env | cut -d' ' -f1) -m bench.long_context_lxt_worker --spec SPEC.pt --seq 1024

SPEC.pt: ``torch.save`` of {"config": a transformers 5.x ``LlamaConfig.to_dict()``, "state_dict", "dtype"}.
The model is LXT-patched (``lxt.efficient.monkey_patch``, the AttnLRP map) before it is built, so LXT's relevance
is ``E * dE``: the gradient of the last position's argmax logit with respect to the embedding output E, times E.
With ``--checkpoint`` (the default) each decoder layer runs under non-reentrant ``torch.utils.checkpoint`` (HF's
``gradient_checkpointing_enable``; HF checkpoints only in training mode, and LXT's patch turns dropout off).

Modes:
* measure (default): one untimed call at ``--warmup-seq`` tokens, then the peak resident growth and time of one
  call at ``--seq`` tokens. Prints one JSON line.
* ``--relevance OUT.pt``: the relevance at ``--seq`` tokens with checkpointing on and off, saved for comparison.

Imports nothing from lrpfx (the side environment has transformers 4.52.4, which lrpfx does not support).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from bench.memory import rss_growth_during
from tests.helpers.lxt_reference import load_model


def prompt(vocab: int, seq: int) -> torch.Tensor:
    """The prompt of ``bench/long_context.py``: seed 1, batch 1."""
    return torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(1))


def lxt_relevance(model, ids: torch.Tensor, checkpoint: bool) -> torch.Tensor:
    """LXT's efficient recipe on the last position's argmax logit (only that position's logits computed)."""
    model.train(checkpoint)  # HF runs its checkpointed layers in training mode only
    try:
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
        logits = model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits[:, -1]
        logits.gather(1, logits.argmax(1, keepdim=True)).sum().backward()
        return (embeds * embeds.grad).detach()
    finally:
        model.eval()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--spec", required=True)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--warmup-seq", type=int, default=64)
    p.add_argument("--no-checkpoint", action="store_true")
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--dtype", help="override the spec's dtype (e.g. float32 for the agreement check)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--relevance", help="save the relevance with checkpointing on and off to this file")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = torch.load(args.spec, weights_only=False)
    dtype = getattr(torch, args.dtype or spec["dtype"])
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in spec.pop("state_dict").items()}
    model, _, info = load_model("llama", spec["config"], state, dtype, args.attn)
    del state
    if info["missing_keys"] or info["unexpected_keys"]:
        raise SystemExit(f"weights do not match the 4.52.4 model: {info}")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    vocab = model.config.vocab_size
    if args.relevance:
        ids = prompt(vocab, args.seq)
        torch.save({"checkpointed": lxt_relevance(model, ids, True), "plain": lxt_relevance(model, ids, False),
                    "attn_implementation": model.config._attn_implementation}, args.relevance)
        return 0
    checkpoint = not args.no_checkpoint
    lxt_relevance(model, prompt(vocab, args.warmup_seq), checkpoint)
    ids = prompt(vocab, args.seq)
    start = time.perf_counter()
    peak = rss_growth_during(lambda: lxt_relevance(model, ids, checkpoint))
    seconds = time.perf_counter() - start
    import transformers
    from importlib.metadata import version

    print(json.dumps({"peak_mib": peak, "time_s": seconds, "checkpoint": checkpoint,
                      "attn_implementation": model.config._attn_implementation, "threads": torch.get_num_threads(),
                      "transformers": transformers.__version__, "lxt": version("lxt")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
