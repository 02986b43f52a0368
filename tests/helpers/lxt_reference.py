"""AttnLRP reference relevance computed by LXT 2.1 in efficient mode (``lxt.efficient.monkey_patch``).

Run with the interpreter from ``tests/helpers/lxt_env.py`` (transformers 4.52.4 + lxt 2.1), never with the main
one:

    python tests/helpers/lxt_reference.py IN.pt OUT.pt

IN.pt (``torch.save`` of a dict):
  family          "llama" | "qwen2" | "gpt2" | "bert" | "qwen3" | "gemma3"
  config          ``config.to_dict()`` of a transformers 5.x config (keys 4.52.4 does not know are dropped)
  state_dict      the model's weights (cast to ``dtype``)
  input_ids       LongTensor [B, T]
  attention_mask  [B, T] or None
  token_type_ids  optional [B, T] (BERT; zeros when absent, as in both transformers versions)
  target          LongTensor [B] (class / vocabulary index) or None for the argmax
  dtype           "float64" (default) or "float32"
  attn_implementation  optional, "sdpa" (default) or "eager"; LXT wraps both (see below)

OUT.pt: {"relevance": E * dE [B, T, H], "output": explained output [B, C], "target": [B],
         "selected": the target logits [B], "dropped_config_keys": [...], "missing_keys": [...],
         "unexpected_keys": [...]}
E is the word-embedding output fed as ``inputs_embeds``; what is explained is ``logits[:, -1, :]`` for causal LMs
and ``logits`` for BERT sequence classification; the backward starts from the sum of the selected logits, so the
initial relevance of each sample is its target logit (LXT's convention).

IN.pt may also hold a list of such dicts; OUT.pt is then the list of results, a failed case as {"error": ...}.

Why sdpa by default: in float64 the 4.52.4 eager attention of LLaMA/Qwen2 runs its softmax in float32, where the
float64 mask value becomes -inf, so the fully masked rows of left padding give NaN that leaks into every token;
sdpa stays in float64 (and is 5.x's default). Eager and sdpa relevances agree to 3e-7 (LLaMA, float32 softmax)
and 1e-15 (GPT-2) without padding. Note that LlamaRMSNorm, original and LXT-patched, computes in float32, so
float64 LLaMA/Qwen2 results are float32-accurate at the norms in both transformers versions.

Nothing here imports lrpfx.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import sys
import traceback
import types

import torch

# family -> (modeling module, config class, model class, explained output)
FAMILIES = {
    "llama": ("transformers.models.llama.modeling_llama", "LlamaConfig", "LlamaForCausalLM", "last"),
    "qwen2": ("transformers.models.qwen2.modeling_qwen2", "Qwen2Config", "Qwen2ForCausalLM", "last"),
    "gpt2": ("transformers.models.gpt2.modeling_gpt2", "GPT2Config", "GPT2LMHeadModel", "last"),
    "bert": ("transformers.models.bert.modeling_bert", "BertConfig", "BertForSequenceClassification", "all"),
    "qwen3": ("transformers.models.qwen3.modeling_qwen3", "Qwen3Config", "Qwen3ForCausalLM", "last"),
    "gemma3": ("transformers.models.gemma3.modeling_gemma3", "Gemma3TextConfig", "Gemma3ForCausalLM", "last"),
}

_PATCHED: set = set()

# Keys of a 5.x ``to_dict()`` that are metadata, not architecture.
_META_KEYS = ("transformers_version", "dtype", "torch_dtype", "architectures", "_name_or_path")


def _ensure_torchvision():
    """lxt.efficient.models imports torchvision for its ViT patch; we never use it, so stub it if it is absent."""
    import transformers  # noqa: F401  (first, so it records torchvision as unavailable, not as the stub)

    try:
        import torchvision.models.vision_transformer  # noqa: F401
    except ImportError:
        stubs = {}
        for name in ("torchvision", "torchvision.models", "torchvision.models.vision_transformer"):
            stubs[name] = types.ModuleType(name)
            stubs[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
        stubs["torchvision"].models = stubs["torchvision.models"]
        stubs["torchvision.models"].vision_transformer = stubs["torchvision.models.vision_transformer"]
        stubs["torchvision.models.vision_transformer"].nn = torch.nn
        sys.modules.update(stubs)


def build_config(config_cls, raw: dict, attn: str):
    """A 4.52.4 config from a 5.x ``to_dict()``; returns (config, dropped keys)."""
    raw = {k: v for k, v in raw.items() if k not in _META_KEYS}
    # 5.x folds rope_theta/rope_scaling into rope_parameters
    rope = raw.pop("rope_parameters", None)
    if rope:
        raw.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
        if rope.get("rope_type", "default") != "default":
            raw["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    known = set(config_cls().to_dict()) | {"rope_scaling", "head_dim", "layer_types"}
    dropped = sorted(k for k in raw if k not in known)
    config = config_cls(**{k: v for k, v in raw.items() if k in known}, attn_implementation=attn)
    return config, dropped


def relevance(model, input_ids, attention_mask, target, explain: str, token_type_ids=None):
    """LXT's efficient recipe: relevance = E * dE after backpropagating the selected logits of a patched model."""
    embeds = model.get_input_embeddings()(input_ids).detach().requires_grad_(True)
    kwargs = {} if explain == "all" else {"use_cache": False}  # BERT's forward has no use_cache
    if token_type_ids is not None:
        kwargs["token_type_ids"] = token_type_ids
    logits = model(inputs_embeds=embeds, attention_mask=attention_mask, **kwargs).logits
    output = logits[:, -1, :] if explain == "last" else logits
    if target is None:
        target = output.argmax(-1)
    selected = output.gather(1, target[:, None]).squeeze(1)
    selected.sum().backward()
    return (embeds * embeds.grad).detach(), output.detach(), target, selected.detach()


