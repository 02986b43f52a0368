"""GPU correctness check, run by bench/gpu.sh before the GPU benchmarks (never by CI: CI has no GPU).

The same explanations on CUDA and on the CPU must agree: a CNN (ResNet18, epsilon-gamma-box) and a tiny LLaMA
(AttnLRP through the torch.export front-end), eager and compiled. Where bitsandbytes imports (it is never a CI
dependency), an MLP of its 4-bit Linears is explained as its dequantized float twin; where hqq imports, an MLP of
HQQLinear layers likewise (PyTorch backend, and the ATen one where hqq's kernels are built), and a layer of hqq's
torchao int4 inference backend is refused by name. Exits non-zero on a mismatch.

    python -m bench.gpu_check            # needs torch.cuda.is_available()
    python -m bench.gpu_check --device cpu   # the same comparisons against itself (a dry run of the script)
"""
from __future__ import annotations

import argparse
import sys

import torch


def compare(name: str, got: torch.Tensor, expected: torch.Tensor, tolerance: float) -> bool:
    error = ((got.cpu().double() - expected.double()).abs().max() / expected.abs().max()).item()
    ok = error < tolerance
    print(f"{'ok  ' if ok else 'FAIL'} {name}: max|diff|/max|cpu| = {error:.2e} (tolerance {tolerance:.0e})",
          flush=True)
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device", flush=True)
        return 2
    import torchvision
    import transformers

    import lrpfx

    results = []
    torch.manual_seed(0)
    cnn = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(4, 3, 64, 64)
    reference = lrpfx.explain(cnn, x, "epsilon-gamma-box")
    cnn_dev, x_dev = cnn.to(args.device), x.to(args.device)
    for compiled in (False, True):
        got = lrpfx.Explainer(cnn_dev, "epsilon-gamma-box", compile=compiled)(x_dev).relevance
        results.append(compare(f"resnet18 epsilon-gamma-box {'compiled' if compiled else 'eager'}", got,
                               reference, 1e-3))

    config = transformers.LlamaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=128, vocab_size=100)
    llm = transformers.LlamaForCausalLM(config).double().eval()
    ids = torch.randint(0, 100, (2, 16))
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, :4] = 0
    reference = lrpfx.Explainer(llm, "attnlrp")({"input_ids": ids, "attention_mask": mask}).relevance
    llm_dev = llm.to(args.device)
    inputs = {"input_ids": ids.to(args.device), "attention_mask": mask.to(args.device)}
    for compiled in (False, True):
        got = lrpfx.Explainer(llm_dev, "attnlrp", compile=compiled)(inputs).relevance
        results.append(compare(f"llama attnlrp float64 {'compiled' if compiled else 'eager'}", got, reference,
                               1e-5))
    results.extend(check_bitsandbytes(args.device))
    results.extend(check_hqq(args.device))
    print(f"{sum(results)}/{len(results)} GPU checks passed", flush=True)
    return 0 if all(results) else 1


