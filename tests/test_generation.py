"""Attribution of generated text (lrpfx.explain_generation / explain_generated) on tiny random LLaMA and GPT-2
models in float64.

The reference is the step-by-step explanation: for generated token k, the sequence cut right before it,
explained by a plain Explainer (its default output: the last position's logits) with the token as target.
Causal attention makes that equal to row k of the one-pass matrix. Also checked independently: the
continuation is the argmax of full-sequence forwards, the explained logits are the model's.
"""
import copy
import re

import pytest
import torch

import lrpfx
from lrpfx.generation import GenerationExplainer, explain_generated, explain_generation

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")

VOCAB, B, P, N = 50, 2, 5, 3


def _seeded(cls, config):
    torch.manual_seed(0)
    return cls(config).double().eval()


def llama():
    return _seeded(transformers.LlamaForCausalLM, transformers.LlamaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
        vocab_size=VOCAB))


def gpt2():
    return _seeded(transformers.GPT2LMHeadModel, transformers.GPT2Config(
        n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB, n_positions=16, bos_token_id=0, eos_token_id=0))


MODELS = {"llama": llama, "gpt2": gpt2}


def prompt(padded: bool):
    ids = torch.randint(1, VOCAB, (B, P), generator=torch.Generator().manual_seed(1))
    if not padded:
        return ids, None
    mask = torch.ones(B, P, dtype=torch.long)
    mask[1, :2] = 0  # sample 1: two tokens of left padding
    return ids, mask


def model_inputs(ids, mask, t):
    """The first t tokens as the model (and the reference explanation) sees them: with a mask, positions count
    real tokens only, as generation does."""
    x = {"input_ids": ids[:, :t]}
    if mask is not None:
        x["attention_mask"] = mask[:, :t]
        x["position_ids"] = (mask[:, :t].cumsum(1) - 1).clamp(min=0)
    return x


def assert_matches_step_by_step(model, res, mask):
    ids = res.ids
    reference = lrpfx.Explainer(model, "attnlrp")
    for k in range(N):
        t = P + k
        step = reference(model_inputs(ids, mask, t), target=ids[:, t])
        torch.testing.assert_close(res.matrix[:, k, :t], step.tokens, rtol=1e-9, atol=1e-12)
        assert res.matrix[:, k, t:].abs().max() == 0  # nothing from its own position on
        torch.testing.assert_close(res.target_logits[:, k], step.output.gather(1, ids[:, t, None])[:, 0])


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("padded", [True, False], ids=["left-padded", "no-mask"])
def test_one_pass_equals_explaining_each_step_on_the_cut_sequence(name, padded):
    model = MODELS[name]()
    ids, mask = prompt(padded)
    res = explain_generation(model, ids, max_new_tokens=N, attention_mask=mask)
    assert res.ids.shape == (B, P + N) and res.matrix.shape == (B, N, P + N)
    assert torch.equal(res.ids[:, :P], ids) and torch.equal(res.generated, res.ids[:, P:])
    with torch.no_grad():  # greedy: each token is the argmax of a full forward over the tokens before it
        for t in range(P, P + N):
            logits = model(**model_inputs(res.ids, res.attention_mask, t)).logits[:, -1]
            assert torch.equal(logits.argmax(-1), res.ids[:, t])
    assert_matches_step_by_step(model, res, res.attention_mask)
    if padded:
        assert res.matrix[1, :, :2].abs().max() < 1e-12  # padding takes no relevance


def test_chunks_and_already_generated_ids_give_the_same_matrix():
    model = llama()
    ids, mask = prompt(padded=True)
    one = explain_generation(model, ids, max_new_tokens=N, attention_mask=mask)
    chunked = explain_generated(model, one.ids, prompt_length=P, attention_mask=mask, batch_size=2)
    torch.testing.assert_close(chunked.matrix, one.matrix, rtol=1e-10, atol=1e-13)
    torch.testing.assert_close(chunked.target_logits, one.target_logits)
    assert torch.equal(chunked.attention_mask, one.attention_mask)  # the prompt's mask, grown by ones


def test_a_reused_explainer_serves_other_prompt_lengths_and_leaves_the_model_alone():
    model = gpt2().train()
    before = copy.deepcopy(model.state_dict())
    explainer = GenerationExplainer(model)
    ids, _ = prompt(padded=False)
    first = explainer(ids, max_new_tokens=N)
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    shorter = explainer(ids[:, 1:], max_new_tokens=N)
    model.eval()
    assert shorter.matrix.shape == (B, N, P - 1 + N)
    alone = explain_generated(model, shorter.ids, P - 1)
    torch.testing.assert_close(shorter.matrix, alone.matrix, rtol=1e-10, atol=1e-13)
    assert not torch.allclose(first.matrix[:, :, 1:], shorter.matrix)


