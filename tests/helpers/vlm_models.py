"""Tiny vision-language models with random weights (no downloads) and inputs that fit them, float64."""
import torch
import transformers

VOCAB, IMAGE_TOKEN = 64, 63
B = 2


def _build(cls, config):
    torch.manual_seed(0)
    return cls(config).double().eval()


def _llama_text(**extra):
    return transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=64, vocab_size=VOCAB, **extra)


def _siglip_vision(image_size=16, patch_size=8, **extra):
    return transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, image_size=image_size, patch_size=patch_size, **extra)


def _token_ids(n_text, n_image, start=1, seed=1):
    """``[B, start + n_image + n_text]`` ids: ``start`` text tokens, the image tokens, then text."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, IMAGE_TOKEN - 1, (B, start + n_image + n_text), generator=g)
    ids[:, start:start + n_image] = IMAGE_TOKEN
    return ids


def _pixels(*shape, seed=2):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def llava(projector_act="gelu", projector_bias=True):
    """LLaVA: a CLIP vision tower (with its class token), a two-layer projector, LLaMA."""
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                           num_attention_heads=4, image_size=16, patch_size=8)
    config = transformers.LlavaConfig(vision_config=vision, text_config=_llama_text(), image_token_index=IMAGE_TOKEN,
                                      vision_feature_select_strategy="full", vision_feature_layer=-1,
                                      projector_hidden_act=projector_act, multimodal_projector_bias=projector_bias)
    ids = _token_ids(n_text=4, n_image=5)  # 4 patches and the class token
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": _pixels(B, 3, 16, 16)}
    return _build(transformers.LlavaForConditionalGeneration, config), x


def paligemma():
    """PaliGemma: SigLIP (no class token), a linear projector, Gemma; image tokens first."""
    text = transformers.GemmaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                                    intermediate_size=64, vocab_size=VOCAB, head_dim=8)
    config = transformers.PaliGemmaConfig(vision_config=_siglip_vision(projection_dim=32), text_config=text,
                                          image_token_index=IMAGE_TOKEN, vocab_size=VOCAB, projection_dim=32,
                                          hidden_size=32)
    ids = _token_ids(n_text=5, n_image=4, start=0)
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": _pixels(B, 3, 16, 16)}
    return _build(transformers.PaliGemmaForConditionalGeneration, config), x


def gemma3():
    """Gemma 3: SigLIP, an average-pooling projector to ``mm_tokens_per_image`` tokens, Gemma 3 text."""
    text = transformers.Gemma3TextConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                         num_key_value_heads=2, intermediate_size=64, vocab_size=VOCAB, head_dim=8,
                                         query_pre_attn_scalar=8, sliding_window=8)
    config = transformers.Gemma3Config(vision_config=_siglip_vision(image_size=16, patch_size=4), text_config=text,
                                       mm_tokens_per_image=4, image_token_index=IMAGE_TOKEN, boi_token_index=61,
                                       eoi_token_index=62)
    ids = _token_ids(n_text=4, n_image=4)  # 9 tokens: the sliding window of 8 still reaches the image
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": _pixels(B, 3, 16, 16)}
    model = _build(transformers.Gemma3ForConditionalGeneration, config)
    with torch.no_grad():  # Hugging Face starts the projection at zero: the image would not reach the logits
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0, 0.2)
    return model, x


def idefics3(cls=transformers.Idefics3ForConditionalGeneration, config_cls=transformers.Idefics3Config):
    """Idefics3 / SmolVLM: a SigLIP-like tower, pixel shuffle and a linear connector, LLaMA; one image each."""
    vision = transformers.Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                               num_attention_heads=4, image_size=16, patch_size=4)
    config = config_cls(vision_config=vision, text_config=_llama_text(), image_token_id=IMAGE_TOKEN, scale_factor=2)
    ids = _token_ids(n_text=4, n_image=4)  # 16 patches shuffled by 2 x 2
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": _pixels(B, 1, 3, 16, 16)}
    return _build(cls, config), x


def smolvlm():
    return idefics3(transformers.SmolVLMForConditionalGeneration, transformers.SmolVLMConfig)


def qwen2_vl(cls=transformers.Qwen2VLForConditionalGeneration, config_cls=transformers.Qwen2VLConfig, vision=None):
    """Qwen2-VL: patches flattened to ``[N, C·T·P·P]`` with their grid ``image_grid_thw``, multimodal RoPE."""
    vision = vision or transformers.Qwen2VLVisionConfig(depth=1, embed_dim=32, hidden_size=32, num_heads=4,
                                                        patch_size=4, spatial_merge_size=2, temporal_patch_size=2)
    text = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
                intermediate_size=64, vocab_size=VOCAB, bos_token_id=1, eos_token_id=2,
                rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0})
    config = config_cls(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN, video_token_id=62,
                        vision_start_token_id=60, vision_end_token_id=61)
    grid = torch.tensor([[1, 4, 4]] * B)  # one frame of 4 x 4 patches per image, merged 2 x 2: 4 tokens
    ids = _token_ids(n_text=4, n_image=4, start=2)
    ids[:, 1] = 60
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
         "pixel_values": _pixels(B * 16, 3 * 2 * 4 * 4), "image_grid_thw": grid,
         "mm_token_type_ids": (ids == IMAGE_TOKEN).int()}
    return _build(cls, config), x


def qwen2_5_vl():
    vision = transformers.Qwen2_5_VLVisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=4,
                                                 patch_size=4, spatial_merge_size=2, temporal_patch_size=2,
                                                 out_hidden_size=32, window_size=8, fullatt_block_indexes=[0])
    return qwen2_vl(transformers.Qwen2_5_VLForConditionalGeneration, transformers.Qwen2_5_VLConfig, vision)


def _siglip_text():
    return dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=VOCAB,
                max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def siglip():
    """SigLIP: two towers; the image-text logits of every image against every text."""
    config = transformers.SiglipConfig(text_config=_siglip_text(), vision_config=_siglip_vision().to_dict())
    ids = _token_ids(n_text=6, n_image=0, start=0)
    return _build(transformers.SiglipModel, config), {"input_ids": ids, "pixel_values": _pixels(B, 3, 16, 16)}


def siglip2():
    """SigLIP 2 (NaFlex): patches flattened to ``[B, N, C·P·P]`` with a patch mask and their spatial shape."""
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, patch_size=4,
                  num_patches=16)
    config = transformers.Siglip2Config(text_config=_siglip_text(), vision_config=vision)
    ids = _token_ids(n_text=6, n_image=0, start=0)
    x = {"input_ids": ids, "pixel_values": _pixels(B, 16, 3 * 4 * 4),
         "pixel_attention_mask": torch.ones(B, 16, dtype=torch.long), "spatial_shapes": torch.tensor([[4, 4]] * B)}
    return _build(transformers.Siglip2Model, config), x
