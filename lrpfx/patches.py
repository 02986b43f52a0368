"""Pixel relevance of models whose processor flattens the image into patches (Qwen2-VL, Qwen2.5-VL, Qwen3-VL),
folded back into the image's shape.

The processor of these models hands the vision tower ``pixel_values`` of shape
``[sum over images of t·h·w, C·T·P·P]`` with ``image_grid_thw`` holding ``(t, h, w)`` per image, in patches.
Its rows run image after image; within one image they run over ``(t, h/M, w/M, M, M)``: frame group, row and
column of the ``M × M`` merge block, then row and column inside the block. Its columns run over
``(C, T, P, P)``: channel, frame inside the group, pixel row and pixel column inside the patch. Here ``P`` is
``patch_size``, ``M`` ``merge_size`` and ``T`` ``temporal_patch_size``. A still image has ``t = 1`` and the
processor writes it ``T`` times (the frames of its one group are copies); a video has ``t·T`` frames (the
processor repeats the last frame until the count divides by ``T``).

:func:`unpatchify` undoes that layout exactly (of ``pixel_values`` or of its relevance);
:func:`patch_heatmaps` also sums what belongs to one pixel, giving the heatmap of each image.
"""
from typing import Any, List, Optional, Sequence, Tuple, Union

import torch

from .errors import InputError

Grid = Union[torch.Tensor, Sequence[Sequence[int]]]

# where each size lives: on the processor (image or video), or on the model's vision config
_PROCESSOR_NAMES = {"patch_size": "patch_size", "merge_size": "merge_size",
                    "temporal_patch_size": "temporal_patch_size"}
_CONFIG_NAMES = {"patch_size": "patch_size", "merge_size": "spatial_merge_size",
                 "temporal_patch_size": "temporal_patch_size", "channels": "in_channels"}


def unpatchify(values: torch.Tensor, grid_thw: Grid, config: Any = None, *, patch_size: Optional[int] = None,
               merge_size: Optional[int] = None, temporal_patch_size: Optional[int] = None,
               channels: Optional[int] = None) -> List[torch.Tensor]:
    """The processor's flat patches back as frames: one ``[frames, C, H, W]`` tensor per image or video.

    The exact inverse of the Qwen-VL processors' patch flattening: given the processor's ``pixel_values`` it
    returns the resized, rescaled and normalised frames the processor cut into patches; given their relevance
    (``explanation.inputs["pixel_values"]``) it returns the relevance of each of those values. Nothing is added
    up: a still image comes back as its ``temporal_patch_size`` copies (use :func:`patch_heatmaps` for one map
    per image).

    Args:
        values: ``[patches, C·T·P·P]``: ``pixel_values`` / ``pixel_values_videos`` or their relevance.
        grid_thw: ``image_grid_thw`` / ``video_grid_thw`` of the same input: ``(t, h, w)`` patches per image.
        config: where to read the sizes from: the model, its config or vision config, its processor or image
            processor. Sizes given as keywords take precedence.
        patch_size: ``P``, pixels per patch side.
        merge_size: ``M``, patches per side of the block the model merges into one token.
        temporal_patch_size: ``T``, frames per patch.
        channels: ``C`` (3 unless the model's config says otherwise).

    Returns:
        One tensor per row of ``grid_thw``, ``[t·T, C, h·P, w·P]``.

    Raises:
        InputError: the grid does not account for the rows of ``values``, a grid side does not divide by the
            merge size, or the sizes do not account for the columns of ``values``.
    """
    sizes = _sizes(config, patch_size=patch_size, merge_size=merge_size, temporal_patch_size=temporal_patch_size,
                   channels=channels)
    grid = _grid(grid_thw, sizes["merge_size"])
    _check_values(values, grid, **sizes)
    rows = [t * h * w for t, h, w in grid]
    return [_unflatten(chunk, thw, **sizes) for chunk, thw in zip(values.split(rows), grid)]


