"""The breadth zoo as a table: every architecture of ``tests/helpers/breadth_zoo.py`` explained with
``CPLRP(epsilon=0, zero_bias=True)`` (Mamba: ``MambaLRP(epsilon=0, zero_bias=True)``) in float64.

    python -m bench.zoo                    # all models, one subprocess each (a crash or a hang stays contained)
    python -m bench.zoo hf-bloom timm-     # models whose name starts with these prefixes
    python -m bench.zoo --markdown         # the table as Markdown
    python -m bench.zoo --dynamic hf-swin  # with every input axis exported dynamic (the former default)

Columns: status (``ok`` or the lrpfx error's name), first call (trace or export, build, run), second call
(the cached program), and conservation: max over samples of ``|Σ R - logit| / |logit|``, R summed over every
explained input (token ids at their embeddings, pixels, both towers of CLIP; CLIP's over the batch, as its
texts serve every image). One intra-op thread.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 600


def run_one(name: str, dynamic=None) -> dict:
    import torch

    torch.set_num_threads(1)
    import lrpfx
    from tests.helpers.breadth_zoo import ZOO, explained_logit, total_relevance

    case = ZOO[name]()
    row = {"model": name, "status": "ok", "build_s": None, "call_s": None, "conservation": None}
    options = case.options if dynamic is None else {**case.options, "dynamic": dynamic}
    explainer = lrpfx.Explainer(case.model, case.composite(), **options)
    try:
        start = time.perf_counter()
        explanation = explainer(case.inputs)
        row["build_s"] = time.perf_counter() - start
        start = time.perf_counter()
        explanation = explainer(case.inputs)
        row["call_s"] = time.perf_counter() - start
    except lrpfx.LrpfxError as exc:
        row["status"] = type(exc).__name__
        row["error"] = str(exc).splitlines()[0][:300]
        return row
    logit = explained_logit(explanation, case.per_sample)
    total = total_relevance(explanation, case.per_sample)
    row["finite"] = bool(torch.isfinite(total).all())
    row["conservation"] = float(((total - logit).abs() / logit.abs()).max())
    return row


def _fmt(v, spec):
    return "-" if v is None else format(v, spec)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prefixes", nargs="*")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--dynamic", action="store_true", help="Explainer(dynamic=True): every input axis dynamic")
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, True if args.dynamic else None)))
        return
    from tests.helpers.breadth_zoo import ZOO

    names = [n for n in ZOO if not args.prefixes or any(n.startswith(p) for p in args.prefixes)]
    rows = []
    for name in names:
        try:
            command = [sys.executable, "-m", "bench.zoo", "--one", name] + (["--dynamic"] if args.dynamic else [])
            proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=ROOT)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {
                "model": name, "status": "crash", "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:300]}
        except subprocess.TimeoutExpired:
            row = {"model": name, "status": f"timeout > {TIMEOUT_S} s"}
        rows.append(row)
        print(f"{name:28s} {row['status']:20s} build {_fmt(row.get('build_s'), '7.2f')} s  "
              f"call {_fmt(row.get('call_s'), '6.3f')} s  conservation {_fmt(row.get('conservation'), '.1e')}  "
              f"{row.get('error', '')}", flush=True)
    if args.markdown:
        print("\n| model | status | first call (s) | second call (s) | conservation |\n|---|---|---|---|---|")
        for r in rows:
            status = r["status"] if r["status"] == "ok" else f"{r['status']}: {r.get('error', '')[:80]}"
            print(f"| {r['model']} | {status} | {_fmt(r.get('build_s'), '.2f')} | {_fmt(r.get('call_s'), '.3f')} | "
                  f"{_fmt(r.get('conservation'), '.1e')} |")


if __name__ == "__main__":
    main()
