"""The breadth zoo: tiny random configurations of Hugging Face, timm and torchvision architectures.

Each entry builds a model (float64 where the model allows it, eval mode, fixed seed) and its inputs: batch 2,
text with padding (left for decoders, right for encoders), small images and audio. ``tests/test_zoo_breadth.py``
explains a selection; ``bench/zoo.py`` runs all of them and prints the table (status, build and call time,
conservation). Nothing here downloads weights: every model is built from a config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

VOCAB, LENGTH, BATCH = 64, 8, 2


@dataclass
class Case:
    """A model, its inputs and the Explainer options it needs. ``per_sample``: each sample's relevance explains
    its own logit (CLIP's image-text logits share the text tower: there the batch totals are compared)."""

    model: nn.Module
    inputs: Any
    options: Dict[str, Any] = field(default_factory=dict)
    per_sample: bool = True
    rule: Optional[Callable] = None  # a composite of its own (epsilon, zero_bias) -> Composite; default CPLRP

    def composite(self, epsilon: float = 0.0, zero_bias: bool = True):
        from lrpfx.composites import CPLRP

        return (self.rule or CPLRP)(epsilon=epsilon, zero_bias=zero_bias)


# Where CP-LRP with epsilon 0 and zero biases does not sum to the logit in float64, and why.
NOT_CONSERVING = {
    "hf-vit": "the class token, a constant concatenated to the patches, keeps the relevance that reaches it",
    "hf-clip": "the image tower's class token keeps the relevance that reaches it",
    "timm-efficientnet_b0": "squeeze-and-excitation gates amplify relevance beyond float64 (tests/test_zoo.py)",
    "timm-efficientformerv2_s0": "LRP-0 on signed residual sums amplifies relevance beyond float64",
    "timm-vit_tiny": "the class token keeps the relevance that reaches it",
    "timm-eva02_tiny": "the class token keeps the relevance that reaches it",
    "timm-repvit_m0_9": "squeeze-and-excitation gates amplify relevance beyond float64 (tests/test_zoo.py)",
}


def text_inputs(left_padding: bool, seed: int = 0, length: int = LENGTH, pad: int = 2) -> Dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (BATCH, length), generator=gen)
    mask = torch.ones(BATCH, length, dtype=torch.long)
    if left_padding:
        mask[1, :pad] = 0
    else:
        mask[1, length - pad:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def images(size: int = 32, channels: int = 3, seed: int = 1) -> torch.Tensor:
    return torch.randn(BATCH, channels, size, size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def total_relevance(explanation, per_sample: bool = True) -> torch.Tensor:
    """Relevance summed over every explained input (token ids at their embeddings, pixels, both towers), per
    sample or over the whole batch."""
    if explanation.inputs:
        parts = [r for r in explanation.inputs.values() if r is not None]
    else:
        r = explanation.relevance
        parts = list(r) if isinstance(r, tuple) else [r]
    if not per_sample:
        return sum(p.sum() for p in parts).reshape(1)
    return sum(p.flatten(1).sum(1) for p in parts)


def explained_logit(explanation, per_sample: bool = True) -> torch.Tensor:
    """The argmax logit of each sample (summed over the batch when ``per_sample`` is False)."""
    out = explanation.output
    logit = out.gather(1, out.argmax(1, keepdim=True)).squeeze(1)
    return logit if per_sample else logit.sum().reshape(1)


def _hf(model_cls: str, config_cls: str, **config) -> nn.Module:
    import transformers

    torch.manual_seed(0)
    return getattr(transformers, model_cls)(getattr(transformers, config_cls)(**config)).double().eval()


_DECODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
                max_position_embeddings=64)
_ENCODER = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
                max_position_embeddings=64, num_labels=3)


def _decoder(model_cls, config_cls, **extra) -> Case:
    return Case(_hf(model_cls, config_cls, **{**_DECODER, **extra}), text_inputs(left_padding=True))


def _encoder(model_cls, config_cls, **extra) -> Case:
    return Case(_hf(model_cls, config_cls, **{**_ENCODER, **extra}), text_inputs(left_padding=False))


def _seq2seq(model_cls, config_cls, **config) -> Case:
    inputs = text_inputs(left_padding=False)
    inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (BATCH, 4), generator=torch.Generator().manual_seed(3))
    return Case(_hf(model_cls, config_cls, **config), inputs)


def _vision(model_cls, config_cls, size=32, **config) -> Case:
    return Case(_hf(model_cls, config_cls, **config), {"pixel_values": images(size)})


def _mamba() -> Case:
    from lrpfx.composites import MambaLRP

    model = _hf("MambaForCausalLM", "MambaConfig", hidden_size=32, num_hidden_layers=2, vocab_size=VOCAB,
                state_size=4, expand=2, conv_kernel=4)
    return Case(model, text_inputs(left_padding=True), rule=MambaLRP)


