"""Held-out zoo: architectures that are not in the repository's tests (Hugging Face text, vision and audio, timm,
torchvision classification, segmentation and video, hand-written graph, UNet, point-cloud and Siamese models), from
random-weight configs. ``run_one.py NAME`` explains one with ``rule="auto"`` in a subprocess; ``PL`` names the
piecewise-linear networks, where LRP-0 must equal gradient × input. Results: bench/RESULTS_heldout.md."""
import os
import sys
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import torch
from torch import nn
import torch.nn.functional as F
from tests.helpers.breadth_zoo import Case, _hf, _decoder, _encoder, _seq2seq, _vision, images, text_inputs, VOCAB, BATCH

PL = set()  # piecewise-linear CNNs: LRP-0 must equal gradient x input


def timm_(name, size=64, **kw):
    import timm
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=5, **kw).double().eval()
    for p in model.get_classifier().parameters():  # some families start the head at zero: a constant output
        if p.dim() > 1 and p.abs().sum() == 0:
            nn.init.normal_(p, std=0.1)
    return Case(model, images(size))


def resmlp():
    case = timm_("resmlp_12_224", size=32, img_size=32)
    nn.init.normal_(case.model.head.weight, std=0.1)  # timm starts the head at zero: the output is then constant
    return case


def tv(name, size=32, **kw):
    import torchvision
    torch.manual_seed(0)
    ctor = getattr(torchvision.models, name, None) or getattr(torchvision.models.segmentation, name, None) \
        or getattr(torchvision.models.video, name)
    return ctor(weights=None, num_classes=5, **kw).double().eval()


class UNet(nn.Module):
    def __init__(s, up="bilinear"):
        super().__init__()
        s.up = up
        s.e1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        s.e2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU())
        s.t = nn.ConvTranspose2d(16, 16, 2, stride=2)
        s.d = nn.Sequential(nn.Conv2d(24, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    def forward(s, x):
        a = s.e1(x)
        b = s.e2(F.max_pool2d(a, 2))
        u = torch.cat([F.interpolate(b, scale_factor=2, mode=s.up), s.t(b)[:, :0]], 1) if s.up else s.t(b)
        u = torch.cat([u, a], 1)
        return s.d(u).mean((2, 3))


class GCN(nn.Module):
    """Graph convolution with message passing by index_add over an edge list (a constant of the graph)."""
    def __init__(s):
        super().__init__()
        s.l1, s.l2, s.out = nn.Linear(6, 16), nn.Linear(16, 16), nn.Linear(16, 3)
        g = torch.Generator().manual_seed(0)
        s.register_buffer("src", torch.randint(0, 10, (30,), generator=g))
        s.register_buffer("dst", torch.randint(0, 10, (30,), generator=g))
    def propagate(s, h):
        msg = h[:, s.src]
        return h + torch.zeros_like(h).index_add(1, s.dst, msg)
    def forward(s, x):  # x: [batch, nodes, features]
        h = s.propagate(s.l1(x)).relu()
        h = s.propagate(s.l2(h)).relu()
        return s.out(h.max(1).values)


class PointNet(nn.Module):
    def __init__(s):
        super().__init__()
        s.f = nn.Sequential(nn.Conv1d(3, 16, 1), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 32, 1), nn.ReLU())
        s.h = nn.Sequential(nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    def forward(s, x):
        return s.h(s.f(x).amax(2))


class Siamese(nn.Module):
    def __init__(s):
        super().__init__()
        s.enc = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 8))
        s.head = nn.Linear(8, 2)
    def forward(s, a, b):
        return s.head((s.enc(a) - s.enc(b)).abs())


class LSTMTagger(nn.Module):
    def __init__(s):
        super().__init__()
        s.emb = nn.Embedding(VOCAB, 16); s.rnn = nn.GRU(16, 16, batch_first=True, bidirectional=True); s.fc = nn.Linear(32, 3)
    def forward(s, ids):
        return s.fc(s.rnn(s.emb(ids))[0][:, -1])


def hand(model, x, pl=False):
    torch.manual_seed(0)
    return Case(model.double().eval(), x)


