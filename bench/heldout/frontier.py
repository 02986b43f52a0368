"""Held-out frontier families: vision-language, hybrid / recurrent / state-space and MoE decoders that no test of
the repository names, from tiny random configs (float64, no downloads). ``run_frontier.py NAME`` explains one with
``rule="auto"`` in its own process; results: bench/RESULTS_heldout_frontier.md."""
import os
import re
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch
import transformers as T
from tests.helpers.breadth_zoo import Case, text_inputs, VOCAB, BATCH

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
            vocab_size=VOCAB, max_position_embeddings=64)
MOE = dict(num_experts_per_tok=2, moe_intermediate_size=16)


def build(cls, config, dtype=torch.float64):
    torch.manual_seed(0)
    return getattr(T, cls)(config).to(dtype).eval()


def dec(cls, cfg, dtype=torch.float64, **extra):
    """A decoder from ``cfg(**TINY, **extra)`` on left-padded text."""
    return Case(build(cls, getattr(T, cfg)(**{**TINY, **extra}), dtype), text_inputs(left_padding=True))


def moe(cls, cfg, **extra):
    """A mixture-of-experts decoder in float32: the experts' default code path (``grouped_mm``) has no float64."""
    return dec(cls, cfg, torch.float32, **extra)


TEXT = {
    # MoE and new decoders
    "olmoe": lambda: moe("OlmoeForCausalLM", "OlmoeConfig", num_experts=4, num_experts_per_tok=2),
    "gpt_oss": lambda: moe("GptOssForCausalLM", "GptOssConfig", num_local_experts=4, num_experts_per_tok=2, head_dim=8,
                           sliding_window=4),
    "deepseek_v3": lambda: moe("DeepseekV3ForCausalLM", "DeepseekV3Config", kv_lora_rank=16, q_lora_rank=16,
                               qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=8, n_routed_experts=4,
                               n_shared_experts=1, first_k_dense_replace=1, num_key_value_heads=4, n_group=1, topk_group=1, **MOE),
    "afmoe": lambda: moe("AfmoeForCausalLM", "AfmoeConfig", num_experts=4, num_dense_layers=1, head_dim=8,
                         num_shared_experts=1, sliding_window=4, **MOE),
    "minimax_m2": lambda: moe("MiniMaxM2ForCausalLM", "MiniMaxM2Config", num_local_experts=4, num_experts_per_tok=2,
                              head_dim=8),
    "exaone4": lambda: dec("Exaone4ForCausalLM", "Exaone4Config", sliding_window=4, head_dim=8),
    "seed_oss": lambda: dec("SeedOssForCausalLM", "SeedOssConfig", head_dim=8),
    "smollm3": lambda: dec("SmolLM3ForCausalLM", "SmolLM3Config", pad_token_id=0),
    "olmo3": lambda: dec("Olmo3ForCausalLM", "Olmo3Config", sliding_window=4),
    "apertus": lambda: dec("ApertusForCausalLM", "ApertusConfig"),
    "jetmoe": lambda: moe("JetMoeForCausalLM", "JetMoeConfig", num_local_experts=4, num_experts_per_tok=2,
                          kv_channels=8),
}

def gemma3n_text():
    return T.Gemma3nTextConfig(**{**TINY, "head_dim": 8}, vocab_size_per_layer_input=VOCAB,
                               hidden_size_per_layer_input=8, laurel_rank=4, altup_num_inputs=2,
                               num_kv_shared_layers=0, layer_types=["sliding_attention", "full_attention"],
                               sliding_window=4, activation_sparsity_pattern=[0.0, 0.0], pad_token_id=0)


TEXT["gemma3n_text"] = lambda: Case(build("Gemma3nForCausalLM", gemma3n_text()), text_inputs(left_padding=True))


