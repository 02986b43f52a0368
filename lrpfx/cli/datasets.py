"""Loading the data set of ``explain-dataset`` and ``evaluate``: ``--dataset SPEC`` (a factory's data set, loader
or tensors) or ``--images DIR`` (a folder of image files), cut to ``--limit``."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..data import as_source
from .arguments import import_attribute
from .errors import CliError
from .inputs import prepare_image
from .models import LoadedModel

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


class ImageFiles:
    """A map-style data set over the images under ``root`` (sorted by path), preprocessed as in ``explain``;
    items are ``(x, label)`` when every image sits in a subfolder (labels: sorted subfolder names), else x."""

    def __init__(self, root: str, loaded: LoadedModel, size: Optional[int]):
        folder = Path(root)
        if not folder.is_dir():
            raise CliError(f"image folder not found: {root}")
        self.files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.files:
            raise CliError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {root}")
        parts = [p.relative_to(folder).parts for p in self.files]
        self.classes = sorted({q[0] for q in parts}) if all(len(q) > 1 for q in parts) else None
        self.labels = [self.classes.index(q[0]) for q in parts] if self.classes else None
        self.loaded, self.size = loaded._replace(model=None), size  # no model in the (picklable) data set

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        x = prepare_image(str(self.files[i]), self.loaded, self.size).x[0]
        return x if self.labels is None else (x, self.labels[i])


def load_dataset(args, loaded: LoadedModel):
    """The data set of ``--dataset SPEC`` (the factory's result) or ``--images DIR``, cut to ``--limit``."""
    if args.images:
        data = ImageFiles(args.images, loaded, args.size)
    else:
        obj = import_attribute(args.dataset, "--dataset")
        data = obj() if callable(obj) and not isinstance(obj, torch.utils.data.Dataset) else obj
        if isinstance(data, torch.utils.data.DataLoader):
            pass
        elif not (isinstance(data, (torch.Tensor, torch.utils.data.Dataset, tuple, list))
                  or hasattr(data, "__getitem__")):
            raise CliError(f"--dataset {args.dataset}: the factory returned {type(data).__name__}, not a data set, "
                           "a DataLoader or tensors")
    if args.limit is not None:
        if args.limit < 1:
            raise CliError(f"--limit must be >= 1, got {args.limit}")
        source = as_source(data)
        subset = torch.utils.data.Subset(source.dataset, range(min(args.limit, len(source))))
        if isinstance(data, torch.utils.data.DataLoader):  # keep its collate_fn and workers
            return torch.utils.data.DataLoader(subset, batch_size=data.batch_size, collate_fn=data.collate_fn,
                                               num_workers=data.num_workers)
        return subset
    return data


