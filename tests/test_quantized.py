"""Models quantized with torchao (weight-only int8, int4 on CPU): explained as the linear layers of their
dequantized weights, without dequantizing the model up front. The reference is the twin model whose Linear
weights are the dequantized weights: both run the same float ops, so the relevances are equal exactly."""
import copy

import pytest
import torch
from torch import nn

import lrpfx
from tests.helpers.twins import assert_llm_relevance_equals_twin
from lrpfx.errors import UnsupportedOpError
from lrpfx.frontend.quantized import dequantized, is_quantized

torchao = pytest.importorskip("torchao")
from torchao.quantization import (Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig,  # noqa: E402
                                  IntxWeightOnlyConfig, quantize_)
from torchao.quantization.granularity import PerGroup  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]

CONFIGS = {"int8": Int8WeightOnlyConfig, "int4": lambda: IntxWeightOnlyConfig(torch.int4, PerGroup(8))}


def quantized_and_twin(model: nn.Module, config, filter_fn=None):
    """A quantized copy of ``model`` and its dequantized twin (:func:`twin_of`)."""
    quantized = copy.deepcopy(model)
    quantize_(quantized, config, filter_fn=filter_fn)
    return quantized, twin_of(model, quantized)


def twin_of(model: nn.Module, quantized: nn.Module) -> nn.Module:
    """A float copy of ``model`` whose weights, where ``quantized`` has quantized ones, are those dequantized."""
    twin = copy.deepcopy(model)
    for name, module in quantized.named_modules():
        if is_quantized(getattr(module, "weight", None)):
            twin.get_submodule(name).weight = nn.Parameter(module.weight.dequantize())
    assert any(is_quantized(p) for p in quantized.parameters())
    return twin


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 5)).eval()


def cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 16),
                         nn.ReLU(), nn.Linear(16, 5)).eval()


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("model, shape, rule", [(mlp, (3, 16), "epsilon"), (mlp, (3, 16), "gamma"),
                                                (cnn, (2, 3, 8, 8), "epsilon-plus-flat")],
                         ids=["mlp-epsilon", "mlp-gamma", "cnn-epsilon-plus-flat"])