def gemma3n():
    """Gemma 3n with its MobileNet-V5 tower (timm's smallest, mobilenetv5_base) and a tiny text decoder."""
    config = T.Gemma3nConfig(text_config=gemma3n_text(),
                             vision_config=dict(architecture="mobilenetv5_base", hidden_size=2048, vocab_size=8,
                                                vocab_offset=VOCAB),
                             audio_config=dict(hidden_size=32, conf_num_hidden_layers=1, conf_num_attention_heads=4,
                                               vocab_offset=VOCAB + 8, vocab_size=8, input_feat_size=16,
                                               sscp_conv_channel_size=[8, 8]),
                             image_token_id=IMAGE, vision_soft_tokens_per_image=256)
    return vlm("Gemma3nForConditionalGeneration", config, {"pixel_values": pixels(BATCH, 3, 32, 32)}, n_image=256)


HYBRID = {
    "nemotron_h": lambda: dec("NemotronHForCausalLM", "NemotronHConfig", num_hidden_layers=3,
                              hybrid_override_pattern="M*-", mamba_num_heads=4, mamba_head_dim=16, n_groups=1,
                              ssm_state_size=4, chunk_size=4, conv_kernel=4, head_dim=8),
    "falcon_mamba": lambda: dec("FalconMambaForCausalLM", "FalconMambaConfig", state_size=4, expand=2, conv_kernel=4),
    "mamba": lambda: dec("MambaForCausalLM", "MambaConfig", state_size=4, expand=2, conv_kernel=4),
    "recurrent_gemma": lambda: dec("RecurrentGemmaForCausalLM", "RecurrentGemmaConfig", num_hidden_layers=3,
                                   lru_width=32, attention_window_size=8, conv1d_width=4,
                                   block_types=["recurrent", "recurrent", "attention"]),
    "xlstm": lambda: Case(build("xLSTMForCausalLM", T.xLSTMConfig(hidden_size=32, embedding_dim=32, num_heads=4,
                                                                    num_blocks=2, vocab_size=VOCAB, use_cache=False)),
                          text_inputs(left_padding=True)),
    "zamba": lambda: dec("ZambaForCausalLM", "ZambaConfig", num_hidden_layers=6, attn_layer_period=3,
                         attn_layer_offset=2, mamba_d_state=4, n_mamba_heads=2, mamba_expand=2, mamba_d_conv=4),
    "kimi_linear": lambda: moe("KimiLinearForCausalLM", "KimiLinearConfig", pad_token_id=0, num_key_value_heads=4,
                               kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=8,
                               v_head_dim=8, num_local_experts=4, layer_types=["linear_attention", "full_attention"],
                               mlp_layer_types=["dense", "sparse"], linear_head_dim=8, linear_num_heads=4, **MOE),
    "lfm2_moe": lambda: moe("Lfm2MoeForCausalLM", "Lfm2MoeConfig", num_experts=4, num_dense_layers=1,
                            layer_types=["conv", "full_attention"], **MOE),
    "qwen3_5_moe": lambda: moe("Qwen3_5MoeForCausalLM", "Qwen3_5MoeTextConfig", num_experts=4, head_dim=8,
                               layer_types=["linear_attention", "full_attention"], linear_num_key_heads=2,
                               linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
                               shared_expert_intermediate_size=16, **MOE),
}

IMAGE = 63  # the image token id of every tiny VLM below


