"""Models quantized with HQQ (``hqq``'s HQQLinear, on CPU with its PyTorch backend): explained as the linear layers
of their dequantized weights. The reference is the twin model whose Linears hold the dequantized weights: both run
the same float64 ops, so the relevances are equal exactly."""
import copy

import pytest
import torch
from torch import nn

import lrpfx
from tests.helpers.twins import assert_llm_relevance_equals_twin
from lrpfx.errors import UnsupportedOpError
from lrpfx.frontend.quantized import dequantized

hqq = pytest.importorskip("hqq")
from hqq.core.peft import HQQLinearLoRA  # noqa: E402
from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear  # noqa: E402
from hqq.utils.patching import patch_hqq_inference  # noqa: E402

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.filterwarnings("ignore")]


def hqq_layer(linear: nn.Linear, nbits: int = 4, group_size: int = 8) -> HQQLinear:
    """``linear`` quantized by HQQ (a copy: HQQLinear empties the layer it quantizes)."""
    return HQQLinear(copy.deepcopy(linear), BaseQuantizeConfig(nbits=nbits, group_size=group_size),
                     compute_dtype=linear.weight.dtype, device="cpu")


def quantized_and_twin(model: nn.Module, nbits: int = 4, group_size: int = 8):
    """A copy of ``model`` with each Linear an HQQLinear, and the float twin whose Linears hold their
    dequantized weights (and the same biases)."""
    quantized, twin = copy.deepcopy(model), copy.deepcopy(model)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            parent, _, child = name.rpartition(".")
            layer = hqq_layer(module, nbits, group_size)
            setattr(quantized.get_submodule(parent), child, layer)
            twin.get_submodule(name).weight = nn.Parameter(layer.dequantize())
    return quantized, twin


def mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 8)).double().eval()


def cnn():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 16),
                         nn.ReLU(), nn.Linear(16, 8)).double().eval()


def assert_explained_as_twin(quantized, twin, x, rule, frontend, target=2):
    got = lrpfx.Explainer(quantized, rule, frontend=frontend)(x, target=target)
    expected = lrpfx.Explainer(twin, rule, frontend=frontend)(x, target=target)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=0, atol=0)
    torch.testing.assert_close(got.output, expected.output, rtol=0, atol=0)
    assert got.relevance.abs().sum() > 0
    return got


@pytest.mark.parametrize("frontend", ["fx", "export"])
@pytest.mark.parametrize("model, shape, rule, nbits, group_size", [
    (mlp, (3, 16), "epsilon", 4, 8), (mlp, (3, 16), "epsilon", 2, 16), (mlp, (3, 16), "epsilon", 8, 8),
    (mlp, (3, 16), "gamma", 4, 8), (cnn, (2, 3, 8, 8), "epsilon-plus-flat", 4, 8)],
    ids=["mlp-epsilon-4bit", "mlp-epsilon-2bit", "mlp-epsilon-8bit", "mlp-gamma-4bit", "cnn-epsilon-plus-flat-4bit"])
def test_relevance_equals_the_dequantized_twins(model, shape, rule, nbits, group_size, frontend):
    torch.manual_seed(0)
    quantized, twin = quantized_and_twin(model(), nbits, group_size)
    x = torch.randn(shape, dtype=torch.float64)
    got = assert_explained_as_twin(quantized, twin, x, rule, frontend)
    # the output is the quantized model's own (HQQLinear's forward multiplies by the same dequantized weight)
    torch.testing.assert_close(got.output, quantized(x), rtol=0, atol=0)


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_the_program_dequantizes_one_layer_where_it_is_read(frontend):
    torch.manual_seed(0)
    quantized, twin = quantized_and_twin(mlp())
    x = torch.randn(3, 16, dtype=torch.float64)
    program = lrpfx.build_program(lrpfx.graph_of(quantized, x, frontend=frontend), "zero")
    calls = [n for n in program.graph_module.graph.nodes if n.target is dequantized]
    # once for the forward's linear, once for its relevance step, each freed after its one reader
    assert len(calls) == 2 * 3 and all(len(n.users) == 1 for n in calls)
    held = list(program.graph_module.parameters()) + list(program.graph_module.buffers())
    assert not any(t.is_floating_point() and t.dim() == 2 for t in held)  # no dense weight is kept
    out, (r,) = program(x, target=1)
    # LRP-0 through linear layers and ReLUs is gradient × input of the dequantized twin
    x_ = x.clone().requires_grad_(True)
    twin(x_)[:, 1].sum().backward()
    torch.testing.assert_close(r, x_.grad * x, rtol=1e-12, atol=1e-12)


def test_the_users_model_is_not_changed():
    quantized, _ = quantized_and_twin(mlp())
    layers = [quantized[i] for i in (0, 2, 4)]
    before = [(layer.W_q, layer.W_q.clone(), layer.bias, dict(layer.meta), type(layer).forward) for layer in layers]
    for frontend in ("fx", "export"):
        x = torch.randn(2, 16, dtype=torch.float64)
        explainer = lrpfx.Explainer(quantized, "epsilon", frontend=frontend)
        explainer(x)
        explainer.program(x).graph_module.float()  # converting the program leaves the layers it reads alone
    for layer, (w_q, values, bias, meta, forward) in zip(layers, before):
        assert layer.W_q is w_q and torch.equal(layer.W_q, values) and layer.bias is bias
        assert layer.meta.keys() == meta.keys() and all(layer.meta[k] is v for k, v in meta.items())
        assert type(layer).forward is forward and "forward" not in layer.__dict__
        assert layer.meta["scale"].dtype == torch.float64
    assert [type(m) for m in quantized] == [HQQLinear, nn.ReLU] * 2 + [HQQLinear]


