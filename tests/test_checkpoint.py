"""Checkpointed relevance programs (``checkpoint=``): the forward keeps only the values between blocks, the
relevance pass runs each block's forward again before its steps, and the relevance is the plain program's."""
import pytest
import torch
import torch.fx as fx
from torch import nn

import lrpfx
from lrpfx.errors import InputError
from lrpfx.program.checkpoint import blocks_of

pytestmark = pytest.mark.usefixtures("one_thread")
transformers = pytest.importorskip("transformers")


def tiny_llama():
    config = transformers.LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)
    return transformers.LlamaForCausalLM(config).double().eval()


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(8), nn.Linear(8, 16), nn.Linear(16, 8)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(self.norm(x))))


class Residual(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        self.stem, self.blocks, self.head = nn.Linear(4, 8), nn.ModuleList(Block() for _ in range(depth)), nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


def kept_by_the_forward(program: lrpfx.RelevanceProgram) -> set:
    """Names of the forward's values that the relevance pass reads."""
    nodes = list(program.graph_module.graph.nodes)
    start = next(i for i, n in enumerate(nodes) if n.name == "r_output")
    later = set(nodes[start:])
    return {n.name for n in nodes[:start] if n.op != "get_attr" and any(u in later for u in n.users)}


def boundaries(gm: fx.GraphModule, blocks: dict) -> set:
    """Names of the block nodes whose values leave their block (read outside it, or the output)."""
    return {n.name for n, block in blocks.items() if any(blocks.get(u) != block for u in n.users)}


def test_tiny_llama_checkpointed_equals_plain_and_keeps_only_boundaries():
    model = tiny_llama()
    ids = torch.randint(0, 40, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, :2] = 0
    gm = lrpfx.graph_of(model, (ids, mask), names=["input_ids", "attention_mask"])
    plain = lrpfx.build_program(gm, "attnlrp", intermediate=True)
    _, (expected, _), expected_intermediate = plain(ids, mask, target=5)
    for checkpoint in (True, "model.layers.*"):
        program = lrpfx.build_program(gm, "attnlrp", intermediate=True, checkpoint=checkpoint)
        _, (got, _), intermediate = program(ids, mask, target=5)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
        assert intermediate.keys() == expected_intermediate.keys()
        for key, value in expected_intermediate.items():
            torch.testing.assert_close(intermediate[key], value, rtol=0, atol=1e-12)
    blocks = blocks_of(gm, True)
    assert set(blocks.values()) == {"model.layers.0", "model.layers.1", "model.layers.2"}
    kept = kept_by_the_forward(lrpfx.build_program(gm, "attnlrp", checkpoint=True))
    inside = {n.name for n in blocks}
    assert kept & inside <= boundaries(gm, blocks)
    full = kept_by_the_forward(lrpfx.build_program(gm, "attnlrp"))
    assert len(full & inside) > 10 * len(kept & inside)  # the plain forward keeps the blocks' activations


@pytest.mark.parametrize("form", ["per-value", "relevance"])
@pytest.mark.parametrize("rule", ["epsilon", "zero", "epsilon-plus"])
def test_fx_blocks_checkpointed_equal_plain(rule, form):
    model = Residual().double().eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    plain = lrpfx.Explainer(model, rule, form=form)(x, target=1).relevance
    for checkpoint in (True, "blocks.*", ["blocks.0", "blocks.2"]):
        got = lrpfx.Explainer(model, rule, form=form, checkpoint=checkpoint)(x, target=1).relevance
        torch.testing.assert_close(got, plain, rtol=0, atol=1e-12)
    # LRP-0 through linear maps, ReLUs and the LayerNorm rule: the checkpointed program changes no step
    assert plain.abs().sum() > 0


def test_each_block_runs_again_once_in_the_relevance_pass():
    model = Residual(depth=4).double().eval()
    program = lrpfx.Explainer(model, "epsilon", checkpoint=True).program(torch.randn(2, 4, dtype=torch.float64))
    nodes = list(program.graph_module.graph.nodes)
    start = next(i for i, n in enumerate(nodes) if n.name == "r_output")
    calls = [n.target for n in nodes[start:] if n.op == "call_module"]
    ups = [t for t in calls if t.endswith(".up")]
    assert ups == [f"blocks.{i}.up" for i in (3, 2, 1, 0)]  # from the top, one block at a time


def test_checkpoint_names_that_match_nothing_are_refused():
    model = Residual().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(InputError, match=r"checkpoint=\['layers\.\*'\] matches no module.*checkpoint='blocks\.\*'"):
        lrpfx.Explainer(model, "epsilon", checkpoint=["layers.*"])(x)
    with pytest.raises(InputError, match="found no numbered layers"):
        lrpfx.Explainer(Block().double().eval(), "epsilon", checkpoint=True)(torch.randn(2, 8, dtype=torch.float64))
    with pytest.raises(InputError, match="checkpoint must be True, a glob"):
        lrpfx.Explainer(model, "epsilon", checkpoint=3)(x)