def ids_with_image(n_image, n_text=4, start=1, seed=1):
    """``[B, start + n_image + n_text]`` token ids: ``start`` text tokens, ``n_image`` image tokens, then text."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, IMAGE - 3, (BATCH, start + n_image + n_text), generator=g)
    ids[:, start:start + n_image] = IMAGE
    return ids


def pixels(*shape, seed=2, dtype=torch.float64):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)).to(dtype)


def vlm(cls, config, extra, n_image=4, start=1, dtype=torch.float64, ids_key="input_ids", mask=True, fix=None):
    """A VLM case; the number of image tokens is read from the model's own mismatch message when it differs."""
    model = build(cls, config, dtype)

    def inputs(n):
        ids = ids_with_image(n, start=start)
        x = {ids_key: ids, **({"attention_mask": torch.ones_like(ids)} if mask else {}), **extra}
        return fix(x) if fix else x

    x = inputs(n_image)
    try:
        with torch.no_grad():
            model(**x)
    except Exception as ex:
        found = re.search(r"features:? (\d+)", str(ex))
        if not found:
            raise
        x = inputs(int(found.group(1)) // BATCH)
    return Case(model, x)


def llama(**extra):
    return {"model_type": "llama", **TINY, "num_hidden_layers": 1, "head_dim": 8, "pad_token_id": 0, **extra}


def text(model_type, **extra):
    return {**llama(), "model_type": model_type, **extra}


SIGLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16,
              patch_size=4)
CLIP = dict(SIGLIP, patch_size=8)
QWEN_GRID = torch.tensor([[1, 4, 4]] * BATCH)  # one frame of 4 x 4 patches, merged 2 x 2: 4 tokens
MROPE = {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0}


def qwen_ids(x):
    """Qwen-style: a vision-start token in front of the image tokens; token types mark the image."""
    x["input_ids"][:, 0] = 60
    x["mm_token_type_ids"] = (x["input_ids"] == IMAGE).int()
    return x