class NoCache(torch.nn.Module):
    """A causal LM whose forward takes no cache: generation recomputes the whole sequence at every step."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          use_cache=False).logits


def test_greedy_generation_with_and_without_a_cache_agree():
    from lrpfx.generation import greedy_generate

    model = llama()
    ids, mask = prompt(padded=True)
    cached, grown = greedy_generate(model, ids, 4, mask)
    plain, _ = greedy_generate(NoCache(model), ids, 4, mask)
    assert torch.equal(cached, plain) and torch.equal(grown[:, P:], torch.ones(B, 4, dtype=torch.long))


# ---- bad inputs ------------------------------------------------------------------------------------------------
def bert_mlm():
    return _seeded(transformers.BertForMaskedLM, transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB))


def bert_classifier():
    return _seeded(transformers.BertForSequenceClassification, transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB))


@pytest.mark.parametrize("bad, message", [
    (dict(max_new_tokens=0), "max_new_tokens must be an int >= 1"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be an int >= 1"),
    (dict(input_ids=torch.rand(B, P)), "token ids must be integers"),
    (dict(input_ids=torch.ones(P, dtype=torch.long)), r"ids\[None\]"),
    (dict(attention_mask=torch.ones(B, P + 1, dtype=torch.long)), "shaped like the token ids"),
    (dict(attention_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])), "left padding"),
    (dict(attention_mask=torch.full((B, P), 2)), "0 .padding. and 1"),
    (dict(batch_size=0), "batch_size must be a positive int"),
    (dict(output=lambda out: out.logits), "output= is chosen by explain_generation"),
])
def test_bad_inputs_name_the_problem(bad, message):
    ids, _ = prompt(padded=False)
    kwargs = {"input_ids": ids, "max_new_tokens": 2, **bad}
    with pytest.raises(lrpfx.InputError, match=message):
        explain_generation(llama(), **kwargs)


@pytest.mark.parametrize("build, message", [(bert_mlm, "is not causal"), (bert_classifier, "not one row per position"),
                                            (lambda: torch.nn.Linear(3, 3), "takes no input_ids")])
def test_models_that_do_not_generate_are_refused(build, message):
    ids, _ = prompt(padded=False)
    with pytest.raises(lrpfx.InputError, match=message):
        explain_generation(build(), ids, max_new_tokens=2)


def test_already_generated_ids_check_prompt_length_and_mask():
    model = llama()
    ids = torch.randint(1, VOCAB, (B, P + N))
    for bad in (0, P + N, True):
        with pytest.raises(lrpfx.InputError, match="prompt_length"):
            explain_generated(model, ids, bad)
    with pytest.raises(lrpfx.InputError, match="cover the prompt"):
        explain_generated(model, ids, P, attention_mask=torch.ones(B, P + 1, dtype=torch.long))
    explainer = GenerationExplainer(model)
    explainer.explain(ids, P, batch_size=N)  # checks the model once, then every call checks the ids
    with pytest.raises(lrpfx.InputError, match="vocabulary has 50"):
        explainer.explain(ids + VOCAB, P)


# ---- renderings ----------------------------------------------------------------------------------------------
def test_renderings_colour_each_generated_tokens_context():
    model = llama()
    ids, mask = prompt(padded=True)
    res = explain_generation(model, ids, max_new_tokens=N, attention_mask=mask)
    words = [f"w{i}" for i in range(VOCAB)]
    page = res.render(words, sample=1)
    assert page.count("<tr>") == N + 1  # header and one row per generated token
    shown = [w for w, keep in zip(res.ids[1].tolist(), res.attention_mask[1].tolist()) if keep]
    header = re.findall(r"<th[^>]*>(w\d+)</th>", page.split("<tr>")[1])
    assert header == [words[i] for i in shown]  # padding hidden
    k = 1  # the strongest token of row k is full red (positive) or full blue (negative) in its strip
    row = res.matrix[1, k, 2:P + k]
    colour = "rgb(255, 0, 0)" if float(row[row.abs().argmax()]) > 0 else "rgb(0, 0, 255)"
    strip = page.split('<div style="margin: 2px 0">')[k + 1]
    assert colour in strip and f">{words[int(res.ids[1, P + k])]}</span>" in strip
    ansi = res.render(words, sample=1, format="ansi").splitlines()
    assert len(ansi) == N and all("\x1b[48;2;" in line for line in ansi)
    assert ansi[0].count("\x1b[0m") == P - 2  # one coloured token per real context token
    assert res.render(words, format="ansi", normalize="global") != res.render(words, format="ansi")
    with pytest.raises(lrpfx.InputError, match="format"):
        res.render(format="svg")
    with pytest.raises(lrpfx.InputError, match="sample 5 out of range"):
        res.render(sample=5)
