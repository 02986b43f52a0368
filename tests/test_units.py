"""Relevance per attention head and per hidden neuron (lrpfx.unit_relevance): equal to the relevance the split,
step-by-step program records at the heads' outputs and the down projections' inputs, while the run that reports
it keeps the attention fused."""
import pytest
import torch
from torch import nn

import lrpfx

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")


def llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=64, num_key_value_heads=2)
    return transformers.LlamaForCausalLM(config).double().eval()


def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, num_labels=3)
    return transformers.BertForSequenceClassification(config).double().eval()


IDS = {"input_ids": torch.randint(1, 50, (2, 6), generator=torch.Generator().manual_seed(1))}


def split_reference(explainer, target):
    """Relevance at every node from the split program: the heads' ``A V`` values and the MLPs' hidden values."""
    e = explainer(IDS, target=target, intermediate=True)
    program = explainer.program(IDS, intermediate=True)
    return e.intermediate, program


@pytest.mark.parametrize("build, heads, hidden", [(llama, 4, 64), (bert, 4, 64)], ids=["llama", "bert"])
def test_heads_and_neurons_equal_the_split_programs_relevance(build, heads, hidden):
    model = build()
    explainer = lrpfx.Explainer(model, "attnlrp")
    units = lrpfx.unit_relevance(explainer, IDS, target=2)
    assert len(units.heads) == 2 and len(units.neurons) >= 2
    reference = explainer(IDS, target=2, intermediate=True).intermediate
    av = [r for key, r in reference.items()  # the products [B, H, T, D = 8]: A V (Q Kᵀ is [B, H, T, T = 6])
          if key.startswith(("matmul", "bmm")) and r.dim() == 4 and r.shape[1] == heads and r.shape[-1] == 8]
    assert len(av) == len(units.heads)
    for (name, per_head), r in zip(units.heads.items(), av):
        assert per_head.shape == (2, heads), name
        torch.testing.assert_close(per_head, r.sum((-1, -2)), rtol=1e-10, atol=1e-14)
    for name, per_neuron in units.neurons.items():
        if per_neuron.shape[-1] == hidden:  # an MLP's down projection: its input is [B, T, hidden]
            candidates = [r.sum(1) for r in reference.values() if r.dim() == 3 and r.shape[-1] == hidden]
            assert any(torch.allclose(per_neuron, c, rtol=1e-10, atol=1e-14) for c in candidates), name
    # the run that reports units keeps the attention as one step; the split program does not
    unit_code = next(e.program.code for k, e in explainer._cache.items() if "UnitPlan" in repr(k))
    assert "attention_per_value" in unit_code
    assert "attention_per_value" not in explainer.program(IDS, intermediate=True).code
    torch.testing.assert_close(units.explanation.relevance, explainer(IDS, target=2).relevance, rtol=1e-12, atol=0)


def test_heads_of_a_layer_sum_to_the_output_projections_input_relevance_and_targets_stack():
    explainer = lrpfx.Explainer(llama(), "attnlrp")
    several = lrpfx.unit_relevance(explainer, IDS, targets=[3, 7])
    per_token = lrpfx.unit_relevance(explainer, IDS, target=7, per_token=True)
    for k, target in enumerate((3, 7)):
        one = lrpfx.unit_relevance(explainer, IDS, target=target)
        for name in one.heads:
            torch.testing.assert_close(several.heads[name][:, k], one.heads[name], rtol=1e-10, atol=1e-14)
        for name in one.neurons:
            torch.testing.assert_close(several.neurons[name][:, k], one.neurons[name], rtol=1e-10, atol=1e-14)
    for name, r in per_token.heads.items():
        assert r.shape == (2, 4, 6)
        torch.testing.assert_close(r.sum(-1), lrpfx.unit_relevance(explainer, IDS, target=7).heads[name])


def test_a_model_without_heads_or_hidden_units_is_told_so():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3), nn.Flatten()).eval()
    with pytest.raises(lrpfx.InputError, match="no attention"):
        lrpfx.unit_relevance(lrpfx.Explainer(model, "epsilon"), torch.randn(2, 3, 8, 8), target=0)
