"""A first call as a new user makes it: one sample, no rule, the default everything.

- Batch size is free from the first call: one sample first, then others, serve from one program on the export
  front-end, without torch's "0/1 specialized" warning.
- With no rule, the preset fits the model (:func:`lrpfx.composites.choose_preset`): the rule table says which and
  why, and a log line says so; Flat never lands on one projection of a transformer.
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import lrpfx
from lrpfx.composites import AttnLRP, EpsilonPlusFlat, as_composite

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).double().eval()


def last_logits(out):
    return out.logits[:, -1]


def test_one_sample_first_does_not_pin_the_batch_size(caplog):
    model = tiny_llama()
    explainer = lrpfx.Explainer(model, "attnlrp", output=last_logits)
    caplog.set_level(logging.WARNING)
    ids = torch.randint(0, 40, (5, 6))
    first = explainer({"input_ids": ids[:1]})
    assert not [r for r in caplog.records if "specialized" in r.getMessage()]
    for batch in (3, 5):
        got = explainer({"input_ids": ids[:batch]})
        fresh = lrpfx.Explainer(model, "attnlrp", output=last_logits)({"input_ids": ids[:batch]})
        torch.testing.assert_close(got.relevance, fresh.relevance, rtol=0, atol=1e-12)
    assert len(explainer._cache) == 1  # one program served 1, 3 and 5 samples
    torch.testing.assert_close(first.relevance, got.relevance[:1], rtol=0, atol=1e-12)


def chooser_column(program):
    return {row.node: row.chosen_by for row in program.rule_table()}


def test_no_rule_on_a_transformer_is_attnlrp(caplog):
    model = tiny_llama()
    ids = {"input_ids": torch.randint(0, 40, (2, 6))}
    caplog.set_level(logging.INFO, logger="lrpfx")
    got = lrpfx.Explainer(model, output=last_logits)(ids)
    assert any("'attnlrp'" in r.getMessage() and "transformer" in r.getMessage() for r in caplog.records)
    expected = lrpfx.Explainer(model, AttnLRP(), output=last_logits)(ids)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=0, atol=0)
    table = lrpfx.export(model, ids, output=last_logits).rule_table()
    assert all(row.chosen_by.startswith("default for a transformer") for row in table)
    assert not any(row.rule.startswith("Flat") for row in table)


def test_no_rule_on_a_cnn_is_epsilon_plus_flat():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).double()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(lrpfx.explain(cnn, x), lrpfx.explain(cnn, x, rule=EpsilonPlusFlat()), rtol=0, atol=0)
    rows = lrpfx.export(cnn, x).rule_table()
    assert rows[0].rule.startswith("Flat") and rows[0].chosen_by == "default for a CNN: first"


def test_no_rule_on_an_mlp_is_epsilon_not_flat():
    """A Flat first layer would give every input feature of an MLP the same relevance."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    x = torch.randn(3, 5, dtype=torch.float64)
    relevance = lrpfx.explain(mlp, x)
    torch.testing.assert_close(relevance, lrpfx.explain(mlp, x, rule="epsilon"), rtol=0, atol=0)
    assert not torch.allclose(relevance, relevance[:, :1].expand_as(relevance))
    assert {row.rule.split("(")[0] for row in lrpfx.export(mlp, x).rule_table()} == {"Epsilon", "Pass"}


def test_auto_is_a_rule_string_and_the_default_everywhere():
    assert as_composite("auto") is as_composite(None)
    assert lrpfx.Explainer(nn.Linear(2, 2)).composite is as_composite("auto")
    from lrpfx.cli.parser import build_parser
    args = build_parser().parse_args(["explain", "--model", "torchvision:resnet18", "--input", "x.pt"])
    assert args.rule == "auto"
