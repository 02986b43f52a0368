"""Relevance as pictures: heatmaps, colour maps, overlays, grids and PNG files, with numpy alone.

    from lrpfx import image
    heat = image.heatmap(R[0], cmap="bwr", clip=99.5)      # uint8 [H, W, 3], zero relevance is white
    both = image.overlay(x[0], R[0], mean=..., std=...)     # the input with the heatmap blended over it
    image.save_png(image.grid([heat, both], nrow=2, captions=["relevance", "overlay"]), "heat.png")

A relevance map is reduced over its channel axis (``sum``, or ``maxabs``: the signed value of largest
magnitude), normalised symmetrically around zero into ``[-1, 1]`` (``|R| / max|R|``, optionally clipped at a
percentile of ``|R|`` first) and coloured by a piecewise-linear colour map. Pillow, when importable, writes the
PNG files and draws grid captions; without it a small zlib PNG writer is used. matplotlib is only used by the
optional :func:`figure` helper.
"""
from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np

# position in [0, 1] (0 = -max, 0.5 = zero, 1 = +max) -> RGB in [0, 1]
COLORMAPS: Dict[str, Tuple[Tuple[float, Tuple[float, float, float]], ...]] = {
    # blue, white at zero, red (matplotlib's bwr)
    "bwr": ((0.0, (0.0, 0.0, 1.0)), (0.5, (1.0, 1.0, 1.0)), (1.0, (1.0, 0.0, 0.0))),
    # dark blue, blue, white at zero, red, dark red (matplotlib's seismic)
    "seismic": ((0.0, (0.0, 0.0, 0.3)), (0.25, (0.0, 0.0, 1.0)), (0.5, (1.0, 1.0, 1.0)),
                (0.75, (1.0, 0.0, 0.0)), (1.0, (0.5, 0.0, 0.0))),
    # cyan, blue, black at zero, red, yellow, white (Zennit's coldnhot)
    "coldnhot": ((0.0, (0.0, 1.0, 1.0)), (0.25, (0.0, 0.0, 1.0)), (0.5, (0.0, 0.0, 0.0)),
                 (2 / 3, (1.0, 0.0, 0.0)), (5 / 6, (1.0, 1.0, 0.0)), (1.0, (1.0, 1.0, 1.0))),
}
REDUCTIONS = ("sum", "maxabs")


# ---- conversions ----------------------------------------------------------------------------------------------
def to_numpy(x) -> np.ndarray:
    """A numpy array from a numpy array or a torch tensor (detached, on the CPU, float32 for floats)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.float()
        x = x.numpy()
    return np.asarray(x)


def reduce_channels(relevance, reduce: str = "sum", channel_axis: int = -3) -> np.ndarray:
    """``[..., C, H, W] -> [..., H, W]`` by ``sum`` or ``maxabs`` (the signed value of largest magnitude);
    2-D maps ``[H, W]`` are returned as they are."""
    r = to_numpy(relevance).astype(np.float64, copy=False)
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    if r.ndim < 3:
        return r
    if reduce == "sum":
        return r.sum(axis=channel_axis)
    index = np.expand_dims(np.abs(r).argmax(axis=channel_axis), channel_axis)
    return np.take_along_axis(r, index, axis=channel_axis).squeeze(channel_axis)


def normalize(heat, clip: Optional[float] = None, bound: Optional[float] = None) -> np.ndarray:
    """Scale a map symmetrically into ``[-1, 1]``: divide by ``bound`` (default ``max|heat|``, or the
    ``clip``-th percentile of ``|heat|`` when ``clip`` is given, e.g. 99.5) and clip. Zero stays zero; an
    all-zero map stays all zero."""
    h = to_numpy(heat).astype(np.float64, copy=False)
    if bound is None:
        magnitude = np.abs(h[np.isfinite(h)])
        if magnitude.size == 0:
            bound = 0.0
        elif clip is not None:
            if not 0 < clip <= 100:
                raise ValueError(f"clip is a percentile in (0, 100], got {clip}")
            bound = float(np.percentile(magnitude, clip))
        else:
            bound = float(magnitude.max())
    if not bound > 0:
        return np.zeros_like(h)
    return np.clip(np.nan_to_num(h / bound), -1.0, 1.0)


def colorize(values, cmap: str = "bwr") -> np.ndarray:
    """Map values in ``[-1, 1]`` to RGB uint8 (shape ``values.shape + (3,)``) with a named colour map:
    ``bwr`` and ``seismic`` are white at zero, ``coldnhot`` is black at zero."""
    if cmap not in COLORMAPS:
        raise ValueError(f"unknown colour map {cmap!r}: use one of {', '.join(COLORMAPS)}")
    stops = COLORMAPS[cmap]
    position = (np.clip(to_numpy(values).astype(np.float64), -1.0, 1.0) + 1.0) / 2.0
    xs = np.array([p for p, _ in stops])
    channels = [np.interp(position, xs, np.array([c[i] for _, c in stops])) for i in range(3)]
    return np.round(np.stack(channels, axis=-1) * 255.0).astype(np.uint8)


def heatmap(relevance, cmap: str = "bwr", reduce: str = "sum", clip: Optional[float] = None,
            bound: Optional[float] = None, shared: bool = False) -> np.ndarray:
    """Relevance ``[C, H, W]``, ``[H, W]`` or a batch ``[B, C, H, W]`` as RGB uint8 ``[H, W, 3]`` (``[B, H, W,
    3]``). Each map is normalised on its own, or with ``shared=True`` a batch shares one scale."""
    r = to_numpy(relevance)
    if r.ndim == 4:
        maps = reduce_channels(r, reduce)
        if shared:
            return colorize(normalize(maps, clip, bound), cmap)
        return np.stack([colorize(normalize(m, clip, bound), cmap) for m in maps])
    if r.ndim not in (2, 3):
        raise ValueError(f"expected relevance shaped [C, H, W], [H, W] or [B, C, H, W], got {tuple(r.shape)}")
    return colorize(normalize(reduce_channels(r, reduce), clip, bound), cmap)


def to_rgb(image, mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> np.ndarray:
    """An image as RGB uint8 ``[H, W, 3]``: from uint8 ``[H, W(, 3)]``, floats in ``[0, 1]`` ``[H, W(, C)]``, or
    a model input ``[C, H, W]`` (tensor or array; ``mean``/``std`` undo its normalisation)."""
    a = to_numpy(image)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    channels_first = a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4)
    if a.ndim == 3 and (channels_first or (hasattr(image, "detach") and a.shape[0] in (1, 3))):
        a = np.moveaxis(a, 0, -1)
    if a.dtype != np.uint8:
        a = a.astype(np.float64)
        if std is not None:
            a = a * np.asarray(std, dtype=np.float64)
        if mean is not None:
            a = a + np.asarray(mean, dtype=np.float64)
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    if a.shape[-1] == 4:
        a = a[..., :3]
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"cannot read an image of shape {tuple(to_numpy(image).shape)}")
    return np.ascontiguousarray(a)


def resize_nearest(array: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``[H, W, ...]``."""
    h, w = array.shape[:2]
    rows = np.minimum((np.arange(height) + 0.5) * h / height, h - 1).astype(int)
    cols = np.minimum((np.arange(width) + 0.5) * w / width, w - 1).astype(int)
    return array[rows][:, cols]


