"""lrpfx.viz.image: colour maps at -max / 0 / +max, normalisation, overlays, grids and PNG files."""
import numpy as np
import pytest
import torch

from lrpfx.viz import image

# value -> expected RGB at -max, 0, +max
EXPECTED = {
    "bwr": [(0, 0, 255), (255, 255, 255), (255, 0, 0)],
    "seismic": [(0, 0, 76), (255, 255, 255), (128, 0, 0)],
    "coldnhot": [(0, 255, 255), (0, 0, 0), (255, 255, 255)],
}


@pytest.mark.parametrize("cmap", sorted(EXPECTED))
def test_colour_at_minus_max_zero_plus_max(cmap):
    relevance = torch.tensor([[[-2.5, 0.0, 2.5]]])          # [C=1, H=1, W=3]
    rgb = image.heatmap(relevance, cmap=cmap)
    assert rgb.dtype == np.uint8 and rgb.shape == (1, 3, 3)
    assert [tuple(int(v) for v in px) for px in rgb[0]] == EXPECTED[cmap]


def test_zero_colour_is_white_or_black():
    assert image.colorize(np.zeros(4), "bwr").tolist() == [[255, 255, 255]] * 4
    assert image.colorize(np.zeros(4), "seismic").tolist() == [[255, 255, 255]] * 4
    assert image.colorize(np.zeros(4), "coldnhot").tolist() == [[0, 0, 0]] * 4
    with pytest.raises(ValueError, match="unknown colour map"):
        image.colorize(np.zeros(2), "jet")


def test_symmetric_normalisation_and_percentile_clip():
    h = np.array([-1.0, 0.5, 4.0, 0.0])
    np.testing.assert_allclose(image.normalize(h), [-0.25, 0.125, 1.0, 0.0])
    clipped = image.normalize(np.concatenate([np.linspace(-1, 1, 99), [100.0]]), clip=90)
    assert clipped.max() == 1.0 and clipped.min() >= -1.0 and (clipped == 1.0).sum() > 1
    assert np.all(image.normalize(np.zeros((2, 2))) == 0)


def test_channel_reduction():
    r = np.zeros((3, 1, 2))
    r[:, 0, 0] = [1.0, -3.0, 1.0]
    r[:, 0, 1] = [1.0, 1.0, 1.0]
    np.testing.assert_allclose(image.reduce_channels(r, "sum"), [[-1.0, 3.0]])
    np.testing.assert_allclose(image.reduce_channels(r, "maxabs"), [[-3.0, 1.0]])


def test_batched_heatmap_and_overlay():
    r = torch.randn(2, 3, 8, 10)
    assert image.heatmap(r).shape == (2, 8, 10, 3)
    x = torch.rand(3, 8, 10)
    over = image.overlay(x, r[0], alpha=0.5)
    assert over.shape == (8, 10, 3) and over.dtype == np.uint8
    # zero relevance leaves the image as it is; full opacity shows the heat map
    np.testing.assert_array_equal(image.overlay(x, torch.zeros(3, 8, 10)), image.to_rgb(x))
    np.testing.assert_array_equal(image.overlay(x, r[0], alpha=1.0, by_magnitude=False), image.heatmap(r[0]))
    # a larger image: the heatmap is resized to it
    assert image.overlay(np.zeros((16, 20, 3), np.uint8), r[0]).shape == (16, 20, 3)
    # a normalised model input goes back to pixels with mean/std
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    rgb = image.to_rgb((torch.full((3, 2, 2), 0.75) - 0.5) / 0.25, mean=mean, std=std)
    assert rgb.shape == (2, 2, 3) and np.all(rgb == 191)


def test_grid_shape_and_captions():
    tiles = [np.full((8, 10, 3), i * 40, np.uint8) for i in range(5)]
    g = image.grid(tiles, nrow=3, pad=2)
    assert g.shape == (2 * (8 + 2) + 2, 3 * (10 + 2) + 2, 3)
    np.testing.assert_array_equal(g[2:10, 2:12], tiles[0])
    np.testing.assert_array_equal(g[12:20, 14:24], tiles[4])
    captioned = image.grid(tiles, nrow=5, captions=[f"c{i}" for i in range(5)])
    assert captioned.shape == (8 + image.CAPTION_HEIGHT + 4, 5 * 12 + 2, 3)
    assert image.grid(np.zeros((4, 6, 6), np.uint8), nrow=2).shape == (2 * 8 + 2, 2 * 8 + 2, 3)
    with pytest.raises(ValueError):
        image.grid(tiles, nrow=2, captions=["only one"])


@pytest.mark.parametrize("backend", ["auto", "zlib"])
@pytest.mark.parametrize("channels", [None, 3, 4])
def test_png_written_and_read_back(tmp_path, backend, channels):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    shape = (7, 13) if channels is None else (7, 13, channels)
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    path = image.save_png(a, tmp_path / "a.png", backend=backend)
    with Image.open(path) as im:
        back = np.asarray(im)
    assert back.shape == shape
    np.testing.assert_array_equal(back, a)


def test_png_from_floats(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    path = image.save_png(np.full((3, 4, 3), 0.5), tmp_path / "f.png", backend="zlib")
    with Image.open(path) as im:
        assert np.asarray(im).shape == (3, 4, 3) and np.asarray(im)[0, 0, 0] == 128