def patch_heatmaps(relevance: torch.Tensor, grid_thw: Grid, config: Any = None, *, video: bool = False,
                   reduce: Optional[str] = "sum", patch_size: Optional[int] = None,
                   merge_size: Optional[int] = None, temporal_patch_size: Optional[int] = None,
                   channels: Optional[int] = None) -> List[torch.Tensor]:
    """One heatmap per image from the relevance of the processor's flat patches.

    ``lrpfx.patch_heatmaps(e.inputs["pixel_values"], x["image_grid_thw"], model)`` gives, for each image of the
    input, its ``[H, W]`` heatmap in the processor's resized image (``H = h·P``, ``W = w·P``). A still image
    reaches the vision tower as ``temporal_patch_size`` identical frames, so each pixel's relevance is what all
    its copies received: the frames are summed, as are the channels. The heatmaps hold exactly the relevance
    given (their sum is the image's share of the explained output).

    Args:
        relevance: ``[patches, C·T·P·P]``, the relevance of ``pixel_values`` (or of ``pixel_values_videos``).
        grid_thw: ``image_grid_thw`` (or ``video_grid_thw``) of the explained input.
        config: the model, its config or vision config, or its processor: where to read the sizes from.
        video: the input holds videos: keep the frames (``[t·T, H, W]`` per video) instead of summing them.
            The processor fills the last group with copies of the last frame; add those frames' maps to the
            last real frame's to count them there.
        reduce: ``"sum"`` adds up the channels; ``None`` keeps them (``[C, H, W]``, videos ``[t·T, C, H, W]``).
        patch_size: ``P``, when no ``config`` gives it (as for :func:`unpatchify`).
        merge_size: ``M``, likewise.
        temporal_patch_size: ``T``, likewise.
        channels: ``C``, likewise (3 unless the config says otherwise).

    Returns:
        One tensor per row of ``grid_thw``: ``[H, W]`` per image, ``[t·T, H, W]`` per video (``reduce="sum"``).

    Raises:
        InputError: as :func:`unpatchify`; also an image grid with more than one frame group (a video: pass
            ``video=True``) or an unknown ``reduce``.
    """
    if reduce not in ("sum", None):
        raise InputError(f"reduce={reduce!r} is not a reduction patch_heatmaps knows: pass reduce='sum' (add up "
                         "the channels) or reduce=None (keep them)")
    frames = unpatchify(relevance, grid_thw, config, patch_size=patch_size, merge_size=merge_size,
                        temporal_patch_size=temporal_patch_size, channels=channels)
    if not video:
        groups = [t for t, _, _ in _grid(grid_thw, 1)]
        if max(groups) > 1:
            raise InputError(f"grid_thw has {max(groups)} frame groups for one image, but a still image has one: "
                             "for videos (video_grid_thw, pixel_values_videos) pass video=True")
        frames = [f.sum(0) for f in frames]  # the copies of one still image: one pixel, its copies' relevance
    channel_axis = 1 if video else 0
    return [f.sum(channel_axis) if reduce == "sum" else f for f in frames]


