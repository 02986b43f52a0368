"""Loading the input to explain: an image file (preprocessed like the model's training data), a ``torch.save``'d
tensor, or a random tensor of a given shape."""
from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from ..viz import image as img
from .errors import CliError
from .models import LoadedModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class PreparedInput(NamedTuple):
    x: Any                       # the model input, [B, ...]
    display: Any                 # RGB uint8 [H, W, 3] of the (cropped) image, or None
    description: str


def prepare_image(path: str, loaded: LoadedModel, size: Optional[int], device: str = "cpu") -> PreparedInput:
    """Load an image and turn it into a model input: the weights' own transforms when the model has named
    weights, else resize (short side size*256/224), center-crop ``size`` (224) and ImageNet normalisation."""
    file = Path(path)
    if not file.is_file():
        raise CliError(f"image file not found: {path}")
    try:
        from PIL import Image  # optional: only --image needs Pillow
    except ImportError as exc:
        raise CliError("--image needs Pillow: pip install pillow (or pass a tensor with --input)") from exc
    try:
        with Image.open(file) as opened:
            pil = opened.convert("RGB")
    except Exception as exc:
        raise CliError(f"cannot read {path} as an image: {' '.join(str(exc).split())}") from exc
    if loaded.transforms is not None:
        preset = loaded.transforms(crop_size=size, resize_size=round(size * 256 / 224)) if size else \
            loaded.transforms()
        x = preset(pil).unsqueeze(0)
        mean, std = tuple(preset.mean), tuple(preset.std)
    else:
        crop = size or 224
        resize = round(crop * 256 / 224)
        w, h = pil.size
        scale = resize / min(w, h)
        pil = pil.resize((max(crop, round(w * scale)), max(crop, round(h * scale))), Image.BILINEAR)
        left, top = (pil.size[0] - crop) // 2, (pil.size[1] - crop) // 2
        pil = pil.crop((left, top, left + crop, top + crop))
        a = (np.asarray(pil, dtype=np.float32) / 255.0 - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
        x = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1))).unsqueeze(0)
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    display = img.to_rgb(x[0], mean=mean, std=std)
    return PreparedInput(x.to(device), display, f"{path} -> {tuple(x.shape)}")


def load_input(path: str, device: str = "cpu") -> PreparedInput:
    """A ``torch.save``'d tensor (or a dict holding exactly one tensor, or under 'x'/'input')."""
    file = Path(path)
    if not file.is_file():
        raise CliError(f"input file not found: {path}")
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CliError(f"cannot read {path} with torch.load: {' '.join(str(exc).split())[:300]}") from exc
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        key = next((k for k in ("x", "input", "inputs") if k in tensors), None)
        if key is None and len(tensors) == 1:
            key = next(iter(tensors))
        if key is None:
            raise CliError(f"{path} holds a dict; save one tensor, or put it under the key 'x'")
        obj = tensors[key]
    if not isinstance(obj, torch.Tensor):
        raise CliError(f"{path} holds {type(obj).__name__}, not a tensor")
    return PreparedInput(obj.to(device), None, f"{path} -> {tuple(obj.shape)}")


def input_for(args, loaded: LoadedModel, default_shape: str = "1,3,224,224") -> PreparedInput:
    """The input of --image, --input or (``graph``) a seeded random tensor of --shape."""
    if args.image:
        return prepare_image(args.image, loaded, args.size, args.device)
    if args.input:
        return load_input(args.input, args.device)
    text = getattr(args, "shape", None) or default_shape
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise CliError(f"--shape takes comma-separated integers such as 1,3,224,224, got '{text}'")
    if not shape or any(s < 1 for s in shape):
        raise CliError(f"--shape takes positive sizes such as 1,3,224,224, got '{text}'")
    generator = torch.Generator().manual_seed(0)
    return PreparedInput(torch.randn(shape, generator=generator).to(args.device), None,
                         f"random {tuple(shape)}")