def img(n=2, c=3, s=16, seed=1):
    return torch.randn(n, c, s, s, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


V = dict(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, num_labels=3)

ZOO = {
    # Hugging Face text
    "hf-gptj": lambda: Case(_hf("GPTJForCausalLM", "GPTJConfig", n_embd=32, n_layer=2, n_head=4, rotary_dim=4, vocab_size=VOCAB, n_positions=64), text_inputs(True)),
    "hf-stablelm": lambda: _decoder("StableLmForCausalLM", "StableLmConfig", num_key_value_heads=2),
    "hf-olmo2": lambda: _decoder("Olmo2ForCausalLM", "Olmo2Config", num_key_value_heads=2),
    "hf-cohere": lambda: _decoder("CohereForCausalLM", "CohereConfig", num_key_value_heads=2),
    "hf-granite": lambda: _decoder("GraniteForCausalLM", "GraniteConfig", num_key_value_heads=2),
    "hf-starcoder2": lambda: _decoder("Starcoder2ForCausalLM", "Starcoder2Config", num_key_value_heads=2),
    "hf-xglm": lambda: Case(_hf("XGLMForCausalLM", "XGLMConfig", d_model=32, num_layers=2, attention_heads=4, ffn_dim=64, vocab_size=VOCAB, max_position_embeddings=64), text_inputs(True)),
    "hf-mobilebert": lambda: _encoder("MobileBertForSequenceClassification", "MobileBertConfig", embedding_size=16, intra_bottleneck_size=16, true_hidden_size=16, num_feedforward_networks=2),
    "hf-convbert": lambda: _encoder("ConvBertForSequenceClassification", "ConvBertConfig", embedding_size=16),
    "hf-fnet": lambda: Case(_hf("FNetForSequenceClassification", "FNetConfig", hidden_size=32, num_hidden_layers=2, intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=64, num_labels=3, use_tpu_fourier_optimizations=False), {"input_ids": text_inputs(False)["input_ids"]}),
    "hf-mpnet": lambda: _encoder("MPNetForSequenceClassification", "MPNetConfig"),
    "hf-xlm-roberta": lambda: Case(_hf("XLMRobertaForSequenceClassification", "XLMRobertaConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB, max_position_embeddings=70, num_labels=3, pad_token_id=1), text_inputs(False)),
    "hf-marian": lambda: _seq2seq("MarianMTModel", "MarianConfig", d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, vocab_size=VOCAB, max_position_embeddings=64, pad_token_id=0, decoder_start_token_id=0),
    # Hugging Face vision and audio
    "hf-dinov2": lambda: _vision("Dinov2ForImageClassification", "Dinov2Config", **V),
    "hf-segformer": lambda: _vision("SegformerForImageClassification", "SegformerConfig", num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], num_labels=3),
    "hf-resnet": lambda: _vision("ResNetForImageClassification", "ResNetConfig", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], num_labels=3),
    "hf-regnet": lambda: _vision("RegNetForImageClassification", "RegNetConfig", embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1], groups_width=8, num_labels=3, layer_type="x"),
    "hf-pvt-v2": lambda: _vision("PvtV2ForImageClassification", "PvtV2Config", hidden_sizes=[16, 32], depths=[1, 1], num_encoder_blocks=2, sr_ratios=[2, 1], num_attention_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2], num_labels=3),
    "hf-cvt": lambda: _vision("CvtForImageClassification", "CvtConfig", embed_dim=[16, 32, 32], num_heads=[1, 2, 2], depth=[1, 2, 3], num_labels=3),
    "hf-focalnet": lambda: _vision("FocalNetForImageClassification", "FocalNetConfig", embed_dim=16, depths=[1, 1], focal_levels=[2, 2], focal_windows=[3, 3], image_size=32, patch_size=4, num_labels=3),
    "hf-mobilevitv2": lambda: _vision("MobileViTV2ForImageClassification", "MobileViTV2Config", image_size=64, width_multiplier=0.25, num_labels=3, size=64),
    "hf-hubert": lambda: Case(_hf("HubertForSequenceClassification", "HubertConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(4, 2), conv_kernel=(8, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, num_labels=3, vocab_size=VOCAB, mask_time_prob=0.0), {"input_values": torch.randn(BATCH, 400, dtype=torch.float64)}),
    "hf-wavlm": lambda: Case(_hf("WavLMForSequenceClassification", "WavLMConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, conv_dim=(16, 16), conv_stride=(4, 2), conv_kernel=(8, 4), num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, num_labels=3, vocab_size=VOCAB, mask_time_prob=0.0, num_buckets=16, max_bucket_distance=32), {"input_values": torch.randn(BATCH, 400, dtype=torch.float64)}),
    "hf-ast": lambda: Case(_hf("ASTForAudioClassification", "ASTConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, patch_size=8, frequency_stride=8, time_stride=8, max_length=32, num_mel_bins=16, num_labels=3), {"input_values": torch.randn(BATCH, 32, 16, dtype=torch.float64)}),
    # timm
    "timm-mobilevitv2_050": lambda: timm_("mobilevitv2_050"),
    "timm-resmlp_12": lambda: resmlp(),
    "timm-poolformer_s12": lambda: timm_("poolformer_s12"),
    "timm-ghostnet_050": lambda: timm_("ghostnet_050"),
    "timm-dla34": lambda: timm_("dla34"),
    "timm-rexnet_100": lambda: timm_("rexnet_100"),
    "timm-cspresnet50": lambda: timm_("cspresnet50"),
    "timm-nf_resnet26": lambda: timm_("nf_resnet26"),
    "timm-gcvit_xxtiny": lambda: timm_("gcvit_xxtiny", size=224),
    "timm-edgenext_xx_small": lambda: timm_("edgenext_xx_small"),
    "timm-pit_ti": lambda: timm_("pit_ti_224", size=224),
    "timm-xcit_nano": lambda: timm_("xcit_nano_12_p16_224", size=32, img_size=32),
    "timm-sequencer2d_s": lambda: timm_("sequencer2d_s", size=32, img_size=32),
    "timm-resnest14d": lambda: timm_("resnest14d"),
    "timm-convmixer_768_32": lambda: timm_("convmixer_768_32", size=32),
    "timm-vgg11_bn": lambda: timm_("vgg11_bn", size=32),
    "timm-mobileone_s0": lambda: timm_("mobileone_s0"),
    "timm-tinynet_e": lambda: timm_("tinynet_e"),
    # torchvision
    "tv-mobilenet_v2": lambda: Case(tv("mobilenet_v2"), images(32)),
    "tv-shufflenet_v2": lambda: Case(tv("shufflenet_v2_x0_5"), images(32)),
    "tv-squeezenet": lambda: Case(tv("squeezenet1_1"), images(64)),
    "tv-mnasnet": lambda: Case(tv("mnasnet0_5"), images(32)),
    "tv-regnet_x": lambda: Case(tv("regnet_x_400mf"), images(32)),
    "tv-vgg11": lambda: Case(tv("vgg11"), images(32)),
    "tv-googlenet": lambda: Case(tv("googlenet", aux_logits=False, init_weights=True), images(32)),
    "tv-convnext_tiny": lambda: Case(tv("convnext_tiny"), images(32)),
    "tv-swin_v2_t": lambda: Case(tv("swin_v2_t"), images(64)),
    "tv-efficientnet_v2_s": lambda: Case(tv("efficientnet_v2_s"), images(32)),
    "tv-fcn_resnet50": lambda: Case(tv("fcn_resnet50", weights_backbone=None, aux_loss=False), images(32), {"output": lambda o: o["out"].mean((2, 3))}),
    "tv-deeplabv3_mobilenet": lambda: Case(tv("deeplabv3_mobilenet_v3_large", weights_backbone=None), images(32), {"output": lambda o: o["out"].mean((2, 3))}),
    "tv-lraspp": lambda: Case(tv("lraspp_mobilenet_v3_large", weights_backbone=None), images(32), {"output": lambda o: o["out"].mean((2, 3))}),
    "tv-r3d_18": lambda: Case(tv("r3d_18"), torch.randn(2, 3, 4, 16, 16, dtype=torch.float64)),
    "tv-r2plus1d_18": lambda: Case(tv("r2plus1d_18"), torch.randn(2, 3, 4, 16, 16, dtype=torch.float64)),
    "tv-s3d": lambda: Case(tv("s3d"), torch.randn(1, 3, 16, 224, 224, dtype=torch.float64)),
    # hand-written
    "unet-bilinear": lambda: hand(UNet("bilinear"), img()),
    "unet-transpose": lambda: hand(UNet(None), img()),
    "gcn-index-add": lambda: hand(GCN(), torch.randn(2, 10, 6, dtype=torch.float64)),
    "pointnet": lambda: hand(PointNet(), torch.randn(2, 3, 20, dtype=torch.float64)),
    "siamese": lambda: hand(Siamese(), (img(c=1, s=8), img(c=1, s=8, seed=2))),
    "gru-tagger": lambda: hand(LSTMTagger(), torch.randint(0, VOCAB, (2, 6))),
}
PL |= {"tv-shufflenet_v2", "tv-squeezenet", "tv-mnasnet", "tv-regnet_x", "tv-vgg11", "tv-googlenet",
       "tv-fcn_resnet50", "tv-r3d_18", "tv-r2plus1d_18", "tv-s3d", "tv-mobilenet_v2", "timm-dla34", "timm-vgg11_bn",
       "timm-cspresnet50", "unet-bilinear", "unet-transpose", "gcn-index-add", "pointnet", "hf-resnet", "hf-regnet"}