def _unflatten(rows: torch.Tensor, thw: Tuple[int, int, int], *, patch_size: int, merge_size: int,
               temporal_patch_size: int, channels: int) -> torch.Tensor:
    """``[t·h·w, C·T·P·P]`` of one image -> ``[t·T, C, h·P, w·P]``: the processor's reshape and permute undone."""
    t, h, w = thw
    p, m, frames = patch_size, merge_size, temporal_patch_size
    x = rows.reshape(t, h // m, w // m, m, m, channels, frames, p, p)
    # axes (t, block row, block col, row in block, col in block, C, frame, pixel row, pixel col)
    x = x.permute(0, 6, 5, 1, 3, 7, 2, 4, 8)
    return x.reshape(t * frames, channels, h * p, w * p)


def _sizes(config, **given) -> dict:
    """The patch sizes: those given, else those ``config`` (model, config, vision config, processor) holds."""
    found = _sizes_of(config) if config is not None else {}
    sizes = {name: value if value is not None else found.get(name) for name, value in given.items()}
    if sizes["channels"] is None:
        sizes["channels"] = 3
    missing = [name for name, value in sizes.items() if value is None]
    if missing:
        where = f"{type(config).__name__} holds none of them" if config is not None else "no config was given"
        raise InputError(f"the patch layout needs {', '.join(missing)}; {where}: pass the model, its config or "
                         f"its processor as config=, or the sizes as keywords ({', '.join(f'{n}=' for n in missing)})")
    for name, value in sizes.items():
        if isinstance(value, (list, tuple)):
            if len(set(value)) != 1:
                raise InputError(f"{name}={value} is not square: patch_heatmaps reads the Qwen-VL layout, whose "
                                 "patches have equal sides")
            sizes[name] = value[0]
        if not isinstance(sizes[name], int) or sizes[name] < 1:
            raise InputError(f"{name}={sizes[name]!r} must be a positive integer")
    return sizes


def _sizes_of(source) -> dict:
    """Read the sizes from a model (``.config``), a config (``.vision_config``), a vision config, a processor
    (``.image_processor``) or an image / video processor."""
    source = getattr(source, "config", source)
    source = getattr(source, "vision_config", None) or getattr(source, "image_processor", None) or source
    names = _PROCESSOR_NAMES if hasattr(source, "merge_size") else _CONFIG_NAMES
    return {ours: getattr(source, theirs) for ours, theirs in names.items() if getattr(source, theirs, None)}


def _grid(grid_thw: Grid, merge_size: int) -> List[Tuple[int, int, int]]:
    """``grid_thw`` as ``(t, h, w)`` integer triples whose sides divide by the merge size."""
    grid = torch.as_tensor(grid_thw)
    if grid.dim() != 2 or grid.shape[1] != 3 or grid.is_floating_point() or grid.is_complex():
        raise InputError(f"grid_thw must be integers of shape [images, 3] (image_grid_thw / video_grid_thw as the "
                         f"processor returns it), got {tuple(grid.shape)} of {grid.dtype}")
    triples = [tuple(int(v) for v in row) for row in grid.tolist()]
    for i, (t, h, w) in enumerate(triples):
        if min(t, h, w) < 1 or h % merge_size or w % merge_size:
            raise InputError(f"grid_thw[{i}] = {(t, h, w)}: every entry must be positive and h, w multiples of "
                             f"merge_size={merge_size}; pass the grid the processor returned with these values and "
                             "the merge size of the model's processor")
    return triples


def _check_values(values: torch.Tensor, grid, *, patch_size, merge_size, temporal_patch_size, channels) -> None:
    if not isinstance(values, torch.Tensor) or values.dim() != 2:
        shape = tuple(values.shape) if isinstance(values, torch.Tensor) else type(values).__name__
        raise InputError(f"expected the processor's flat patches [patches, C·T·P·P] (pixel_values of a Qwen-VL "
                         f"model, or its relevance), got {shape}: one explanation's e.inputs['pixel_values'] has "
                         "this shape; for a per-token result, pass one token's slice")
    rows = sum(t * h * w for t, h, w in grid)
    if values.shape[0] != rows:
        raise InputError(f"got {values.shape[0]} patch rows but grid_thw {grid} accounts for {rows} "
                         "(sum of t·h·w): pass the grid of the same input (image_grid_thw with pixel_values, "
                         "video_grid_thw with pixel_values_videos)")
    width = channels * temporal_patch_size * patch_size ** 2
    if values.shape[1] != width:
        raise InputError(f"each patch row holds {values.shape[1]} values, but channels·temporal_patch_size·"
                         f"patch_size² = {channels}·{temporal_patch_size}·{patch_size}² = {width}"
                         f"{_suggest(values.shape[1], channels, temporal_patch_size)}: pass the sizes of the model's "
                         "processor (config=model or config=processor)")


def _suggest(width: int, channels: int, temporal_patch_size: int) -> str:
    """A patch size that would fit the row width with the other sizes kept, if there is one."""
    area, rest = divmod(width, channels * temporal_patch_size)
    side = round(area ** 0.5)
    return f" (patch_size={side} would fit)" if not rest and side * side == area else ""