def load_model(family: str, raw_config: dict, state_dict: dict, dtype: torch.dtype, attn: str):
    """Patch the family's modeling module with LXT's AttnLRP map, then build the model and load the weights."""
    _ensure_torchvision()
    from lxt.efficient import monkey_patch

    module_name, config_name, model_name, explain = FAMILIES[family]
    module = importlib.import_module(module_name)
    # Before building: for BERT LXT swaps the whole modeling module's classes for its own copy.
    # Once per process: a second call only warns (LXT refuses to wrap twice).
    if module_name not in _PATCHED:
        monkey_patch(module)
        _PATCHED.add(module_name)
    config_cls = getattr(importlib.import_module(module_name.replace("modeling_", "configuration_")), config_name)
    config, dropped = build_config(config_cls, raw_config, attn)
    model = getattr(module, model_name)(config).to(dtype).eval()
    model.requires_grad_(False)  # only the input gradient is needed
    result = model.load_state_dict(state_dict, strict=False)
    info = {"dropped_config_keys": dropped, "missing_keys": list(result.missing_keys),
            "unexpected_keys": list(result.unexpected_keys)}
    return model, explain, info


def run_case(spec: dict) -> dict:
    family = spec["family"]
    if family not in FAMILIES:
        raise ValueError(f"unsupported family {family!r}; LXT efficient families here: {sorted(FAMILIES)}")
    dtype = getattr(torch, spec.get("dtype") or "float64")
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in spec["state_dict"].items()}
    model, explain, info = load_model(family, spec["config"], state, dtype,
                                      spec.get("attn_implementation") or "sdpa")
    for key in ("dropped_config_keys", "missing_keys", "unexpected_keys"):
        if info[key]:
            print(f"lxt_reference: {family}: {key}: {info[key]}", file=sys.stderr)
    # strict after reporting: a weight that did not load would silently compare a different model
    if info["missing_keys"] or info["unexpected_keys"]:
        raise RuntimeError(f"{family}: state dict does not match the transformers 4.52.4 model: {info}")
    rel, output, target, selected = relevance(model, spec["input_ids"], spec.get("attention_mask"),
                                              spec.get("target"), explain, spec.get("token_type_ids"))
    return {"relevance": rel, "output": output, "target": target, "selected": selected, **info}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    spec = torch.load(argv[0], weights_only=False)
    if isinstance(spec, dict):
        torch.save(run_case(spec), argv[1])
        return 0
    # A list of cases shares one interpreter start (importing transformers takes ~15 s); a failing case
    # becomes {"error": traceback} so the others still report.
    results = []
    for case in spec:
        try:
            results.append(run_case(case))
        except Exception:
            results.append({"error": traceback.format_exc()})
    torch.save(results, argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
