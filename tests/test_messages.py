"""What a user reads: errors say what lrpfx knows (no fx or export internals, no graph dumps), lrpfx's own calls
print no torch warnings, ``import lrpfx`` does not pull in the compiler, and the small promises hold (packed
sequences, close matches for node names, readable compiled-choice keys, readable heatmaps of tiny inputs)."""
from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.errors import InputError, TraceError, UnsupportedOpError

pytestmark = pytest.mark.usefixtures("one_thread")

FX_INTERNALS = ("While executing", "Original traceback", "proxy.py", "tlparse", "TORCHDYNAMO", "TORCH_LOGS")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4 * 6 * 6, 2)

    def forward(self, x):
        return self.fc(self.conv1(x).relu().flatten(1))


class DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.sum() > 0:  # an `if` on tensor values
            return self.fc(x)
        return self.fc(-x)


def test_a_failing_input_names_the_node_without_fx_internals():
    with pytest.raises(InputError) as info:
        lrpfx.Explainer(Net(), "epsilon")(torch.randn(2, 2, 8, 8))
    message = str(info.value)
    assert "node 'conv1'" in message and "test_messages.py" in message and "3 channels" in message
    assert not any(word in message for word in FX_INTERNALS), message


def test_data_dependent_control_flow_prints_no_graph_dumps(capfd):
    with pytest.raises(TraceError) as info:
        lrpfx.Explainer(DataDependent(), "epsilon")(torch.randn(2, 4))
    out, err = capfd.readouterr()
    assert "def forward(self" not in out + err and "symbolic_shapes" not in err, err
    message = str(info.value)
    assert "if x.sum() > 0" in message and "torch.where" in message
    assert not any(word in message for word in FX_INTERNALS), message


def test_recurrent_export_raises_no_torch_warnings():
    class Recurrent(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.lstm(x)[0][:, -1])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lrpfx.Explainer(Recurrent(), "epsilon", frontend="export")(torch.randn(2, 5, 3))
    assert not [w for w in caught if "_flat_weights" in str(w.message)], [str(w.message) for w in caught]


def test_import_does_not_load_the_compiler():
    """torch._dynamo costs seconds at import; lrpfx loads it only when a program is compiled."""
    code = "import sys, lrpfx; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_packing_inside_forward_says_to_pass_the_padded_tensor():
    class Packing(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(3, 4, batch_first=True), nn.Linear(4, 2)

        def forward(self, x):
            packed = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]), batch_first=True)
            return self.fc(self.lstm(packed)[1][0][-1])

    with pytest.raises(UnsupportedOpError, match="packs sequences inside forward") as info:
        lrpfx.Explainer(Packing(), "epsilon")(torch.randn(2, 5, 3))
    assert "padded batch" in str(info.value) and "pack_padded_sequence(x" in str(info.value)


def test_unknown_concept_node_lists_close_matches():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
    with pytest.raises(InputError, match=r"close matches: \['3'\]"):
        lrpfx.Explainer(net, "epsilon")(torch.randn(2, 2, 5, 5), conditions=[{"y": 1, "features.3": [2]}])


def test_compiled_choice_is_keyed_by_readable_input_shapes():
    explainer = lrpfx.Explainer(nn.Sequential(nn.Linear(4, 3)), "epsilon", compile=True)
    explainer._cache.clear()
    entry = explainer._entry(lrpfx.api.split_inputs(torch.randn(2, 4)), False, False)
    assert entry is not None
    assert list(explainer.compiled_choice) == ["float32[*, 4]"]


def test_tiny_heatmaps_are_upscaled_for_display():
    from lrpfx.viz.image import upscale
    tiny = torch.rand(8, 8, 3).numpy()
    big = upscale(tiny)
    assert big.shape == (192, 192, 3) and (big[:24, :24] == tiny[0, 0]).all()
    assert upscale(torch.rand(300, 400).numpy()).shape == (300, 400)
