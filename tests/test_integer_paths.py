"""Token ids that reach embeddings through integer arithmetic (hashed ids feeding several tables): relevance stops
at the embedding outputs and is reported as the tokens' relevance; where it cannot be, the call says why.

Reference: LRP-0 on a bias-free piecewise-linear head equals gradient × input at the embedding outputs; the two
tables' outputs are summed, so the tokens' relevance is ``h ⊙ ∂out/∂h`` with ``h`` their sum.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.errors import UnsupportedOpError

FRONTENDS = ["fx", "export"]
pytestmark = pytest.mark.usefixtures("one_thread")


class Hashed(nn.Module):
    def __init__(self):
        super().__init__()
        self.e1, self.e2 = nn.Embedding(7, 4), nn.Embedding(5, 4)
        self.lin, self.fc = nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)

    def embed(self, ids):
        return self.e1((ids * 31 + 7) % 7) + self.e2(ids % 5)

    def head(self, h):
        return self.fc(self.lin(h).relu().mean(1))

    def forward(self, ids):
        return self.head(self.embed(ids))


class Ngram(nn.Module):
    """Bigram hashing: each looked-up id mixes two tokens, so no per-token relevance exists."""

    def __init__(self):
        super().__init__()
        self.e, self.fc = nn.Embedding(7, 4), nn.Linear(4, 2)

    def forward(self, ids):
        return self.fc(self.e((ids[:, 1:] * 31 + ids[:, :-1]) % 7).mean(1))


class Cast(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, ids):
        return self.fc((ids % 3).float())


def ids():
    return torch.randint(0, 100, (2, 6), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_hashed_ids_get_the_embeddings_relevance(frontend):
    torch.manual_seed(0)
    model, x, target = Hashed().double().eval(), ids(), torch.tensor([0, 1])
    e = lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target)
    assert e.relevance is not None and e.relevance.shape == (2, 6, 4)
    h = model.embed(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.head(h).gather(1, target[:, None]).sum(), h)
    expected = (h * g).detach()
    assert expected.abs().sum() > 0
    torch.testing.assert_close(e.relevance, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("frontend", FRONTENDS)
@pytest.mark.parametrize("model", [Ngram, Cast])
def test_untracked_integer_paths_are_refused_naming_the_start(model, frontend):
    with pytest.raises(UnsupportedOpError) as err:
        lrpfx.Explainer(model().eval(), "epsilon", frontend=frontend)(ids(), target=torch.tensor([0, 1]))
    message = str(err.value)
    assert "integer" in message and "test_integer_paths.py" in message


class EosPool(nn.Module):
    """BART's classification head in miniature: the hidden state at the last end-of-sequence token, selected by a
    boolean mask of the ids (a size export knows only as a symbol without an example value)."""

    def __init__(self):
        super().__init__()
        self.e, self.lin, self.fc = nn.Embedding(10, 4), nn.Linear(4, 4, bias=False), nn.Linear(4, 2, bias=False)

    def head(self, h, mask):
        rep = h[mask, :].view(h.size(0), -1, h.size(-1))[:, -1, :]
        return self.fc(rep)

    def forward(self, ids):
        return self.head(self.lin(self.e(ids)).relu(), ids.eq(2))


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_sizes_without_a_hint(frontend):
    torch.manual_seed(0)
    model = EosPool().double().eval()
    x, target = torch.tensor([[1, 3, 2, 4, 2], [5, 2, 6, 7, 2]]), torch.tensor([0, 1])
    e = lrpfx.Explainer(model, "zero", frontend=frontend)(x, target=target)
    h = model.e(x).detach().requires_grad_(True)
    (g,) = torch.autograd.grad(model.head(model.lin(h).relu(), x.eq(2)).gather(1, target[:, None]).sum(), h)
    expected = (h * g).detach()
    assert expected.abs().sum() > 0
    torch.testing.assert_close(e.relevance, expected, rtol=1e-10, atol=1e-12)
