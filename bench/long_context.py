"""Long contexts: AttnLRP with ``checkpoint=True`` (each decoder layer's forward run again in the relevance pass)
against the input gradient checkpointed per layer (``torch.utils.checkpoint``), on a LLaMA-shaped model.

    python -m bench.long_context                                  # the defaults below, 2048 and 4096 tokens
    python -m bench.long_context --layers 24 --hidden 1024 --heads 16 --intermediate 4096 --seqs 8192 --dtype bfloat16

Methods, all on the same model and prompt (batch 1): ``gradient`` (the input-embedding gradient of the target
logit of the last position, parameters frozen, HF's own attention), ``gradient, checkpointed`` (the same with Hugging Face's gradient
checkpointing per decoder layer, non-reentrant ``torch.utils.checkpoint``), ``lrpfx`` (the ``attnlrp`` program)
and ``lrpfx, checkpoint=True``. Each is run once to warm up (export and build), then timed round-robin; medians.
Memory: peak resident growth during one call (the last round), sampled in this process after the freed heap is
handed back to the OS (``common.rss_growth_during``); on CUDA (``--device cuda``) the allocator's peak beyond
what was allocated before the call. bfloat16 needs a device with bfloat16 matrix products: on a CPU without
AVX512-BF16, ``g @ W`` in bfloat16 (both operands row-major, as a Linear's backward computes it) runs a generic
kernel some 150× slower than float32, for the gradient and for lrpfx alike. The checkpointed relevance is checked against the plain
one on every size (max |ΔR| / max |R|). Appends nothing: prints a Markdown table and the raw numbers.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from bench.common import rss_growth_during

SHAPE = {"layers": 8, "hidden": 512, "heads": 8, "intermediate": 1408, "vocab": 32000}


def make_model(args, seq: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, num_attention_heads=args.heads,
                         num_key_value_heads=args.heads, intermediate_size=args.intermediate, vocab_size=args.vocab,
                         max_position_embeddings=seq)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval().to(getattr(torch, args.dtype)).to(args.device)
    model.requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def methods(model, ids, all_logits: bool = False):
    """The four methods as calls; each returns the relevance or gradient at the embedding output. The explained
    logit is the last position's; unless ``all_logits``, the model computes only that position's logits
    (``logits_to_keep=1``), so the vocabulary-sized head does not hide the layers' memory."""
    import lrpfx

    keep = {} if all_logits else {"logits_to_keep": 1}

    def gradient(checkpointed: bool):
        def run():
            # HF checkpoints its layers in training mode only; this model has no dropout, so the values agree
            model.train(checkpointed)
            try:
                embeds = model.get_input_embeddings()(ids).requires_grad_()
                logits = model(inputs_embeds=embeds, use_cache=False, **keep).logits[:, -1]
                (grad,) = torch.autograd.grad(logits.gather(1, logits.argmax(1, keepdim=True)).sum(), embeds)
            finally:
                model.eval()
            return grad
        return run

    plain = lrpfx.Explainer(model, "attnlrp")
    checkpointed = lrpfx.Explainer(model, "attnlrp", checkpoint=True)
    return {"gradient": gradient(False), "gradient, checkpointed": gradient(True),
            "lrpfx": lambda: plain({"input_ids": ids, **keep}).relevance,
            "lrpfx, checkpoint=True": lambda: checkpointed({"input_ids": ids, **keep}).relevance}


def peak_growth_mib(run, device: str) -> float:
    """Peak memory while ``run`` runs beyond what was allocated before (MiB): resident memory on the CPU,
    the caching allocator's peak on CUDA."""
    if device == "cpu":
        return rss_growth_during(run)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2 ** 20


def measure(table: dict, rounds: int, device: str = "cpu") -> dict:
    results = {name: run() for name, run in table.items()}  # warm-up: export and build
    agreement = None
    if "lrpfx" in results and "lrpfx, checkpoint=True" in results:
        agreement = ((results["lrpfx, checkpoint=True"].double() - results["lrpfx"].double()).abs().max()
                     / results["lrpfx"].double().abs().max()).item()
    del results
    times = {name: [] for name in table}
    memory = {}
    for i in range(rounds):
        for name, run in table.items():
            start = time.perf_counter()
            if i == rounds - 1:
                memory[name] = peak_growth_mib(run, device)
            else:
                run()
                if device != "cpu":
                    torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {"median_s": {n: statistics.median(t) for n, t in times.items()}, "rounds_s": times,
            "rss_growth_mib": memory, "checkpointed_vs_plain_relevance": agreement}


def table_lines(seq: int, result: dict) -> list:
    med, mem = result["median_s"], result["rss_growth_mib"]
    base, base_mem = med["gradient, checkpointed"], mem["gradient, checkpointed"]
    return [f"| {seq} | {name} | {med[name]:.2f} | {med[name] / base:.2f} | {mem[name]:.0f} | "
            f"{mem[name] / base_mem:.2f} |" for name in med]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for key, value in SHAPE.items():
        parser.add_argument(f"--{key}", type=int, default=value)
    parser.add_argument("--seqs", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--all-logits", action="store_true", help="compute every position's logits")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="a subset of the methods, e.g. 'gradient, checkpointed' 'lrpfx, checkpoint=True' "
                             "(the plain ones need every layer's activations at once)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows, raw = [], {}
    for seq in args.seqs:
        model = make_model(args, seq)
        ids = torch.randint(0, args.vocab, (1, seq), generator=torch.Generator().manual_seed(1)).to(args.device)
        table = methods(model, ids, args.all_logits)
        if args.methods:
            table = {name: table[name] for name in args.methods}
        result = measure(table, args.rounds, args.device)
        print(seq, json.dumps(result), flush=True)
        rows += table_lines(seq, result)
        raw[seq] = result
        params = sum(p.numel() for p in model.parameters())
        del model
    print(f"LLaMA-shaped, {args.layers} layers, hidden {args.hidden}, {args.heads} heads, MLP {args.intermediate}, "
          f"vocabulary {args.vocab} ({params / 1e6:.0f}M parameters), {args.dtype}, batch 1, "
          f"{'every position' if args.all_logits else 'the last position'}'s logits, "
          f"{args.device}, {torch.get_num_threads()} threads; medians of {args.rounds} rounds")
    print("| tokens | method | median s | × checkpointed gradient | memory MiB | memory × checkpointed gradient |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
