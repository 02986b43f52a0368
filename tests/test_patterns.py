"""PatternNet / PatternAttribution (docs/rules.md, "PatternNet and PatternAttribution"): pattern statistics against an independent unfold-based
computation, the paper's closed-form toy case, streaming, saving, and the backward pass."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lrpfx


def toy_data(n=4000, seed=0):
    """x = a_s·y + a_d·ε with w = [1, -1]: wᵀa_s = 1 and wᵀa_d = 0, so the model output is exactly y."""
    g = torch.Generator().manual_seed(seed)
    a_s, a_d = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([1.0, 1.0], dtype=torch.float64)
    y, eps = torch.randn(n, 1, generator=g, dtype=torch.float64), torch.randn(n, 1, generator=g, dtype=torch.float64)
    x = y * a_s + eps * a_d
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -1.0]]))
    return model, x, y, a_s


def test_toy_case_recovers_the_signal_direction():
    model, x, y, a_s = toy_data()
    patterns = lrpfx.fit_patterns(model, x.split(500), progress=False)
    a = patterns["_0"] if "_0" in patterns else next(iter(patterns.patterns.values()))
    # exact against the sample covariance, and close to the true signal direction a_s
    xc, yc = x - x.mean(0), (x @ model.weight.T) - (x @ model.weight.T).mean(0)
    cov = (xc * yc).mean(0)
    torch.testing.assert_close(a.view(-1), cov / (model.weight.view(-1) @ cov), rtol=1e-9, atol=1e-12)
    assert torch.allclose(a.view(-1), a_s, atol=0.05)
    assert F.cosine_similarity(a.view(-1), a_s, dim=0) > 0.999
    # the gradient is w, but PatternNet returns the signal a·y and PatternAttribution w·a·y
    net = lrpfx.explain(model, x[:5], "patternnet", patterns=patterns, target=0)
    torch.testing.assert_close(net, (x[:5] @ model.weight.T) * a.view(1, -1))
    gradient = lrpfx.explain(model, x[:5], "gradient", target=0)
    torch.testing.assert_close(gradient, model.weight.detach().expand(5, 2))  # the gradient is w, not the signal
    attribution = lrpfx.explain(model, x[:5], "patternattribution", patterns=patterns, target=0)
    torch.testing.assert_close(attribution, (x[:5] @ model.weight.T) * (a * model.weight).view(1, -1))


def unfold_reference(conv: nn.Conv2d, xs, kind):
    """Pattern of a Conv2d from explicitly unfolded patches, accumulated over the whole data at once."""
    x = torch.cat(xs).double()
    w = conv.weight.double()
    groups = conv.groups
    patches = F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [N, C*k*k, L]
    n, _, positions = patches.shape
    cin_g, cout_g = x.shape[1] // groups, w.shape[0] // groups
    patches = patches.view(n, groups, cin_g * w.shape[2] * w.shape[3], positions)
    pattern = torch.zeros_like(w)
    for j in range(w.shape[0]):
        g = j // cout_g
        rows = patches[:, g].permute(0, 2, 1).reshape(-1, patches.shape[2])  # [N*L, patch]
        wj = w[j].reshape(-1)
        y = rows @ wj
        m = (y > 0).double() if kind == "positive" else torch.ones_like(y)
        cnt = m.sum()
        ex = (rows * m[:, None]).sum(0) / cnt
        exy = (rows * (y * m)[:, None]).sum(0) / cnt
        ey = y.mean()
        cov = exy - ex * ey
        den = wj @ cov
        pattern[j] = (cov / (den if den != 0 else 1.0)).view_as(w[j])
    return pattern


@pytest.mark.parametrize("kind", ["all", "positive"])
@pytest.mark.parametrize("conv_kwargs", [dict(stride=2, padding=0), dict(stride=1, padding=2, dilation=2),
                                         dict(stride=2, padding=2, dilation=2, groups=2)])
def test_conv_patterns_match_unfolded_statistics(kind, conv_kwargs):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, **conv_kwargs).double()
    probe = conv(torch.zeros(1, 4, 7, 7, dtype=torch.float64))
    linear = nn.Linear(probe.numel(), 3).double()
    model = nn.Sequential(conv, nn.ReLU(), nn.Flatten(), linear).double()
    xs = [torch.randn(5, 4, 7, 7, dtype=torch.float64) for _ in range(3)]
    patterns = lrpfx.fit_patterns(model, xs, kind=kind, progress=False)
    torch.testing.assert_close(patterns["0"], unfold_reference(conv, xs, kind), rtol=1e-9, atol=1e-12)
    # the linear layer: its input rows are the flattened ReLU outputs
    with torch.no_grad():
        h = torch.cat([model[:3](x) for x in xs])
    y = h @ linear.weight.T
    m = (y > 0).double() if kind == "positive" else torch.ones_like(y)
    ex = (m.T @ h) / m.sum(0)[:, None]
    exy = ((y * m).T @ h) / m.sum(0)[:, None]
    cov = exy - ex * y.mean(0)[:, None]
    expected = cov / (linear.weight * cov).sum(1, keepdim=True)
    torch.testing.assert_close(patterns["3"], expected, rtol=1e-9, atol=1e-12)


def test_streaming_equals_one_batch_and_max_batches():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double()
    x = torch.randn(21, 2, 6, 6, dtype=torch.float64)
    one = lrpfx.fit_patterns(model, [x], progress=False)
    streamed = lrpfx.fit_patterns(model, x.split(3), progress=False)  # 7 batches
    for name in one.patterns:
        torch.testing.assert_close(streamed[name], one[name], rtol=1e-10, atol=1e-10)
    first_two = lrpfx.fit_patterns(model, x.split(4), max_batches=2, progress=False)
    torch.testing.assert_close(first_two["3"], lrpfx.fit_patterns(model, [x[:8]], progress=False)["3"])
    labelled = [(b, torch.zeros(len(b))) for b in x.split(4)]  # (inputs, labels) batches work too
    torch.testing.assert_close(lrpfx.fit_patterns(model, labelled, progress=False)["0"], one["0"])


def seed_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(4 * 4 * 4, 5)).double()


def test_backward_is_the_gated_gradient_pass_with_patterns():
    torch.manual_seed(0)
    model = seed_cnn()
    data = [torch.randn(8, 1, 8, 8, dtype=torch.float64) for _ in range(3)]
    patterns = lrpfx.fit_patterns(model, data, progress=False)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for attribution in (False, True):
        conv, fc = model[0], model[4]
        a_conv = patterns["0"] * (conv.weight if attribution else 1)
        a_fc = patterns["4"] * (fc.weight if attribution else 1)
        # reference: forward gates from the real weights, backward through the pattern weights
        z = conv(x)
        h, idx = F.max_pool2d(F.relu(z), 2, return_indices=True)
        out = fc(h.flatten(1))
        r = out * F.one_hot(out.argmax(1), 5)
        r = (r @ a_fc).view_as(h)
        r = F.max_unpool2d(r, idx, 2, output_size=z.shape[2:]) * (z > 0)
        expected = torch.nn.grad.conv2d_input(x.shape, a_conv, r, padding=1)
        got = lrpfx.explain(model, x, "patternattribution" if attribution else "patternnet", patterns=patterns)
        torch.testing.assert_close(got, expected.detach())


def test_save_load_round_trip_and_wrong_model(tmp_path):
    torch.manual_seed(0)
    model = seed_cnn()
    patterns = lrpfx.fit_patterns(model, [torch.randn(6, 1, 8, 8, dtype=torch.float64)], kind="positive",
                                  progress=False)
    path = tmp_path / "patterns.pt"
    patterns.save(path)
    loaded = lrpfx.Patterns.load(path, model)
    assert loaded.kind == "positive" and set(loaded.patterns) == set(patterns.patterns)
    for name in patterns.patterns:
        assert torch.equal(loaded[name], patterns[name])
    other = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(3 * 4 * 4, 5)).double()
    with pytest.raises(lrpfx.RuleError, match="fit them again"):
        lrpfx.Patterns.load(path, other)
    with pytest.raises(lrpfx.RuleError, match="fit them again"):
        lrpfx.Explainer(other, "patternnet", patterns=patterns)


def test_pattern_rules_need_patterns_and_data():
    with pytest.raises(lrpfx.RuleError, match="fit_patterns"):
        lrpfx.Explainer(seed_cnn(), "patternnet")
    with pytest.raises(lrpfx.InputError, match="no batches"):
        lrpfx.fit_patterns(seed_cnn(), [], progress=False)
    with pytest.raises(lrpfx.RuleError, match="kind"):
        lrpfx.fit_patterns(seed_cnn(), [torch.randn(2, 1, 8, 8, dtype=torch.float64)], kind="negative")
