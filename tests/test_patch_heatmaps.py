"""Heatmaps from the flat patches of the Qwen-VL processors (``lrpfx.unpatchify``, ``lrpfx.patch_heatmaps``).

The references are Hugging Face's own processors, built locally: fed the processor's ``pixel_values``,
``unpatchify`` must give back the image the processor resized and normalised (and the frames of a video); fed a
relevance the processor's own ``patchify`` flattened from known per-frame maps, ``patch_heatmaps`` must give back
those maps summed over the copies of a still image and over the channels. End to end on a tiny Qwen2-VL with a
bias-free conserving rule: pixels the processor made zero get no relevance, the heatmaps have the image's shape,
and heatmaps plus token relevance add up to the explained logit.
"""
from types import SimpleNamespace

import pytest
import torch

import lrpfx
from lrpfx.composites import CPLRP
from lrpfx.errors import InputError

transformers = pytest.importorskip("transformers")
pytest.importorskip("torchvision")  # the processors' tensor backend
from tests.helpers import vlm_models as vlm  # noqa: E402  (needs transformers)

pytestmark = pytest.mark.usefixtures("one_thread")

P, M, T = 4, 2, 2  # patch size, merge size, temporal patch size of the tiny model in tests/helpers/vlm_models.py
MEAN, STD = [0.1, 0.2, 0.3], [0.5, 0.6, 0.7]
SIZES = dict(patch_size=P, merge_size=M, temporal_patch_size=T)


def processor(cls=None, **extra):
    cls = cls or transformers.Qwen2VLImageProcessor
    return cls(**SIZES, do_rescale=False, image_mean=MEAN, image_std=STD, min_pixels=64, max_pixels=4096, **extra)


def normalised(image):
    """The processor's normalisation, written out: ``(x - mean) / std`` per channel."""
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    return (image - mean) / std


def images(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for h, w in shapes]


def assert_frames_are(frames, expected):
    """``frames`` [T, C, H, W]: every copy is the expected image."""
    assert frames.shape == (T,) + expected.shape
    for copy in frames:
        torch.testing.assert_close(copy, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["torchvision", "pil"])
def test_the_processors_patches_come_back_as_its_images(backend):
    """Sides that are multiples of P·M: the processor does not resize, so the frames are the normalised images."""
    batch = images((16, 24), (8, 8), (24, 16))  # three sizes, grouped by shape inside the processor
    if backend == "pil":
        proc = processor(transformers.Qwen2VLImageProcessorPil, do_resize=False)
        out = proc([image.numpy() for image in batch], return_tensors="pt")
    else:
        proc = processor(do_resize=False)
        out = proc(batch, return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 4, 6], [1, 2, 2], [1, 6, 4]]
    frames = lrpfx.unpatchify(out["pixel_values"], out["image_grid_thw"], proc)
    assert len(frames) == 3
    for got, image in zip(frames, batch):
        assert_frames_are(got, normalised(image))


def test_a_resized_image_comes_back_as_the_processor_resized_it():
    proc = processor()
    image = images((13, 21))[0]
    out = proc([image], return_tensors="pt")
    resized = proc.resize(image[None], proc.size, proc.resample, factor=P * M)[0]  # the processor's own resize
    assert resized.shape == (3, 16, 24)
    (frames,) = lrpfx.unpatchify(out["pixel_values"], out["image_grid_thw"], proc)
    assert_frames_are(frames, normalised(resized))


def test_video_frames_come_back_in_order_with_the_padding_copy_last():
    proc = transformers.Qwen2VLVideoProcessor(**SIZES, do_resize=False, do_rescale=False, image_mean=MEAN,
                                              image_std=STD, do_sample_frames=False)
    g = torch.Generator().manual_seed(1)
    video = torch.rand(5, 3, 8, 16, generator=g)  # 5 frames: the processor repeats the last to make 6 = 3·T
    out = proc(videos=[video], return_tensors="pt", cap_pixels_per_frame=False)
    assert out["video_grid_thw"].tolist() == [[3, 2, 4]]
    (frames,) = lrpfx.unpatchify(out["pixel_values_videos"], out["video_grid_thw"], proc)
    expected = normalised(torch.cat([video, video[-1:]]))
    torch.testing.assert_close(frames, expected, rtol=1e-6, atol=1e-6)


def flatten(maps, proc):
    """Per-frame maps ``[frames, C, H, W]`` in the processor's patch layout, by the video processor's own code
    (a still image is its one frame group: the layout of the image processor with ``t = 1``)."""
    flat, *_ = proc.patchify(maps[None], patch_size=P, merge_size=M, temporal_patch_size=T)
    return flat[0]


def video_processor():
    return transformers.Qwen2VLVideoProcessor(**SIZES)


