"""Transformers through the torch.export front-end: Hugging Face LLaMA, Qwen2, GPT-2, BERT, ViT and
torchvision's ViT and Swin, with random weights from tiny configs, in float64.

Checked: the program's forward equals the model's; CP-LRP with zero_bias conserves the target logit down to the
embedding output (AttnLRP does not: its softmax rule is a linearisation that keeps a share, see the README);
padded batches explain each sequence as if it ran alone; several targets equal single calls; module paths name
the nodes; bad inputs get clear errors.
"""
import copy

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.composites import CPLRP, AttnLRP
from lrpfx.rules import Epsilon

transformers = pytest.importorskip("transformers")
torchvision = pytest.importorskip("torchvision")
pytestmark = pytest.mark.usefixtures("one_thread")

B, T, VOCAB = 2, 6, 50
CONSERVING = CPLRP(epsilon=0.0, zero_bias=True)


def _hf(cls, config):
    torch.manual_seed(0)
    return cls(config).double().eval()


def llama():
    return _hf(transformers.LlamaForCausalLM, transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB))


def qwen2():
    return _hf(transformers.Qwen2ForCausalLM, transformers.Qwen2Config(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB))


def gpt2():
    return _hf(transformers.GPT2LMHeadModel, transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0))


def bert():
    return _hf(transformers.BertForSequenceClassification, transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
        num_labels=3))


def hf_vit():
    return _hf(transformers.ViTForImageClassification, transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=16,
        patch_size=8, num_labels=3))


def tv_vit():
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=2, num_heads=4,
                                                 hidden_dim=32, mlp_dim=64, num_classes=3)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts the head at zero: every logit would be 0
    nn.init.normal_(model.class_token)  # ... and the class token: a zero summand can take no relevance share
    return model.double().eval()


def tv_swin():
    torch.manual_seed(0)
    return torchvision.models.swin_transformer.SwinTransformer(
        patch_size=[4, 4], embed_dim=16, depths=[2, 2], num_heads=[2, 2], window_size=[2, 2],
        num_classes=3).double().eval()


