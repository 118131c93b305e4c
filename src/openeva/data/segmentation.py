"""Semantic segmentation data: a folder of images paired by file stem with a folder of label masks.

    data/images/0001.jpg   data/masks/0001.png   (single-channel PNG: pixel value = class id)

Mask values: 0 = background, ``k`` (1..C) = the k-th class name, 255 = ignore (unlabelled), as ADE20K /
mmseg's ``reduce_zero_label=False`` layout reads. Pairing is checked when the folder is opened (an image without
a mask, or a mask without an image, is an error naming the files); a mask whose size differs from its image, or
an RGB mask, is an error naming the pair when that sample is read.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from openeva.data.images import IMAGE_EXTENSIONS, load_image

MASK_EXTENSIONS = (".png", ".bmp", ".tif", ".tiff")  # lossless only: a JPEG mask has wrong class ids at edges
IGNORE_INDEX = 255


def _files(folder: Path, exts) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            if p.stem in out:
                raise ValueError(f"{folder} has two files with the stem {p.stem!r}: {out[p.stem].name}, {p.name}")
            out[p.stem] = p
    return out


def resolve_folders(dataset: str | Path, masks: str | Path | None = None) -> tuple[Path, Path]:
    """``dataset`` is the image folder (with ``masks``), or a folder holding ``images/`` and ``masks/``."""
    root = Path(dataset)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation dataset folder not found: {root}")
    if masks is not None:
        mask_dir = Path(masks)
        if not mask_dir.is_dir():
            raise FileNotFoundError(f"mask folder not found: {mask_dir}")
        return root, mask_dir
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return root / "images", root / "masks"
    raise ValueError(f"{root}: pass the mask folder (--masks) or lay the dataset out as {root}/images and "
                     f"{root}/masks")


class SegmentationFolder:
    """``ds[i] -> (PIL image, (H, W) uint8 mask)``; ``names[i]`` is the shared file stem."""

    def __init__(self, images: str | Path, masks: str | Path | None = None, classnames: list[str] | None = None,
                 name: str | None = None):
        image_dir, mask_dir = resolve_folders(images, masks)
        imgs, msks = _files(image_dir, IMAGE_EXTENSIONS), _files(mask_dir, MASK_EXTENSIONS)
        no_mask, no_image = sorted(set(imgs) - set(msks)), sorted(set(msks) - set(imgs))
        if no_mask or no_image:
            parts = []
            if no_mask:
                parts.append(f"{len(no_mask)} image(s) without a mask in {mask_dir} (e.g. {no_mask[:5]})")
            if no_image:
                parts.append(f"{len(no_image)} mask(s) without an image in {image_dir} (e.g. {no_image[:5]})")
            raise ValueError("segmentation dataset pairs images and masks by file stem: " + "; ".join(parts))
        if not imgs:
            raise ValueError(f"no images found in {image_dir} (extensions {', '.join(IMAGE_EXTENSIONS)})")
        self.names = sorted(imgs)
        self.image_paths = [imgs[n] for n in self.names]
        self.mask_paths = [msks[n] for n in self.names]
        self.classnames = list(classnames) if classnames is not None else None
        self.name = name or (image_dir.parent.name if image_dir.name == "images" else image_dir.name)

    def __len__(self) -> int:
        return len(self.names)

    def load_mask(self, index: int) -> np.ndarray:
        path = self.mask_paths[index]
        try:
            with Image.open(path) as m:
                if m.mode not in ("L", "P", "I", "I;16", "1"):
                    raise ValueError(f"mask {path} is {m.mode}; masks must be single-channel label PNGs "
                                     "(pixel value = class id)")
                arr = np.asarray(m)
        except (OSError, SyntaxError) as e:
            raise ValueError(f"cannot decode mask {path}: {e}") from e
        if arr.max(initial=0) > IGNORE_INDEX:
            raise ValueError(f"mask {path} has label {int(arr.max())} > {IGNORE_INDEX}")
        return arr.astype(np.uint8)  # (H, W)

    def check_labels(self, mask: np.ndarray, index: int) -> None:
        if self.classnames is None:
            return
        labels = np.unique(mask)
        bad = labels[(labels > len(self.classnames)) & (labels != IGNORE_INDEX)]
        if bad.size:
            raise ValueError(f"mask {self.mask_paths[index]} has label(s) {bad.tolist()} but only "
                             f"{len(self.classnames)} class names were given (1..{len(self.classnames)}; "
                             f"0 = background, {IGNORE_INDEX} = ignore)")

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        image = load_image(self.image_paths[index])
        mask = self.load_mask(index)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask {self.mask_paths[index].name} is {mask.shape[1]}x{mask.shape[0]} but image "
                             f"{self.image_paths[index].name} is {image.width}x{image.height}; masks must match "
                             "their image's size")
        self.check_labels(mask, index)
        return image, mask


def write_segmentation_folder(root: str | Path, samples, classnames: list[str]) -> Path:
    """Write ``(PIL image, mask)`` pairs as ``root/images/*.png`` + ``root/masks/*.png`` + ``classnames.txt``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i, (image, mask) in enumerate(samples):
        image.save(root / "images" / f"{i:05d}.png")
        Image.fromarray(np.asarray(mask, dtype=np.uint8), mode="L").save(root / "masks" / f"{i:05d}.png")
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n", encoding="utf-8")
    return root