def check_bitsandbytes(device: str) -> list:
    """A 4-bit bitsandbytes MLP against the float twin whose weights are its dequantized weights (equal: the same
    float ops run on the same weights); an 8-bit Linear (it quantizes its input) must be refused by name."""
    try:
        import bitsandbytes as bnb
    except Exception as exc:  # not installed, or no kernels for this machine
        print(f"skip bitsandbytes: {type(exc).__name__}: {exc}", flush=True)
        return []
    import copy

    import lrpfx
    from lrpfx.errors import UnsupportedOpError
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10)).eval()
    quantized = copy.deepcopy(model)
    for i in (0, 2):
        layer = bnb.nn.Linear4bit(64 if i == 0 else 128, model[i].out_features, compute_dtype=torch.float32,
                                  quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(model[i].weight.data.clone(), requires_grad=False, quant_type="nf4")
        layer.bias = nn.Parameter(model[i].bias.data.clone())
        quantized[i] = layer
    quantized = quantized.to(device).eval()
    twin = copy.deepcopy(model).to(device)
    for i in (0, 2):
        weight = quantized[i].weight
        twin[i].weight = nn.Parameter(bnb.functional.dequantize_4bit(weight.data, weight.quant_state))
    x = torch.randn(8, 64, device=device)
    got = lrpfx.Explainer(quantized, "epsilon", frontend="fx")(x, target=3).relevance
    expected = lrpfx.Explainer(twin, "epsilon", frontend="fx")(x, target=3).relevance
    results = [compare("bitsandbytes Linear4bit nf4 = dequantized twin", got, expected.cpu(), 1e-6)]
    eight = nn.Sequential(bnb.nn.Linear8bitLt(64, 10, has_fp16_weights=False)).to(device)
    try:
        lrpfx.Explainer(eight, "epsilon", frontend="fx")(x)
        refused = False
    except UnsupportedOpError as exc:
        refused = "'0' (Linear8bitLt)" in str(exc)
    print(f"{'ok  ' if refused else 'FAIL'} bitsandbytes Linear8bitLt refused by name", flush=True)
    return results + [refused]


def check_hqq(device: str) -> list:
    """An MLP of HQQLinear layers on ``device`` against the float twin whose weights are their dequantized weights
    (PyTorch backend; ATen backend too where hqq_aten is built); a layer of hqq's torchao int4 inference backend
    (CUDA only) must be refused by name."""
    try:
        from hqq.core import quantize as hqq_quantize
    except Exception as exc:  # not installed
        print(f"skip hqq: {type(exc).__name__}: {exc}", flush=True)
        return []
    import copy

    import lrpfx
    from lrpfx.errors import UnsupportedOpError
    from torch import nn
    HQQLinear, BaseQuantizeConfig, HQQBackend = (hqq_quantize.HQQLinear, hqq_quantize.BaseQuantizeConfig,
                                                 hqq_quantize.HQQBackend)

    def quantized_and_twin(axis: int):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 16)).to(device).eval()
        quantized, twin = copy.deepcopy(model), copy.deepcopy(model)
        for i in (0, 2):
            quantized[i] = HQQLinear(copy.deepcopy(model[i]), BaseQuantizeConfig(nbits=4, group_size=64, axis=axis),
                                     compute_dtype=torch.float32, device=device)
            twin[i].weight = nn.Parameter(quantized[i].dequantize())
        return quantized, twin

    results = []
    x = torch.randn(8, 64, device=device)
    backends = [("PYTORCH", 1)] + ([("ATEN_BACKPROP", 0)] if hqq_quantize.hqq_aten_is_available else [])
    previous = HQQLinear.backend
    for backend, axis in backends:
        HQQLinear.set_backend(getattr(HQQBackend, backend))
        try:
            quantized, twin = quantized_and_twin(axis)
            for frontend in ("fx", "export"):
                got = lrpfx.Explainer(quantized, "epsilon", frontend=frontend)(x, target=3)
                expected = lrpfx.Explainer(twin, "epsilon", frontend=frontend)(x, target=3).relevance
                results.append(compare(f"hqq HQQLinear 4-bit {backend} {frontend} = dequantized twin",
                                       got.relevance, expected.cpu(), 1e-6))
                results.append(compare(f"hqq HQQLinear 4-bit {backend} {frontend}: output = the layer's own",
                                       got.output, quantized(x).detach().cpu(), 1e-5))
        finally:
            HQQLinear.set_backend(previous)
    if not device.startswith("cuda"):
        print("skip hqq torchao int4 backend: CUDA only", flush=True)
        return results
    from hqq.backends.torchao import patch_hqq_to_aoint4
    layer = HQQLinear(nn.Linear(64, 16), BaseQuantizeConfig(nbits=4, group_size=64), compute_dtype=torch.bfloat16,
                      device=device)
    model = nn.Sequential(patch_hqq_to_aoint4(layer, None))
    try:
        lrpfx.Explainer(model, "epsilon", frontend="fx")(x.bfloat16())
        refused = False
    except UnsupportedOpError as exc:
        refused = "'0' (HQQLinearTorchWeightOnlynt4)" in str(exc) and "inference backend" in str(exc)
    print(f"{'ok  ' if refused else 'FAIL'} hqq torchao int4 backend layer refused by name", flush=True)
    return results + [refused]


if __name__ == "__main__":
    sys.exit(main())