def test_heatmaps_sum_the_copies_and_channels_and_conserve_relevance():
    g = torch.Generator().manual_seed(2)
    maps = [torch.randn(T, 3, 16, 24, generator=g, dtype=torch.float64),  # the two copies get different relevance
            torch.randn(T, 3, 8, 8, generator=g, dtype=torch.float64)]
    relevance = torch.cat([flatten(m, video_processor()) for m in maps])
    grid = torch.tensor([[1, 4, 6], [1, 2, 2]])
    heat = lrpfx.patch_heatmaps(relevance, grid, **SIZES)
    assert [h.shape for h in heat] == [(16, 24), (8, 8)]
    for h, m, rows in zip(heat, maps, relevance.split([24, 4])):
        torch.testing.assert_close(h, m.sum((0, 1)), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(h.sum(), rows.sum(), rtol=1e-12, atol=1e-12)  # conservation per image
    kept = lrpfx.patch_heatmaps(relevance, grid, reduce=None, **SIZES)
    for k, m in zip(kept, maps):
        torch.testing.assert_close(k, m.sum(0), rtol=1e-12, atol=1e-12)


def test_video_heatmaps_keep_the_frames():
    g = torch.Generator().manual_seed(3)
    maps = [torch.randn(4, 3, 8, 16, generator=g, dtype=torch.float64),
            torch.randn(2, 3, 16, 8, generator=g, dtype=torch.float64)]
    relevance = torch.cat([flatten(m, video_processor()) for m in maps])
    grid = torch.tensor([[2, 2, 4], [1, 4, 2]])
    heat = lrpfx.patch_heatmaps(relevance, grid, video=True, **SIZES)
    for h, m in zip(heat, maps):
        torch.testing.assert_close(h, m.sum(1), rtol=1e-12, atol=1e-12)
    kept = lrpfx.patch_heatmaps(relevance, grid, video=True, reduce=None, **SIZES)
    for k, m in zip(kept, maps):
        torch.testing.assert_close(k, m, rtol=0, atol=0)


def test_sizes_are_read_from_the_model_its_configs_or_its_processors():
    model, x = vlm.qwen2_vl()
    expected = lrpfx.unpatchify(x["pixel_values"], x["image_grid_thw"], **SIZES)
    proc = processor()
    for source in (model, model.config, model.config.vision_config, proc, SimpleNamespace(image_processor=proc),
                   video_processor()):
        got = lrpfx.unpatchify(x["pixel_values"], x["image_grid_thw"], source)
        assert all(torch.equal(a, b) for a, b in zip(got, expected)), type(source).__name__
    # a keyword overrides the source: the model's 4-pixel patches read with patch_size=2 and 4x the channels
    wide = lrpfx.unpatchify(x["pixel_values"], x["image_grid_thw"], model, patch_size=2, channels=12)
    assert wide[0].shape == (T, 12, 8, 8)


def test_qwen2_vl_pixel_relevance_folds_into_heatmaps_of_the_images():
    model, x = vlm.qwen2_vl()
    proc = processor(do_resize=False, do_normalize=False)
    batch = [image.double() - 0.5 for image in images((16, 16), (16, 16), seed=4)]
    batch[0][:, 2:7, 3:13] = 0  # a block that straddles patches and merge blocks: zero pixels get no relevance
    out = proc(batch, return_tensors="pt")
    x = dict(x, pixel_values=out["pixel_values"], image_grid_thw=out["image_grid_thw"])
    e = lrpfx.Explainer(model, CPLRP(epsilon=0.0, zero_bias=True))(x)
    logit = e.output.gather(1, e.output.argmax(1, keepdim=True))[:, 0]

    heat = lrpfx.patch_heatmaps(e.inputs["pixel_values"], x["image_grid_thw"], model)
    assert [h.shape for h in heat] == [(16, 16), (16, 16)]
    totals = torch.stack([h.sum() for h in heat])
    torch.testing.assert_close(totals, e.inputs["pixel_values"].reshape(2, -1).sum(1), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(totals + e.tokens.sum(1), logit, rtol=1e-6, atol=1e-10)
    zero = torch.zeros(16, 16, dtype=torch.bool)
    zero[2:7, 3:13] = True
    assert heat[0][zero].abs().max() == 0
    assert (heat[0][~zero] != 0).all() and (heat[1] != 0).all()


@pytest.mark.parametrize("change, message", [
    (dict(grid=[[1, 4, 4]]), r"32 patch rows but grid_thw .* accounts for 16 .*pass the grid of the same input"),
    (dict(patch_size=2), r"96 values.*= 24.*\(patch_size=4 would fit\).*sizes of the model's processor"),
    (dict(grid=[[1, 4, 4], [1.0, 4, 4]]), r"grid_thw must be integers of shape \[images, 3\]"),
    (dict(grid=[[1, 4, 4], [1, 2, 8]], merge_size=4), r"grid_thw\[1\] = \(1, 2, 8\).*multiples of merge_size=4"),
    (dict(grid=[[2, 4, 2], [1, 4, 4]]), r"2 frame groups for one image.*pass video=True"),
    (dict(reduce="mean"), r"reduce='mean'.*reduce='sum'.*reduce=None"),
    (dict(values=torch.zeros(2, 32, 96)), r"flat patches \[patches, C·T·P·P\].*got \(2, 32, 96\)"),
])
def test_bad_inputs_name_the_problem_and_the_fix(change, message):
    change = dict(change)
    values = change.pop("values", torch.zeros(32, 96))
    grid = torch.tensor(change.pop("grid", [[1, 4, 4], [1, 4, 4]]))
    with pytest.raises(InputError, match=message):
        lrpfx.patch_heatmaps(values, grid, **{**SIZES, **change})


def test_missing_sizes_say_where_to_find_them():
    with pytest.raises(InputError, match=r"needs patch_size, merge_size, temporal_patch_size; no config was given"):
        lrpfx.patch_heatmaps(torch.zeros(16, 96), torch.tensor([[1, 4, 4]]))
    with pytest.raises(InputError, match=r"needs merge_size; object holds none of them.*config="):
        lrpfx.patch_heatmaps(torch.zeros(16, 96), torch.tensor([[1, 4, 4]]), object(), patch_size=4,
                             temporal_patch_size=2)
