"""The export front-end takes every node's shape and dtype from torch.export's own record (``meta["val"]``)
instead of running the model once more; what it stores must equal what a recording run stores, for every node,
on every kind of model (and a graph whose rewrites left a node unrecorded is recorded by running it)."""
import pytest
import torch

from lrpfx.frontend.export import export_graph
from lrpfx.meta_keys import VALUE
from lrpfx.frontend.common import record_values, values_from_export
from tests.helpers.breadth_zoo import ZOO

CASES = ["hf-llama", "hf-gpt2", "hf-mixtral", "hf-bert", "hf-t5", "hf-mamba", "hf-swin", "timm-resnet18",
         "timm-mobilevit_xxs", "lstm"]


class Recurrent(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.head = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True), torch.nn.Linear(6, 3)

    def forward(self, x):
        out, (h, c) = self.rnn(x)
        return self.head(out[:, -1] + h[-1])


def _case(name):
    if name == "lstm":
        return Recurrent().double().eval(), torch.randn(2, 5, 4, dtype=torch.float64), None
    case = ZOO[name]()
    return case.model, case.inputs, case.options.get("dynamic")


def _split(inputs):
    if isinstance(inputs, dict):
        return tuple(inputs), tuple(inputs.values())
    return None, (inputs,) if isinstance(inputs, torch.Tensor) else tuple(inputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", CASES)
def test_values_from_export_equal_a_recording_run(name):
    model, inputs, dynamic = _case(name)
    names, tensors = _split(inputs)
    gm = export_graph(model, names, tensors, {}, dynamic=dynamic)
    assert values_from_export(gm), "every node of an exported graph carries export's record"
    from_export = {n.name: n.meta[VALUE] for n in gm.graph.nodes if VALUE in n.meta}
    for n in gm.graph.nodes:
        n.meta.pop(VALUE, None)
    record_values(gm, tensors)
    recorded = {n.name: n.meta[VALUE] for n in gm.graph.nodes if VALUE in n.meta}
    assert from_export == recorded


def data_dependent_linear(x, w, b=None):
    return torch.nn.functional.linear(x, w, b) * float(x.sum())  # needs the values: fake tensors cannot run it


def test_nodes_without_exports_record_are_run_on_fake_tensors_or_recorded():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2)).double()
    x = torch.randn(2, 3, dtype=torch.float64)
    gm = export_graph(model, None, (x,), {})
    linear = next(n for n in gm.graph.nodes if n.op == "call_function")
    del linear.meta["val"]  # as for a node a rewrite added
    assert values_from_export(gm) and linear.meta[VALUE].shape == (2, 2)
    for n in gm.graph.nodes:
        n.meta.pop(VALUE, None)
    linear.target = data_dependent_linear
    assert not values_from_export(gm)
    assert not any(VALUE in n.meta for n in gm.graph.nodes)  # all or nothing: the caller records
