"""An answer never mixes models: after the user changes the model, every cached program follows it.

Each case builds an Explainer (or an adapter), explains once, changes the model the way a user would, and compares
the next answer — output and relevance — with a fresh Explainer's on the changed model (float64, exact).
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx import rebind

pytestmark = pytest.mark.usefixtures("one_thread")


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 5 * 5, 6), nn.ReLU(), nn.Linear(6, 3)).double().eval()


def randomise_bn(net):
    bn = net[1]
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)


def replace_parameter(net):
    net[4].weight = nn.Parameter(torch.randn_like(net[4].weight))


def replace_bias(net):
    net[6].bias = nn.Parameter(torch.randn_like(net[6].bias))


def replace_buffer(net):
    net[1].running_mean = torch.randn_like(net[1].running_mean)


def swap_module_same_class(net):
    net[6] = nn.Linear(6, 3).double()


def swap_module_other_class(net):
    net[5] = nn.Tanh()


def change_configuration(net):
    net[1].eps = 0.5


def add_forward_hook(net):
    net[4].register_forward_hook(lambda module, args, out: out * 2.0)


def load_state_dict_assign(net):
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    state["1.running_var"] = state["1.running_var"].abs() + 0.5
    net.load_state_dict(state, assign=True)


def edit_in_place(net):
    with torch.no_grad():
        net[0].weight.mul_(-2.0)


CHANGES = [replace_parameter, replace_bias, replace_buffer, swap_module_same_class, swap_module_other_class,
           change_configuration, add_forward_hook, load_state_dict_assign, edit_in_place]


def assert_same(got, fresh):
    torch.testing.assert_close(got.output, fresh.output, rtol=0, atol=1e-12)
    torch.testing.assert_close(got.relevance, fresh.relevance, rtol=0, atol=1e-12)


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("change", CHANGES, ids=lambda f: f.__name__)
def test_explainer_follows_the_model(change, frontend):
    net = small_cnn()
    randomise_bn(net)
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    explainer = lrpfx.Explainer(net, "epsilon", frontend=frontend)
    before = explainer(x, target=1)
    change(net)
    after = explainer(x, target=1)
    fresh = lrpfx.Explainer(net, "epsilon", frontend=frontend)(x, target=1)
    assert_same(after, fresh)
    assert not torch.allclose(after.relevance, before.relevance)  # the change mattered


def test_replaced_parameters_rebind_the_program_without_a_build():
    net = small_cnn()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    explainer = lrpfx.Explainer(net, "epsilon")
    program = explainer.program(x)
    replace_parameter(net)
    assert explainer.program(x) is program  # pointed at the new weight, not built again
    assert_same(explainer(x, target=0), lrpfx.Explainer(net, "epsilon")(x, target=0))
    swap_module_same_class(net)
    assert explainer.program(x) is not program  # another module object: built again


def test_dtype_change_rebuilds():
    net = small_cnn().float()
    explainer = lrpfx.Explainer(net, "epsilon")
    explainer(torch.randn(2, 2, 5, 5), target=0)
    net.double()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    after = explainer(x, target=0)
    assert after.relevance.dtype == torch.float64
    assert_same(after, lrpfx.Explainer(net, "epsilon")(x, target=0))


def test_transformer_follows_a_swapped_projection():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).double().eval()
    ids = {"input_ids": torch.randint(0, 50, (1, 6))}
    explainer = lrpfx.Explainer(model, "attnlrp", output=lambda out: out.logits[:, -1])
    explainer(ids)
    model.model.layers[0].mlp.down_proj.weight = nn.Parameter(torch.randn_like(model.model.layers[0].mlp.down_proj.weight))
    fresh = lrpfx.Explainer(model, "attnlrp", output=lambda out: out.logits[:, -1])(ids)
    assert_same(explainer(ids), fresh)


def test_conditions_follow_the_model():
    net = small_cnn()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    conditions = [{"y": 1, "4": [2]}, {"y": 1, "4": [3]}]
    explainer = lrpfx.Explainer(net, "epsilon")
    explainer(x, conditions=conditions)
    replace_parameter(net)
    swap_module_other_class(net)
    fresh = lrpfx.Explainer(net, "epsilon")(x, conditions=conditions)
    assert_same(explainer(x, conditions=conditions), fresh)


def test_captum_adapter_follows_the_model():
    captum_lrp = pytest.importorskip("lrpfx.captum")
    pytest.importorskip("captum")
    from captum.attr._utils.lrp_rules import EpsilonRule
    net = small_cnn()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    adapter = captum_lrp.LRP(net)
    adapter.attribute(x, target=1)
    replace_parameter(net)
    swap_module_same_class(net)
    net[4].rule = EpsilonRule(0.5)  # a rule attribute set after the adapter was made counts too
    torch.testing.assert_close(adapter.attribute(x, target=1), captum_lrp.LRP(net).attribute(x, target=1),
                               rtol=0, atol=1e-12)


def test_quantus_adapter_follows_the_model():
    quantus = pytest.importorskip("lrpfx.quantus")
    net = small_cnn()
    x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    y = torch.tensor([0, 2])
    first = quantus.explain_func(net, x.numpy(), y.numpy(), rule="epsilon")
    other = copy.deepcopy(net)
    swap_module_other_class(other)
    replace_parameter(other)
    got = quantus.explain_func(other, x.numpy(), y.numpy(), rule="epsilon")
    fresh = lrpfx.Explainer(other, "epsilon")(x, target=y).relevance.sum(1, keepdim=True).numpy()  # channels summed
    assert abs(got - fresh).max() < 1e-12
    assert abs(got - first).max() > 1e-6


def test_model_state_sees_what_programs_hold():
    net = small_cnn()
    state = rebind.model_state(net)
    assert state.same(rebind.model_state(net))
    replace_parameter(net)
    changed = rebind.model_state(net)
    assert not changed.same(state) and changed.same_modules(state)
    net.scale = torch.ones(1)  # a plain tensor attribute: held by identity, refused for program sharing
    assert not rebind.model_state(net).same_modules(changed)
    assert rebind.structure_key(net) is None
