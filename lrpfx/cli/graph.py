"""``lrpfx graph``: build the relevance program of a model and a rule; print its rule table or code, save it."""
from __future__ import annotations

import torch

from ..api import export
from ..program.save import SUFFIXES, relevance_steps, render_dot, save, split_nodes, to_dot
from ..progress import Progress
from .arguments import check_rule, check_writable
from .errors import CliError
from .inputs import input_for
from .models import load_model


def run_graph(args) -> int:
    outs = [check_writable(o) for o in args.out]
    for o in outs:
        if o.suffix.lower() not in SUFFIXES:
            raise CliError(f"--out '{o}': use one of {', '.join(SUFFIXES)}")
    check_rule(args.rule)
    progress = Progress(2 + len(outs), "lrpfx graph", unit="stage")
    try:
        with progress.step("loading the model"):
            loaded = load_model(args.model, args.weights, args.device)
            prepared = input_for(args, loaded)
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
                    text = to_dot(program, params=True)
                    o.write_text(text) if suffix in (".dot", ".gv") else render_dot(text, o)
                elif suffix == ".pt2":
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