VISION = {
    "aya_vision": lambda: vlm("AyaVisionForConditionalGeneration", T.AyaVisionConfig(
        vision_config={"model_type": "siglip_vision_model", **SIGLIP}, text_config=text("cohere2"),
        downsample_factor=2, image_token_index=IMAGE, vision_feature_select_strategy="full", vision_feature_layer=-1,
        adapter_layer_norm_eps=1e-5), {"pixel_values": pixels(BATCH, 3, 16, 16)}),
    "internvl": lambda: vlm("InternVLForConditionalGeneration", T.InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                           image_size=[16, 16], patch_size=[4, 4]), text_config=text("qwen2"),
        image_token_id=IMAGE, downsample_ratio=0.5, vision_feature_layer=-1), {"pixel_values": pixels(BATCH, 3, 16, 16)}),
    "mistral3": lambda: vlm("Mistral3ForConditionalGeneration", T.Mistral3Config(
        vision_config=dict(model_type="pixtral", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                           num_attention_heads=4, image_size=16, patch_size=4, head_dim=8),
        text_config=text("mistral"), image_token_index=IMAGE, spatial_merge_size=2, vision_feature_layer=-1),
        {"pixel_values": pixels(BATCH, 3, 16, 16), "image_sizes": torch.tensor([[16, 16]] * BATCH)}),
    "llava_next": lambda: vlm("LlavaNextForConditionalGeneration", T.LlavaNextConfig(
        vision_config={"model_type": "clip_vision_model", **CLIP}, text_config=llama(), image_token_index=IMAGE,
        image_grid_pinpoints=[[16, 16]], vision_feature_layer=-1),
        {"pixel_values": pixels(BATCH, 2, 3, 16, 16), "image_sizes": torch.tensor([[16, 16]] * BATCH)}),
    "llava_onevision": lambda: vlm("LlavaOnevisionForConditionalGeneration", T.LlavaOnevisionConfig(
        vision_config={"model_type": "siglip_vision_model", **SIGLIP}, text_config=text("qwen2"),
        image_token_index=IMAGE, video_token_index=62, image_grid_pinpoints=[[16, 16]], vision_feature_layer=-1,
        vision_aspect_ratio="anyres_max_1"),
        {"pixel_values": pixels(BATCH, 2, 3, 16, 16), "image_sizes": torch.tensor([[16, 16]] * BATCH)}),
    "cohere2_vision": lambda: vlm("Cohere2VisionForConditionalGeneration", T.Cohere2VisionConfig(
        vision_config={"model_type": "siglip_vision_model", **SIGLIP}, text_config=text("cohere2"),
        downsample_factor=2, image_token_id=IMAGE, alignment_intermediate_size=64),
        {"pixel_values": pixels(BATCH, 3, 16, 16)}),
    "lfm2_vl": lambda: vlm("Lfm2VlForConditionalGeneration", T.Lfm2VlConfig(
        vision_config=dict(model_type="siglip2_vision_model", hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=4, patch_size=4, num_patches=16),
        text_config=text("lfm2", num_hidden_layers=2, layer_types=["conv", "full_attention"]), downsample_factor=2, image_token_id=IMAGE,
        projector_hidden_size=32),
        {"pixel_values": pixels(BATCH, 16, 48), "pixel_attention_mask": torch.ones(BATCH, 16, dtype=torch.long),
         "spatial_shapes": torch.tensor([[4, 4]] * BATCH)}),
    "glm4v": lambda: vlm("Glm4vForConditionalGeneration", T.Glm4vConfig(
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=4, image_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32),
        text_config=text("glm4v_text", head_dim=16, rope_parameters={**MROPE, "partial_rotary_factor": 0.5}),
        image_token_id=IMAGE, video_token_id=62, image_start_token_id=60, image_end_token_id=61),
        {"pixel_values": pixels(BATCH * 16, 3 * 2 * 4 * 4), "image_grid_thw": QWEN_GRID}, fix=qwen_ids),
    "qwen3_vl_moe": lambda: vlm("Qwen3VLMoeForConditionalGeneration", T.Qwen3VLMoeConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32, num_position_embeddings=16,
                           deepstack_visual_indexes=[0]),
        text_config=text("qwen3_vl_moe_text", num_experts=4, rope_parameters={**MROPE, "mrope_section": [2, 1, 1]},
                         **MOE),
        image_token_id=IMAGE, video_token_id=62, vision_start_token_id=60, vision_end_token_id=61),
        {"pixel_values": pixels(BATCH * 16, 3 * 2 * 4 * 4, dtype=torch.float32), "image_grid_thw": QWEN_GRID},
        dtype=torch.float32, fix=qwen_ids),
    "blip_2": lambda: vlm("Blip2ForConditionalGeneration", T.Blip2Config(
        vision_config={**CLIP}, qformer_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                    intermediate_size=64, encoder_hidden_size=32, vocab_size=VOCAB),
        text_config=text("opt", ffn_dim=64, word_embed_proj_dim=32, bos_token_id=1, eos_token_id=2),
        num_query_tokens=4, image_token_index=IMAGE), {"pixel_values": pixels(BATCH, 3, 16, 16)}),
    "kosmos2": lambda: kosmos2(),
    "kosmos2_f32": lambda: kosmos2_f32(),
    "fuyu": lambda: fuyu(),
    "janus": lambda: vlm("JanusForConditionalGeneration", T.JanusConfig(
        text_config=llama(), vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                num_attention_heads=4, image_size=16, patch_size=4,
                                                projection_dim=32, aligner_projection_size=32),
        vq_config=dict(embed_dim=8, num_embeddings=16, base_channels=32, channel_multiplier=[1, 1], num_res_blocks=1,
                       projection_dim=32, image_token_embed_dim=32, num_patches=16, resolution=16),
        image_token_id=IMAGE), {"pixel_values": pixels(BATCH, 3, 16, 16)}, n_image=16),
    "mllama": lambda: mllama(),
    "perception_lm": lambda: vlm("PerceptionLMForConditionalGeneration", T.PerceptionLMConfig(
        vision_config=T.TimmWrapperConfig(architecture="vit_pe_core_tiny_patch16_384",
                                          model_args=dict(embed_dim=32, depth=1, num_heads=4, img_size=32)),
        text_config=llama(), image_token_id=IMAGE), {"pixel_values": pixels(BATCH, 1, 3, 32, 32)}),
    "gemma3n": lambda: gemma3n(),
    "chameleon": lambda: chameleon(),
}