def overlay(image, relevance, alpha: float = 0.6, cmap: str = "bwr", reduce: str = "sum",
            clip: Optional[float] = None, by_magnitude: bool = True, gray: bool = False,
            mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None) -> np.ndarray:
    """The heatmap of ``relevance`` blended over ``image`` (see :func:`to_rgb`), RGB uint8 ``[H, W, 3]``.

    ``alpha`` is the heatmap's opacity; with ``by_magnitude`` (default) it is scaled per pixel by the normalised
    ``|R|``, so pixels without relevance show the image unchanged. ``gray`` turns the image to grey first. The
    heatmap is resized (nearest) to the image when their sizes differ.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    base = to_rgb(image, mean, std).astype(np.float64)
    if gray:
        base = np.repeat((base @ np.array([0.299, 0.587, 0.114]))[..., None], 3, axis=-1)
    values = normalize(reduce_channels(relevance, reduce), clip)
    if values.ndim != 2:
        raise ValueError(f"overlay takes one relevance map [C, H, W] or [H, W], got {tuple(values.shape)}")
    heat = colorize(values, cmap).astype(np.float64)
    if heat.shape[:2] != base.shape[:2]:
        heat = resize_nearest(heat, *base.shape[:2])
        values = resize_nearest(values, *base.shape[:2])
    weight = alpha * (np.abs(values)[..., None] if by_magnitude else 1.0)
    return np.round((1.0 - weight) * base + weight * heat).astype(np.uint8)


# ---- grids and files ------------------------------------------------------------------------------------------
CAPTION_HEIGHT = 12


def grid(images, nrow: int = 8, captions: Optional[Sequence[str]] = None, pad: int = 2,
         background: int = 255) -> np.ndarray:
    """Tile images (a list of ``[H, W(, 3)]`` uint8 arrays, or an array ``[N, H, W(, 3)]``) into one RGB uint8
    image with ``nrow`` images per row and ``pad`` pixels around each; ``captions`` adds a text line under each
    image (drawn with Pillow when importable; without it the line stays blank). Images of different sizes are
    placed top-left in cells of the largest size."""
    tiles = [to_rgb(im) for im in images]
    if not tiles:
        raise ValueError("grid needs at least one image")
    if nrow < 1:
        raise ValueError(f"nrow must be >= 1, got {nrow}")
    if captions is not None and len(captions) != len(tiles):
        raise ValueError(f"got {len(captions)} captions for {len(tiles)} images")
    cell_h = max(t.shape[0] for t in tiles) + (CAPTION_HEIGHT if captions is not None else 0)
    cell_w = max(t.shape[1] for t in tiles)
    cols = min(nrow, len(tiles))
    rows = -(-len(tiles) // nrow)
    out = np.full((rows * (cell_h + pad) + pad, cols * (cell_w + pad) + pad, 3), background, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        top = pad + (i // nrow) * (cell_h + pad)
        left = pad + (i % nrow) * (cell_w + pad)
        out[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    if captions is not None:
        _draw_captions(out, captions, rows, cols, cell_h, cell_w, pad, nrow, background)
    return out


def _draw_captions(out, captions, rows, cols, cell_h, cell_w, pad, nrow, background) -> None:
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        return
    canvas = Image.fromarray(out)
    draw = ImageDraw.Draw(canvas)
    ink = (0, 0, 0) if background > 127 else (255, 255, 255)
    for i, text in enumerate(captions):
        top = pad + (i // nrow) * (cell_h + pad) + cell_h - CAPTION_HEIGHT
        left = pad + (i % nrow) * (cell_w + pad)
        draw.text((left + 1, top), _fit(draw, str(text), cell_w - 2), fill=ink)
    out[...] = np.asarray(canvas)


def _fit(draw, text: str, width: int) -> str:
    while text and draw.textlength(text) > width:
        text = text[:-4] + "..." if len(text) > 4 else ""
    return text


def upscale(array, min_side: int = 192):
    """An image ``[H, W(, C)]`` enlarged by the smallest whole factor that makes its shorter side at least
    ``min_side`` pixels (nearest neighbour: every input pixel stays one sharp block), unchanged if it already is.
    Relevance of small inputs (8×8 digits, 28×28 MNIST) is unreadable at one screen pixel per input pixel."""
    a = to_numpy(array)
    factor = -(-min_side // max(1, min(a.shape[0], a.shape[1])))
    if factor <= 1:
        return a
    return a.repeat(factor, axis=0).repeat(factor, axis=1)


def save_png(array, path: Union[str, Path], backend: str = "auto") -> Path:
    """Write an image (uint8 or floats in ``[0, 1]``; ``[H, W]``, ``[H, W, 3]`` or ``[H, W, 4]``) as PNG. Uses
    Pillow when importable (``backend="auto"``), else (or with ``backend="zlib"``) a small numpy+zlib writer."""
    a = to_numpy(array)
    if a.dtype != np.uint8:
        a = np.round(np.clip(a.astype(np.float64), 0.0, 1.0) * 255.0).astype(np.uint8)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4))):
        raise ValueError(f"save_png takes [H, W], [H, W, 3] or [H, W, 4], got {tuple(a.shape)}")
    path = Path(path)
    if backend not in ("auto", "pillow", "zlib"):
        raise ValueError(f"backend must be 'auto', 'pillow' or 'zlib', got {backend!r}")
    if backend != "zlib":
        try:
            from PIL import Image
        except ImportError:
            if backend == "pillow":
                raise
        else:
            Image.fromarray(np.ascontiguousarray(a)).save(path, format="PNG")
            return path
    path.write_bytes(png_bytes(a))
    return path


def png_bytes(a: np.ndarray) -> bytes:
    """PNG encoding of a uint8 ``[H, W]`` / ``[H, W, 3]`` / ``[H, W, 4]`` array (no filtering, zlib level 6)."""
    a = np.ascontiguousarray(a, dtype=np.uint8)
    height, width = a.shape[:2]
    color_type = {2: 0, 3: 2 if a.ndim == 3 and a.shape[-1] == 3 else 6}[a.ndim]
    rows = a.reshape(height, -1)
    raw = np.concatenate([np.zeros((height, 1), dtype=np.uint8), rows], axis=1).tobytes()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


# ---- matplotlib (optional) ------------------------------------------------------------------------------------
def figure(relevances, images=None, titles: Optional[Sequence[str]] = None, cmap: str = "bwr",
           reduce: str = "sum", clip: Optional[float] = None, size: float = 2.0, **overlay_options):
    """A matplotlib figure with one column per sample: the heatmap, and over it the overlay when ``images`` is
    given. Needs matplotlib; returns the Figure."""
    import matplotlib.pyplot as plt

    r = to_numpy(relevances)
    if r.ndim == 3:
        r = r[None]
    n = r.shape[0]
    nrows = 1 if images is None else 2
    fig, axes = plt.subplots(nrows, n, figsize=(size * n, size * nrows), squeeze=False)
    for j in range(n):
        axes[0][j].imshow(heatmap(r[j], cmap=cmap, reduce=reduce, clip=clip))
        if titles is not None:
            axes[0][j].set_title(str(titles[j]), fontsize=8)
        if images is not None:
            axes[1][j].imshow(overlay(images[j], r[j], cmap=cmap, reduce=reduce, clip=clip, **overlay_options))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