def test_relevance_equals_the_dequantized_twins(model, shape, rule, config, frontend):
    quantized, twin = quantized_and_twin(model(), CONFIGS[config]())
    x = torch.randn(shape)
    got = lrpfx.Explainer(quantized, rule, frontend=frontend)(x, target=2)
    expected = lrpfx.Explainer(twin, rule, frontend=frontend)(x, target=2)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=0, atol=0)
    torch.testing.assert_close(got.output, expected.output, rtol=0, atol=0)
    # the dequantized weights are the quantized model's: its own kernels differ by rounding only
    torch.testing.assert_close(got.output, quantized(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("form", ["per-value", "relevance"])
@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_the_program_dequantizes_one_layer_where_it_is_read(frontend, form):
    quantized, twin = quantized_and_twin(mlp(), Int8WeightOnlyConfig())
    x = torch.randn(3, 16)
    program = lrpfx.build_program(lrpfx.graph_of(quantized, x, frontend=frontend), "zero", form=form)
    calls = [n for n in program.graph_module.graph.nodes if n.target is dequantized]
    # once for the forward's linear, once for its relevance step: each dense weight has one reader, so it is
    # freed right after (the quantized weights are what the program holds)
    assert len(calls) == 2 * 3 and all(len(n.users) == 1 for n in calls)
    held = [t for t in program.graph_module.parameters()] + [t for t in program.graph_module.buffers()]
    assert not any(t.shape == (32, 16) and not is_quantized(t) for t in held)
    reference = lrpfx.build_program(lrpfx.graph_of(twin, x, frontend=frontend), "zero", form=form)
    out, (r,) = program(x, target=1)
    expected_out, (expected,) = reference(x, target=1)
    torch.testing.assert_close(r, expected, rtol=0, atol=0)
    # LRP-0 through linear layers and ReLUs is gradient × input of the dequantized twin
    x_ = x.clone().requires_grad_(True)
    twin(x_)[:, 1].sum().backward()
    torch.testing.assert_close(r, x_.grad * x, rtol=1e-5, atol=1e-6)


def test_the_users_model_is_not_changed():
    quantized, _ = quantized_and_twin(mlp(), Int8WeightOnlyConfig())
    before = {name: (p, type(p)) for name, p in quantized.named_parameters()}
    lrpfx.Explainer(quantized, "epsilon")(torch.randn(2, 16))
    lrpfx.Explainer(quantized, "epsilon", frontend="export")(torch.randn(2, 16))
    after = {name: (p, type(p)) for name, p in quantized.named_parameters()}
    assert all(after[k][0] is v[0] and after[k][1] is v[1] for k, v in before.items())
    assert [type(m) for m in quantized.modules()] == [type(m) for m in mlp().modules()]


@pytest.mark.slow
def test_tiny_llama_int8_attention_and_int4_mlp_equal_the_dequantized_twin():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = transformers.LlamaForCausalLM(config).eval()
    quantized = copy.deepcopy(model)
    quantize_(quantized, Int8WeightOnlyConfig(), lambda m, name: isinstance(m, nn.Linear) and "self_attn" in name)
    quantize_(quantized, CONFIGS["int4"](), lambda m, name: isinstance(m, nn.Linear) and "mlp" in name)
    twin = twin_of(model, quantized)
    kinds = {type(m.weight).__name__ for m in quantized.modules() if isinstance(m, nn.Linear)}
    assert kinds == {"Int8Tensor", "IntxUnpackedToInt8Tensor", "Parameter"}  # lm_head stays float
    assert_llm_relevance_equals_twin(quantized, twin, output_tolerance=1e-5)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_an_activation_quantized_layer_is_refused_by_name(frontend):
    model = mlp()
    quantize_(model, Int8DynamicActivationInt8WeightConfig(), filter_fn=lambda m, name: name == "2")
    with pytest.raises(UnsupportedOpError, match=r"layer '2' \(Linear\).*act_quant_kwargs.*Int8WeightOnlyConfig"
                                                 r".*filter_fn=lambda module, name: name != '2'"):
        lrpfx.Explainer(model, "epsilon", frontend=frontend)(torch.randn(2, 16))


def test_a_quantized_embedding_is_refused_by_name():
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 3)).eval()
    quantize_(model, IntxWeightOnlyConfig(torch.int4), filter_fn=lambda m, name: isinstance(m, nn.Embedding))
    with pytest.raises(UnsupportedOpError, match=r"layer '0' \(Embedding\).*torch.nn.Linear.*filter_fn"):
        lrpfx.Explainer(model, "epsilon")(torch.randint(0, 10, (2, 5)))


class _Opaque(torch.Tensor):
    """A tensor subclass that does not say what dense weight it stands for (no dequantize)."""

    @staticmethod
    def __new__(cls, data):
        return torch.Tensor._make_wrapper_subclass(cls, data.shape, dtype=data.dtype)

    def __init__(self, data):
        self.data_ = data

    def __tensor_flatten__(self):
        return ["data_"], None

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        unwrap = lambda a: a.data_ if isinstance(a, _Opaque) else a  # noqa: E731
        return func(*[unwrap(a) for a in args], **{k: unwrap(v) for k, v in (kwargs or {}).items()})

    dequantize = None


def test_a_subclass_without_dequantize_is_refused_by_name():
    model = mlp()
    model[4]._parameters["weight"] = _Opaque(model[4].weight.detach())  # how torchao installs its subclasses
    with pytest.raises(UnsupportedOpError, match=r"layer '4' \(Linear\).*_Opaque.*without dequantize"):
        lrpfx.Explainer(model, "epsilon", frontend="fx")(torch.randn(2, 16))