def kosmos2():
    """Kosmos-2: CLIP features resampled to ``latent_query_num`` tokens, placed where a position mask says."""
    config = T.Kosmos2Config(text_config=dict(embed_dim=32, layers=1, attention_heads=4, ffn_dim=64, vocab_size=VOCAB,
                                              max_position_embeddings=64),
                             vision_config=dict(CLIP), latent_query_num=4)
    ids = ids_with_image(4)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels(BATCH, 3, 16, 16),
         "image_embeds_position_mask": (ids == IMAGE).long()}
    return Case(build("Kosmos2ForConditionalGeneration", config), x)


def kosmos2_f32():
    """Kosmos-2 in float32: in float64 its own forward overflows a float32 fill."""
    case = kosmos2()
    case.model.float()
    case.inputs["pixel_values"] = case.inputs["pixel_values"].float()
    return case


def fuyu():
    """Fuyu: raw patches, linearly projected, scattered to the positions ``image_patches_indices`` names."""
    config = T.FuyuConfig(text_config=text("persimmon", num_key_value_heads=4), hidden_size=32, patch_size=4,
                          num_channels=3, image_token_id=IMAGE, vocab_size=VOCAB)
    ids = ids_with_image(4)
    index = torch.full_like(ids, -1)
    index[:, 1:5] = torch.arange(4)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image_patches": pixels(BATCH, 4, 48),
         "image_patches_indices": index}
    return Case(build("FuyuForCausalLM", config), x)


def mllama():
    """Mllama: tiles of the image reach the text through cross-attention layers."""
    config = T.MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_global_layers=1,
                           attention_heads=4, image_size=16, patch_size=8, max_num_tiles=1,
                           intermediate_layers_indices=[0], vision_output_dim=64, supported_aspect_ratios=[[1, 1]]),
        text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, vocab_size=VOCAB, cross_attention_layers=[1], pad_token_id=0),
        image_token_index=IMAGE)
    ids = ids_with_image(1)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels(BATCH, 1, 1, 3, 16, 16),
         "aspect_ratio_ids": torch.ones(BATCH, 1, dtype=torch.long),
         "aspect_ratio_mask": torch.ones(BATCH, 1, 1, dtype=torch.long),
         "cross_attention_mask": torch.ones(BATCH, ids.shape[1], 1, 1, dtype=torch.long)}
    return Case(build("MllamaForConditionalGeneration", config), x)


def chameleon():
    """Chameleon: the image is quantised by a VQ-VAE to discrete tokens (an argmin): no gradient reaches pixels."""
    vocab_map = {"IMGIMG" + "".join(chr(65 + int(d)) for d in str(i)) + "Z": 30 + i for i in range(16)}
    vocab_map["<image>"] = IMAGE
    config = T.ChameleonConfig(**{**TINY, "num_hidden_layers": 1}, pad_token_id=0, vocabulary_map=vocab_map,
                               image_token_id=IMAGE,
                               vq_config=dict(embed_dim=8, num_embeddings=16, base_channels=32,
                                              channel_multiplier=[1, 1], num_res_blocks=1, resolution=16,
                                              attn_resolutions=[], latent_channels=8))
    return vlm("ChameleonForConditionalGeneration", config, {"pixel_values": pixels(BATCH, 3, 16, 16)}, n_image=64)


def batched_experts(name):
    """A float32 MoE case again in float64, its experts on `batched_mm` (float64, and torch.export records it;
    the eager loop over experts is data-dependent control flow)."""
    case = ZOO[name]()
    case.model.config._experts_implementation = "batched_mm"
    case.model.double()
    return case


ZOO = {**TEXT, **HYBRID, **VISION}
ZOO.update({f"{n}_f64": (lambda n=n: batched_experts(n)) for n in ("gpt_oss", "afmoe")})
