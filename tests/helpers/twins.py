"""A quantized causal LM against its dequantized twin: the same relevance, exactly."""
import torch

import lrpfx


def assert_llm_relevance_equals_twin(quantized, twin, output_tolerance: float) -> None:
    """AttnLRP of the last position's logit 3 on random ids: the quantized model's relevance equals its twin's
    bit for bit (each step runs on the dequantized weight), and its output is the model's own."""
    ids = {"input_ids": torch.randint(0, 40, (2, 6))}
    got = lrpfx.Explainer(quantized, "attnlrp", output=lambda o: o.logits[:, -1])(ids, target=3)
    expected = lrpfx.Explainer(twin, "attnlrp", output=lambda o: o.logits[:, -1])(ids, target=3)
    torch.testing.assert_close(got.relevance, expected.relevance, rtol=0, atol=0)
    assert got.relevance.abs().sum() > 0
    torch.testing.assert_close(got.output, quantized(**ids).logits[:, -1], rtol=output_tolerance,
                               atol=output_tolerance)