def token_inputs(left_padding=False):
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if left_padding:
        mask[1, :2] = 0
    else:
        mask[1, -2:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def pixels(size=16):
    return torch.randn(B, 3, size, size, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


TEXT = {"llama": (llama, True), "qwen2": (qwen2, True), "gpt2": (gpt2, True), "bert": (bert, False)}
VISION = {"hf-vit": (hf_vit, 16), "torchvision-vit_b_16": (tv_vit, 16), "torchvision-swin_t": (tv_swin, 32)}


def model_logits(model, x):
    with torch.no_grad():
        out = model(**x) if isinstance(x, dict) else model(x)
    logits = getattr(out, "logits", out)
    return logits[:, -1] if logits.dim() == 3 else logits


def target_logit(e, target=None):
    target = e.output.argmax(1) if target is None else target
    return e.output.gather(1, target[:, None]).squeeze(1)


@pytest.mark.parametrize("name", list(TEXT))
def test_text_models_forward_and_conserve_with_cp_lrp(name):
    build, left = TEXT[name]
    model = build()
    x = token_inputs(left_padding=left)
    e = lrpfx.Explainer(model, CONSERVING)(x)
    torch.testing.assert_close(e.output, model_logits(model, x), rtol=1e-10, atol=1e-12)
    assert e.relevance.shape == (B, T, 32)
    assert e.tokens.shape == (B, T)
    assert e.inputs["attention_mask"] is None
    torch.testing.assert_close(e.tokens.sum(1), target_logit(e), rtol=1e-6, atol=1e-12)
    padded = x["attention_mask"] == 0
    assert e.tokens[padded].abs().max() < 1e-12  # masked tokens get nothing


@pytest.mark.parametrize("name", list(TEXT))
def test_text_models_attnlrp_is_finite_and_differs_from_cp_lrp(name):
    build, left = TEXT[name]
    model = build()
    x = token_inputs(left_padding=left)
    attn = lrpfx.Explainer(model, AttnLRP())(x)
    cp = lrpfx.Explainer(model, CPLRP())(x)
    assert torch.isfinite(attn.relevance).all()
    assert not torch.allclose(attn.tokens, cp.tokens)  # relevance also flows through queries and keys
    torch.testing.assert_close(attn.output, cp.output)


@pytest.mark.parametrize("name", list(VISION))
def test_vision_transformers_forward_and_conserve_up_to_the_class_token(name):
    build, size = VISION[name]
    model = build()
    x = pixels(size)
    e = lrpfx.Explainer(model, CONSERVING)(x, intermediate=True)
    torch.testing.assert_close(e.output, model_logits(model, x), rtol=1e-10, atol=1e-12)
    assert e.relevance.shape == x.shape
    total = e.relevance.sum((1, 2, 3))
    logit = target_logit(e)
    if "swin" in name:  # no class token: conservation down to the pixels (adaptive pooling keeps eps=1e-6)
        torch.testing.assert_close(total, logit, rtol=1e-4, atol=1e-12)
    else:
        # the class token is a learned constant concatenated in front of the patches: relevance that reaches
        # it stays there, and the patch tokens plus the class token carry the logit
        cat = next(r for k, r in e.intermediate.items() if k.startswith("cat"))
        torch.testing.assert_close(cat.sum((1, 2)), logit, rtol=1e-6, atol=1e-12)
        torch.testing.assert_close(total + cat[:, 0].sum(-1), logit, rtol=1e-6, atol=1e-12)
    attn = lrpfx.Explainer(model, "attnlrp")(x)
    assert torch.isfinite(attn.relevance).all()


def test_padding_explains_each_sequence_as_if_it_ran_alone():
    model = bert()
    full = token_inputs()  # sample 1 is right-padded by two tokens
    batch = lrpfx.Explainer(model, "attnlrp")(full, target=torch.tensor([0, 2]))
    alone = lrpfx.Explainer(model, "attnlrp")({"input_ids": full["input_ids"][1:, :T - 2]}, target=2)
    torch.testing.assert_close(batch.relevance[1, :T - 2], alone.relevance[0], rtol=1e-9, atol=1e-12)
    assert batch.relevance[1, T - 2:].abs().max() == 0


def test_left_padding_with_positions_explains_each_sequence_as_if_it_ran_alone():
    model = llama()
    x = token_inputs(left_padding=True)  # sample 1 is left-padded by two tokens
    x["position_ids"] = (x["attention_mask"].cumsum(1) - 1).clamp(min=0)
    batch = lrpfx.Explainer(model, "attnlrp")(x, target=torch.tensor([3, 7]))
    alone = lrpfx.Explainer(model, "attnlrp")({"input_ids": x["input_ids"][1:, 2:]}, target=7)
    torch.testing.assert_close(batch.relevance[1, 2:], alone.relevance[0], rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(batch.output[1], alone.output[0])


def test_several_targets_equal_single_calls_and_module_paths_name_nodes():
    model = llama()
    x = token_inputs(left_padding=True)
    rule = lrpfx.Composite(linear=Epsilon(1e-6), by_type={"matmul": "matmul-uniform"},
                           by_name={"model.layers.*.mlp.down_proj": Epsilon(0.25)}, label="custom")
    ex = lrpfx.Explainer(model, rule)
    many = ex(x, targets=[3, 5], intermediate=True)
    for k, t in enumerate((3, 5)):
        one = ex(x, target=t)
        torch.testing.assert_close(many.relevance[:, k], one.relevance, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(many.tokens[:, k], one.tokens, rtol=1e-10, atol=1e-12)
    assert "model.layers.1.mlp.down_proj" in many.intermediate
    rows = {r.module: r for r in ex.program(x).rule_table() if r.module}
    assert rows["model.layers.0.mlp.down_proj"].rule == "Epsilon(eps=0.25, zero_bias=False)"
    assert rows["model.layers.0.mlp.down_proj"].chosen_by.startswith("by_name")
    assert rows["model.layers.0.self_attn.q_proj"].rule == "Epsilon(eps=1e-06, zero_bias=False)"


def test_the_model_is_not_mutated_and_training_flags_come_back():
    model = gpt2().train()
    before = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    lrpfx.Explainer(model, "attnlrp")(token_inputs(left_padding=True))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [m.training for m in model.modules()] == flags


def test_gpt2_spelled_out_gelu_is_one_activation_step():
    program = lrpfx.export(gpt2(), token_inputs(), "attnlrp")
    activations = [r for r in program.rule_table() if r.kind == "activation"]
    assert [r.module for r in activations] == ["transformer.h.0.mlp.act", "transformer.h.1.mlp.act"]
    assert all(r.rule == "Pass()" for r in activations)
    assert not any(r.kind == "mul" and "mlp" in r.module for r in program.rule_table())


def test_output_selector_picks_the_tensor_to_explain():
    model = llama()
    x = token_inputs()
    first = lrpfx.Explainer(model, "attnlrp", output=lambda out: out.logits[:, 0])(x, target=4)
    with torch.no_grad():
        torch.testing.assert_close(first.output, model(**x).logits[:, 0])
    # the first position attends to itself only: all relevance sits on token 0
    assert first.tokens[:, 1:].abs().max() == 0


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        if x.sum() > 0:  # a Python branch on tensor values: neither fx nor export can record it
            x = x * 2
        return self.fc(x)


def test_a_model_that_cannot_be_exported_gets_an_error_naming_the_line():
    with pytest.raises(lrpfx.TraceError) as info:
        lrpfx.explain(DataDependent(), torch.randn(2, 4), frontend="export")
    message = str(info.value)
    assert "torch.export" in message and "if x.sum() > 0" in message and "test_transformers.py" in message
    with pytest.raises(lrpfx.TraceError) as info:  # auto: fx fails, export fails, both are reported
        lrpfx.explain(DataDependent(), torch.randn(2, 4))
    assert "torch.fx" in str(info.value) and "torch.export failed as well" in str(info.value)


def test_bad_transformer_inputs_get_clear_errors():
    model = bert()
    with pytest.raises(lrpfx.InputError, match="dict"):
        lrpfx.Explainer(model, "attnlrp", frontend="fx")(token_inputs())
    with pytest.raises(lrpfx.InputError, match="frontend must be one of"):
        lrpfx.Explainer(model, "attnlrp", frontend="jit")
    with pytest.raises(lrpfx.InputError, match="no tensors"):
        lrpfx.Explainer(model, "attnlrp")({"input_ids": None})
    with pytest.raises(lrpfx.OutputError, match="output="):
        lrpfx.Explainer(model.bert, "attnlrp")(token_inputs())  # BertModel: hidden states, no logits
    with pytest.raises(lrpfx.InputError, match="float input"):
        _ = lrpfx.Explainer(tv_vit(), "attnlrp")(pixels()).tokens


@pytest.mark.slow
def test_compiled_transformer_program_equals_eager():
    model = llama()
    x = token_inputs(left_padding=True)
    eager = lrpfx.Explainer(model, "attnlrp")(x)
    compiled = lrpfx.Explainer(model, "attnlrp", compile=True)(x)
    # LLaMA's RMSNorm computes in float32 even in a float64 model; compiled kernels round those parts differently
    scale = eager.relevance.abs().max().item()
    torch.testing.assert_close(compiled.relevance, eager.relevance, rtol=1e-5, atol=1e-6 * scale)


def test_sentence_example_prints_a_token_heatmap(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "explain_sentence.py"
    spec = importlib.util.spec_from_file_location("explain_sentence", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    example.main(["--steps", "10", "--sentence", "the music was great"])
    printed = capsys.readouterr().out
    assert "\x1b[48;2;" in printed and "\x1b[0m" in printed  # coloured backgrounds, reset
    for word in ("great", "music"):
        assert word in printed


def test_inputs_embeds_get_the_same_relevance_as_the_token_ids():
    model = llama()
    x = token_inputs(left_padding=True)
    by_ids = lrpfx.Explainer(model, "attnlrp")(x, target=torch.tensor([1, 2]))
    with torch.no_grad():
        embeds = model.get_input_embeddings()(x["input_ids"])
    by_embeds = lrpfx.Explainer(model, "attnlrp")({"inputs_embeds": embeds, "attention_mask": x["attention_mask"]},
                                                  target=torch.tensor([1, 2]))
    torch.testing.assert_close(by_embeds.relevance, by_ids.relevance, rtol=1e-10, atol=1e-12)
    assert by_embeds.token_ids is None and by_ids.token_ids is not None


def test_one_exported_program_serves_other_batch_sizes_and_lengths():
    model = gpt2()
    ex = lrpfx.Explainer(model, "attnlrp")
    ex(token_inputs(left_padding=True))
    ids = torch.randint(1, VOCAB, (3, 9), generator=torch.Generator().manual_seed(5))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[0, :3] = 0
    longer = ex({"input_ids": ids, "attention_mask": mask})
    assert len(ex._cache) == 1  # no second export
    fresh = lrpfx.Explainer(model, "attnlrp")({"input_ids": ids, "attention_mask": mask})
    torch.testing.assert_close(longer.relevance, fresh.relevance, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(longer.output, model_logits(model, {"input_ids": ids, "attention_mask": mask}))