def test_an_hqq_lora_wrapper_is_traced_through_to_its_hqq_linear():
    torch.manual_seed(0)
    linear = nn.Linear(16, 8).double()
    layer = hqq_layer(linear)
    peft = {"r": 2, "lora_alpha": 2, "dropout": 0.0, "train_dtype": torch.float64}
    quantized = nn.Sequential(HQQLinearLoRA(layer, peft), nn.ReLU(), nn.Linear(8, 3).double()).eval()
    dense = copy.deepcopy(linear)
    dense.weight = nn.Parameter(layer.dequantize())
    twin = copy.deepcopy(quantized)
    twin[0].linear_layer = dense  # the same LoRA weights around the dequantized float Linear
    twin[0].linear_layer.bias = None  # the wrapper adds the bias itself
    x = torch.randn(2, 16, dtype=torch.float64)
    for frontend in ("fx", "export"):
        assert_explained_as_twin(quantized, twin, x, "epsilon", frontend, target=1)


@pytest.mark.slow
def test_tiny_llama_quantized_by_hqq_equals_the_dequantized_twin():
    transformers = pytest.importorskip("transformers")
    from hqq.models.hf.base import AutoHQQHFModel
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    model = transformers.LlamaForCausalLM(config).double().eval()
    quantized, twin = copy.deepcopy(model), copy.deepcopy(model)
    AutoHQQHFModel.quantize_model(quantized, quant_config=BaseQuantizeConfig(nbits=4, group_size=16),
                                  compute_dtype=torch.float64, device="cpu")
    layers = {name: m for name, m in quantized.named_modules() if isinstance(m, HQQLinear)}
    assert len(layers) == 7  # q, k, v, o, gate, up, down; lm_head stays float
    for name, layer in layers.items():
        twin.get_submodule(name).weight = nn.Parameter(layer.dequantize())
    assert_llm_relevance_equals_twin(quantized, twin, output_tolerance=1e-12)


@pytest.fixture
def backend():
    """Set HQQLinear's backend (class-wide in hqq) for one test, and set it back. As set_backend does where hqq's
    ATen kernels are built: without them it keeps the PyTorch backend."""
    previous = HQQLinear.backend, HQQLinear.forward

    def set_backend(kind: HQQBackend):
        HQQLinear.backend, HQQLinear.forward = kind, getattr(HQQLinear, kind.value)
    yield set_backend
    HQQLinear.backend, HQQLinear.forward = previous


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_an_activation_quantizing_backend_is_refused_by_name(frontend, backend):
    quantized, _ = quantized_and_twin(mlp())
    backend(HQQBackend.ATEN_FORWARD_INT8)
    with pytest.raises(UnsupportedOpError, match=r"layer '0' \(HQQLinear\) quantizes its input to int8.*"
                                                 r"ATEN_FORWARD_INT8.*set_backend\(HQQBackend.PYTORCH\)"):
        lrpfx.Explainer(quantized, "epsilon", frontend=frontend)(torch.randn(2, 16, dtype=torch.float64))


def test_the_other_pytorch_backend_is_explained_alike(backend):
    torch.manual_seed(0)
    quantized, twin = quantized_and_twin(mlp())
    backend(HQQBackend.PYTORCH_FORWARD)
    assert_explained_as_twin(quantized, twin, torch.randn(3, 16, dtype=torch.float64), "epsilon", "fx")


def test_a_forward_set_on_the_layer_is_refused_by_name():
    quantized, _ = quantized_and_twin(mlp())
    patch_hqq_inference(quantized[2], None)  # what hqq's prepare_for_inference does to each layer
    with pytest.raises(UnsupportedOpError, match=r"layer '2' \(HQQLinear\) has a forward of its own.*"
                                                 r"prepare_for_inference.*del layer.forward"):
        lrpfx.Explainer(quantized, "epsilon")(torch.randn(2, 16, dtype=torch.float64))


def test_a_layer_not_quantized_yet_is_refused_by_name():
    model = mlp()
    model[4] = HQQLinear(None, BaseQuantizeConfig(nbits=4, group_size=8), compute_dtype=torch.float64, device="cpu",
                         initialize=False)
    with pytest.raises(UnsupportedOpError, match=r"layer '4' \(HQQLinear\) has no quantized weight.*initialize"):
        lrpfx.Explainer(model, "epsilon")(torch.randn(2, 16, dtype=torch.float64))


@pytest.mark.parametrize("frontend", ["fx", "export"])
def test_a_layer_of_an_inference_backend_is_refused_by_name(frontend):
    from hqq.backends.torchao import HQQLinearTorchWeightOnlynt4
    model = mlp().float()
    # hqq's torchao int4 layer, as prepare_for_inference(backend="torchao_int4") installs it (left uninitialised:
    # its weight packing runs on CUDA only); it is refused by its class, before anything reads its weight
    model[2] = HQQLinearTorchWeightOnlynt4(None, BaseQuantizeConfig(nbits=4, group_size=64), device="cpu",
                                           initialize=False)
    with pytest.raises(UnsupportedOpError, match=r"layer '2' \(HQQLinearTorchWeightOnlynt4\) is a layer of an hqq "
                                                 r"inference backend.*HQQLinear layers only.*before prepare_for_inf"):
        lrpfx.Explainer(model, "epsilon", frontend=frontend)(torch.randn(2, 16))