def _clip() -> Case:
    text = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
                max_position_embeddings=LENGTH)
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32,
                  patch_size=8)
    import transformers

    torch.manual_seed(0)
    config = transformers.CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    model = transformers.CLIPModel(config).double().eval()
    inputs = {**text_inputs(left_padding=False), "pixel_values": images(32)}
    return Case(model, inputs, {"output": lambda out: out.logits_per_image}, per_sample=False)


def _whisper() -> Case:
    model = _hf("WhisperForAudioClassification", "WhisperConfig", d_model=32, encoder_layers=2,
                encoder_attention_heads=4, encoder_ffn_dim=64, num_mel_bins=8, max_source_positions=16,
                num_labels=3, decoder_layers=1, decoder_attention_heads=4, decoder_ffn_dim=64, vocab_size=VOCAB)
    features = torch.randn(BATCH, 8, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return Case(model, {"input_features": features})


def _wav2vec2() -> Case:
    model = _hf("Wav2Vec2ForSequenceClassification", "Wav2Vec2Config", hidden_size=32, num_hidden_layers=2,
                num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(4, 2),
                conv_kernel=(8, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4,
                feat_extract_norm="layer", num_labels=3, vocab_size=VOCAB, mask_time_prob=0.0)
    audio = torch.randn(BATCH, 400, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    return Case(model, {"input_values": audio})


def _timm(name: str, size: int = 64, **kwargs) -> Case:
    import timm

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kwargs).double().eval()
    return Case(model, images(size))


def _torchvision(name: str) -> Case:
    import torchvision

    torch.manual_seed(0)
    return Case(getattr(torchvision.models, name)(weights=None, num_classes=5).double().eval(), images(32))


class PreActBlock(nn.Module):
    """He et al. 2016's pre-activation block: BN -> ReLU -> conv, twice, plus the (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c_out), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = None if stride == 1 and c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride, bias=False)

    def forward(self, x):
        h = torch.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(h)
        return self.conv2(torch.relu(self.bn2(self.conv1(h)))) + skip


class PreActResNet(nn.Module):
    """A small pre-activation ResNet: every BatchNorm but the ones after conv1 of each block precedes its conv."""

    def __init__(self, widths=(8, 16, 32), classes: int = 5):
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks += [PreActBlock(c, w, 1 if i == 0 else 2), PreActBlock(w, w)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.bn, self.fc = nn.BatchNorm2d(c), nn.Linear(c, classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(h.mean((2, 3)))


def _preact() -> Case:
    torch.manual_seed(0)
    return Case(PreActResNet().double().eval(), images(32))


# name -> builder, one per family of docs/architectures.md.
ZOO: Dict[str, Callable[[], Case]] = {
    # Hugging Face decoders
    "hf-llama": lambda: _decoder("LlamaForCausalLM", "LlamaConfig", num_key_value_heads=2),
    "hf-qwen2": lambda: _decoder("Qwen2ForCausalLM", "Qwen2Config", num_key_value_heads=2),
    "hf-gpt2": lambda: Case(_hf("GPT2LMHeadModel", "GPT2Config", n_embd=32, n_layer=2, n_head=4, vocab_size=VOCAB,
                                n_positions=64), text_inputs(left_padding=True)),
    "hf-falcon": lambda: _decoder("FalconForCausalLM", "FalconConfig", new_decoder_architecture=False,
                                  multi_query=True, parallel_attn=True, alibi=False),
    # unpadded: transformers' Bloom itself returns NaN logits for a left-padded batch in float64 (not in float32)
    "hf-bloom": lambda: Case(_hf("BloomForCausalLM", "BloomConfig", hidden_size=32, n_layer=2, n_head=4,
                                 vocab_size=VOCAB), text_inputs(left_padding=True, pad=0)),
    "hf-mixtral": lambda: _decoder("MixtralForCausalLM", "MixtralConfig", num_key_value_heads=2,
                                   num_local_experts=4, num_experts_per_tok=2),
    "hf-qwen3-moe": lambda: _decoder("Qwen3MoeForCausalLM", "Qwen3MoeConfig", num_key_value_heads=2, num_experts=4,
                                     num_experts_per_tok=2, moe_intermediate_size=32, head_dim=8),
    "hf-phi": lambda: _decoder("PhiForCausalLM", "PhiConfig", num_key_value_heads=4),
    "hf-phi3": lambda: _decoder("Phi3ForCausalLM", "Phi3Config", num_key_value_heads=2, pad_token_id=0),
    "hf-mistral": lambda: _decoder("MistralForCausalLM", "MistralConfig", num_key_value_heads=2),
    "hf-opt": lambda: Case(_hf("OPTForCausalLM", "OPTConfig", hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, ffn_dim=64, vocab_size=VOCAB, max_position_embeddings=64,
                               word_embed_proj_dim=32), text_inputs(left_padding=True)),
    "hf-gpt-neox": lambda: _decoder("GPTNeoXForCausalLM", "GPTNeoXConfig"),
    "hf-gemma": lambda: _decoder("GemmaForCausalLM", "GemmaConfig", num_key_value_heads=2, head_dim=8),
    # unpadded: transformers' Gemma2 returns NaN logits for a left-padded batch in float64 (eager attention)
    "hf-gemma2": lambda: Case(_hf("Gemma2ForCausalLM", "Gemma2Config", **_DECODER, num_key_value_heads=2, head_dim=8),
                              text_inputs(left_padding=True, pad=0)),
    # the selective scan: MambaLRP's rules (other composites refuse it by name)
    "hf-mamba": lambda: _mamba(),
    # encoders
    "hf-bert": lambda: _encoder("BertForSequenceClassification", "BertConfig"),
    "hf-deberta-v2": lambda: _encoder("DebertaV2ForSequenceClassification", "DebertaV2Config"),
    "hf-albert": lambda: _encoder("AlbertForSequenceClassification", "AlbertConfig", embedding_size=16),
    "hf-distilbert": lambda: Case(_hf("DistilBertForSequenceClassification", "DistilBertConfig", dim=32, n_layers=2,
                                      n_heads=4, hidden_dim=64, vocab_size=VOCAB, max_position_embeddings=64,
                                      num_labels=3), text_inputs(left_padding=False)),
    "hf-electra": lambda: _encoder("ElectraForSequenceClassification", "ElectraConfig", embedding_size=16),
    "hf-roberta": lambda: Case(_hf("RobertaForSequenceClassification", "RobertaConfig",
                                   **{**_ENCODER, "max_position_embeddings": 64 + 2}), text_inputs(left_padding=False)),
    # encoder-decoders
    "hf-t5": lambda: _seq2seq("T5ForConditionalGeneration", "T5Config", d_model=32, d_kv=8, d_ff=64, num_layers=2,
                              num_decoder_layers=2, num_heads=4, vocab_size=VOCAB, decoder_start_token_id=0),
    "hf-bart": lambda: _seq2seq("BartForConditionalGeneration", "BartConfig", d_model=32, encoder_layers=2,
                                decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                                encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB, max_position_embeddings=64),
    # vision
    "hf-vit": lambda: _vision("ViTForImageClassification", "ViTConfig", image_size=32, patch_size=8, hidden_size=32,
                              num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=5),
    "hf-deit": lambda: _vision("DeiTForImageClassification", "DeiTConfig", image_size=32, patch_size=8,
                               hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               num_labels=5),
    "hf-beit": lambda: _vision("BeitForImageClassification", "BeitConfig", image_size=32, patch_size=8,
                               hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                               num_labels=5, use_relative_position_bias=True),
    "hf-swin": lambda: _vision("SwinForImageClassification", "SwinConfig", size=64, image_size=64, patch_size=4,
                               embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=5),
    "hf-convnext": lambda: _vision("ConvNextForImageClassification", "ConvNextConfig", image_size=32,
                                   num_stages=2, hidden_sizes=[8, 16], depths=[1, 1], num_labels=5,
                                   layer_scale_init_value=0.5),
    # audio
    "hf-whisper-encoder": _whisper,
    "hf-wav2vec2": _wav2vec2,
    # two towers
    "hf-clip": _clip,
    # timm CNNs and hybrids
    "timm-resnet18": lambda: _timm("resnet18"),
    "timm-densenet121": lambda: _timm("densenet121"),
    "timm-efficientnet_b0": lambda: _timm("efficientnet_b0"),
    "timm-convnext_atto": lambda: _timm("convnext_atto"),
    "timm-resnetv2_18 (pre-act)": lambda: _timm("resnetv2_18"),
    "timm-levit_128s": lambda: _timm("levit_128s", size=64, img_size=64),
    "timm-maxvit_nano_rw": lambda: _timm("maxvit_nano_rw_256", size=64, img_size=64),
    "timm-coatnet_nano_rw": lambda: _timm("coatnet_nano_rw_224", size=64, img_size=64),
    "timm-efficientformer_l1": lambda: _timm("efficientformer_l1", size=224),  # attention biases fixed to 7x7
    "timm-efficientformerv2_s0": lambda: _timm("efficientformerv2_s0", size=64, img_size=64),
    "timm-mobilevit_xxs": lambda: _timm("mobilevit_xxs", size=64),
    "timm-mobilenetv3_small": lambda: _timm("mobilenetv3_small_050"),
    "timm-regnety_002": lambda: _timm("regnety_002"),
    "timm-repvit_m0_9": lambda: _timm("repvit_m0_9"),
    "timm-fastvit_t8": lambda: _timm("fastvit_t8"),
    "timm-vit_tiny": lambda: _timm("vit_tiny_patch16_224", size=32, img_size=32),
    "timm-eva02_tiny": lambda: _timm("eva02_tiny_patch14_224", size=224),
    "timm-swin_tiny": lambda: _timm("swin_tiny_patch4_window7_224", size=224),
    # torchvision
    "tv-densenet121": lambda: _torchvision("densenet121"),
    "preact-resnet": _preact,
}
