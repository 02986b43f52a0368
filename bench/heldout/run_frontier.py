"""Explain one frontier model (``python bench/heldout/run_frontier.py NAME``) with ``rule="auto"``, then, where it
was explained, with a conserving composite (CP-LRP, epsilon 0, biases zeroed): prints one RESULT line of JSON with
the status (explained, refused, SILENT, CRASH; SKIP when the tiny model's own forward fails), the time and the
largest relative gap between the summed input relevance and the explained logit."""
import os, sys, json, time, traceback, warnings
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch
torch.set_num_threads(1)
import frontier, lrpfx
from lrpfx.composites import CPLRP, MambaLRP
from tests.helpers.breadth_zoo import explained_logit, BATCH


def call(model, x):
    return model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, tuple) else model(x)


def relevances(e):
    rel = [r for r in (e.inputs.values() if e.inputs else [e.relevance]) if r is not None]
    return [t for r in rel for t in (r if isinstance(r, tuple) else (r,))]


name = sys.argv[1]
res = {"name": name}
t0 = time.time()
try:
    case = frontier.ZOO[name]()
    try:
        with torch.no_grad():
            call(case.model, case.inputs)
    except Exception as ex:
        raise SystemExit(print("RESULT " + json.dumps({**res, "status": "SKIP", "detail": f"own forward: {type(ex).__name__}: {str(ex)[:300]}"})))
    explainer = lrpfx.Explainer(case.model, "auto", **case.options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        e = explainer(case.inputs)
    res["warnings"] = sorted({str(w.message)[:200] for w in caught})[:6]
    res["probed"] = sorted({f"{r.op}: {r.chosen_by}" for r in explainer.program(case.inputs).rule_table() if "probe" in str(r.chosen_by) + str(r.rule)})
    rel = relevances(e)
    res["inputs"] = {k: (None if v is None else float(v.abs().sum())) for k, v in (e.inputs or {}).items()}
    ok = bool(rel) and all(torch.isfinite(r).all() for r in rel) and all(r.abs().sum() > 0 for r in rel)
    res["status"] = "explained" if ok else "SILENT"
    res["s"] = round(time.time() - t0, 1)
    if ok and res["s"] < 120:  # conservation: CP-LRP, or MambaLRP where CP-LRP refuses a scan, at epsilon 0
        for label, composite in (("cp-lrp", CPLRP), ("mamba-lrp", MambaLRP)):
            try:
                c = lrpfx.Explainer(case.model, composite(epsilon=0.0, zero_bias=True), **case.options)(case.inputs)
            except lrpfx.LrpfxError as ex:
                res[f"{label}_refused"] = f"{type(ex).__name__}: {str(ex)[:300]}"
                continue
            except Exception as ex:
                res[f"{label}_crash"] = f"{type(ex).__name__}: {str(ex)[:300]}"
                continue
            total = sum(r.reshape(BATCH, -1).sum(1) for r in relevances(c))  # Qwen-VL patches come image by image
            logit = explained_logit(c, case.per_sample)
            res["conservation"] = float(((total - logit).abs() / logit.abs()).max())
            res["conserving"] = label
            break
except lrpfx.LrpfxError as ex:
    res["status"] = "refused"; res["detail"] = f"{type(ex).__name__}: {str(ex)[:600]}"
except Exception as ex:
    res["status"] = "CRASH"; res["detail"] = f"{type(ex).__name__}: {str(ex)[:600]}"; res["tb"] = traceback.format_exc()[-2500:]
res["total_s"] = round(time.time() - t0, 1)
print("RESULT " + json.dumps(res))
