"""Time LXT 2.1's efficient AttnLRP against the input-gradient floor on a LLaMA-like model (CPU).

Run with the LXT interpreter (``tests/helpers/lxt_env.py``), not the main one::

    $(python -m tests.helpers.lxt_env | cut -d' ' -f1) -m bench.lxt_bench --layers 4 --hidden 256 --seq 512

Both methods use one model object with frozen parameters; LXT's monkey patch is switched on and off between
calls (its patches replace class methods and module functions, which we record and swap), so the rounds can
alternate and share whatever noise the machine has. Per round:

* ``lxt``: forward of the patched model on ``inputs_embeds`` (requires grad), backward of the summed argmax
  logits of the last position, ``E * E.grad`` (LXT's recipe, see tests/helpers/lxt_reference.py);
* ``floor``: the same forward on the unpatched model and ``torch.autograd.grad`` of the same sum w.r.t. E.

Prints one JSON object on one line: medians in seconds, their ratio (and the median per-round ratio), the
process peak RSS, and each method's peak RSS growth over the RSS at its call's start (sampled every millisecond;
compare memory with ``--only lxt`` / ``--only floor`` in fresh processes: alternating rounds share the allocator's
pool, so the second method looks smaller than it is).

``--spec FILE`` takes a ``torch.save``'d {"family", "config" (a 5.x ``to_dict()``), "state_dict"} (as for
tests/helpers/lxt_reference.py) so a benchmark elsewhere can use identical weights; ``--state-dict FILE`` takes just
the weights for the configuration given on the command line.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from tests.helpers.lxt_reference import FAMILIES, _ensure_torchvision, build_config

_MISSING = object()


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--family", default="llama", choices=["llama", "qwen2"])
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--kv-heads", type=int, default=None, help="default: --heads")
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--vocab", type=int, default=1000)
    p.add_argument("--seq", type=int, default=512)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "float64", "bfloat16"])
    p.add_argument("--attn", default="sdpa", choices=["sdpa", "eager"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", choices=["lxt", "floor"],
                   help="time one method (memory in a fresh process: alternating rounds share the allocator)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--spec", type=Path, help="torch.save'd {family, config, state_dict}")
    p.add_argument("--state-dict", type=Path, help="torch.save'd state dict for the command-line config")
    return p.parse_args(argv)


def raw_config(args) -> dict:
    return {"vocab_size": args.vocab, "hidden_size": args.hidden, "num_hidden_layers": args.layers,
            "num_attention_heads": args.heads, "num_key_value_heads": args.kv_heads or args.heads,
            "intermediate_size": args.intermediate, "max_position_embeddings": max(2048, args.seq)}


class LxtSwitch:
    """Records what ``monkey_patch`` changes so the patch can be switched off and on again."""

    def __init__(self, module):
        from lxt.efficient import monkey_patch
        from lxt.efficient.models import get_default_map

        targets = list(get_default_map(module))
        before = [dict(vars(t)) for t in targets]
        monkey_patch(module)
        self.changes = []
        for target, old in zip(targets, before):
            for name, new in vars(target).items():
                if not name.startswith("__") and old.get(name, _MISSING) is not new:
                    self.changes.append((target, name, old.get(name, _MISSING), new))

    def set(self, on: bool):
        for target, name, old, new in self.changes:
            value = new if on else old
            if value is not _MISSING:
                setattr(target, name, value)


class PeakRss:
    """Peak resident memory growth during a block, sampled from /proc every millisecond."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")

    def rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.start = self.peak = self.rss()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, self.rss())

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss())
        self.delta = self.peak - self.start


def build(args):
    import importlib

    _ensure_torchvision()
    dtype = getattr(torch, args.dtype)
    if args.spec:
        spec = torch.load(args.spec, weights_only=False)
        family, raw, state = spec["family"], spec["config"], spec["state_dict"]
    else:
        family, raw = args.family, raw_config(args)
        state = torch.load(args.state_dict, weights_only=False) if args.state_dict else None
    module_name, config_name, model_name, _ = FAMILIES[family]
    if family not in ("llama", "qwen2"):
        raise SystemExit(f"lxt_bench: family {family!r} not supported (its LXT patch cannot be switched)")
    module = importlib.import_module(module_name)
    config_cls = getattr(importlib.import_module(module_name.replace("modeling_", "configuration_")), config_name)
    config, _ = build_config(config_cls, raw, args.attn)
    torch.manual_seed(args.seed)
    model = getattr(module, model_name)(config).to(dtype).eval()
    if state is not None:
        model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    model.requires_grad_(False)
    return module, model, config


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    module, model, config = build(args)
    switch = LxtSwitch(module)
    torch.manual_seed(args.seed + 1)
    ids = torch.randint(0, config.vocab_size, (args.batch, args.seq))
    embeds = model.get_input_embeddings()(ids).detach()

    def selected(e):
        logits = model(inputs_embeds=e, use_cache=False).logits[:, -1, :]
        return logits.gather(1, logits.argmax(-1, keepdim=True)).sum()

    def lxt():
        switch.set(True)
        e = embeds.clone().requires_grad_(True)
        selected(e).backward()
        return e * e.grad

    def floor():
        switch.set(False)
        e = embeds.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(selected(e), e)
        return grad

    methods = {k: v for k, v in {"lxt": lxt, "floor": floor}.items() if args.only in (None, k)}
    times = {k: [] for k in methods}
    peaks = {k: 0 for k in methods}
    for r in range(args.warmup + args.rounds):
        for name, fn in methods.items():
            with PeakRss() as mem:
                t0 = time.perf_counter()
                fn()
                dt = time.perf_counter() - t0
            peaks[name] = max(peaks[name], mem.delta)
            if r >= args.warmup:
                times[name].append(dt)
    import transformers
    from importlib.metadata import version

    result = {}
    for name in methods:
        result[f"{name}_s"] = statistics.median(times[name])
        result[f"{name}_rounds_s"] = times[name]
        result[f"{name}_peak_rss_growth_mb"] = peaks[name] / 2**20
    if len(methods) == 2:
        result["ratio"] = result["lxt_s"] / result["floor_s"]
        # each round's LXT over the floor timed right after it: steadier than the ratio of medians on a busy box
        result["paired_ratio"] = statistics.median(a / b for a, b in zip(times["lxt"], times["floor"]))
    print(json.dumps({
        **result,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "config": {"family": config.model_type, "layers": config.num_hidden_layers, "hidden": config.hidden_size,
                   "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads,
                   "intermediate": config.intermediate_size, "vocab": config.vocab_size,
                   "seq": args.seq, "batch": args.batch, "dtype": args.dtype, "attn": args.attn},
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "transformers": transformers.__version__, "lxt": version("lxt"),
    }))  # one line: callers read the last line of stdout
    return 0


if __name__ == "__main__":
    sys.exit(main())
