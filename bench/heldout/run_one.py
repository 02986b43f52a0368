"""Explain one model of the held-out zoo (``python bench/heldout/run_one.py NAME``); prints one RESULT line of
JSON: explained, refused (a named lrpfx error), SILENT (no error, no relevance) or CRASH (any other error)."""
import os, sys, json, time, traceback
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
torch.set_num_threads(1)
import models, lrpfx
name = sys.argv[1]
res = {"name": name}
t0 = time.time()
try:
    case = models.ZOO[name]()
    explainer = lrpfx.Explainer(case.model, "auto", **case.options)
    e = explainer(case.inputs)
    res["probed"] = sorted({f"{r.op}: {r.chosen_by}" for r in explainer.program(case.inputs).rule_table() if "probe" in str(r.chosen_by) + str(r.rule)})
    rel = [r for r in (e.inputs.values() if e.inputs else [e.relevance]) if r is not None]
    rel = [t for r in rel for t in (r if isinstance(r, tuple) else (r,))]
    ok = bool(rel) and all(torch.isfinite(r).all() for r in rel) and all(r.abs().sum() > 0 for r in rel)
    res["status"] = "explained" if ok else "SILENT"
    if name in models.PL:
        x = case.inputs
        target = e.output.argmax(-1) if e.output.dim() == 2 else None
        key = next(iter(x)) if isinstance(x, dict) else None
        xr = (x[key] if key else x).detach().clone().requires_grad_(True)
        out = case.model(**{key: xr}) if key else case.model(xr)
        if key:
            out = out.logits
        if "output" in case.options:
            out = case.options["output"](out)
        (g,) = torch.autograd.grad(out.gather(1, target[:, None]).sum(), xr)
        r0 = lrpfx.Explainer(case.model, "zero", **case.options)(x, target=target).relevance
        ref = (g * xr).detach()
        res["lrp0_vs_gxi"] = float((r0 - ref).abs().max() / ref.abs().max())
except lrpfx.LrpfxError as ex:
    res["status"] = "refused"; res["detail"] = f"{type(ex).__name__}: {str(ex)[:300]}"
except Exception as ex:
    res["status"] = "CRASH"; res["detail"] = f"{type(ex).__name__}: {str(ex)[:300]}"; res["tb"] = traceback.format_exc()[-1500:]
res["s"] = round(time.time() - t0, 1)
print("RESULT " + json.dumps(res))
