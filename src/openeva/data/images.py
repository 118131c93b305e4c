"""The one way openeva opens an image: file or bytes -> fully decoded RGB PIL image.

Every reader (caption indexes, class folders, tar shards, IDX arrays, the coming embed / serve commands) goes
through :func:`open_rgb`, lists images with :data:`IMAGE_EXTENSIONS` and catches :data:`DECODE_ERRORS`.
:func:`prepare_sample` is the skip rule shared by every dataset: any failure while preparing one sample
(missing file, undecodable bytes, an exception inside an augmentation) skips and counts that sample; it never
ends a run.
"""

from __future__ import annotations

import io
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from openeva.data.loader import record_skip
from openeva.data.sources import is_local, list_files, read_bytes

__all__ = ["DECODE_ERRORS", "IMAGE_EXTENSIONS", "MAX_ASPECT", "ImageShapeError", "check_image_shape", "list_images",
           "load_image", "open_rgb", "prepare_sample"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".pgm")
# What PIL raises on unreadable / truncated / hostile image data (UnidentifiedImageError is an OSError).
DECODE_ERRORS = (OSError, ValueError, SyntaxError, struct.error, EOFError, Image.DecompressionBombError)


# Longer side / shorter side beyond which an image is refused before decoding: preprocessing scales the shorter
# side to the model's input, so a 1 x 65535 strip would become a 224 x 14.7M image (10 GB). 64:1 keeps panoramas.
MAX_ASPECT = 64.0


class ImageShapeError(ValueError):
    """An image whose size cannot be preprocessed safely (empty, or too elongated); a decode error for skipping."""


def check_image_shape(width: int, height: int, max_aspect: float = MAX_ASPECT) -> None:
    """Refuse (``ImageShapeError``) an empty image or one more elongated than ``max_aspect``: read from the header,
    before any pixel is decoded."""
    if width < 1 or height < 1:
        raise ImageShapeError(f"image has no pixels ({width}x{height})")
    if max(width, height) > max_aspect * min(width, height):
        raise ImageShapeError(f"image is {width}x{height}, more elongated than {max_aspect:g}:1 (resizing its "
                              "shorter side to the model's input would need gigabytes)")


def open_rgb(source: str | Path | bytes) -> Image.Image:
    """Decode an image file, URL (:mod:`openeva.data.sources`, read whole with retries) or bytes fully (so
    truncation errors surface here) as RGB; raises DECODE_ERRORS (FileNotFoundError for a missing file or
    object; an elongated or empty image, by :func:`check_image_shape`, a ValueError)."""
    if isinstance(source, str) and not is_local(source):
        try:
            source = read_bytes(source)
        except OSError:
            raise
        except Exception as err:  # noqa: BLE001 - a store's own error types (botocore, aiohttp): unreadable
            raise OSError(f"cannot read {source}: {type(err).__name__}: {err}") from err
    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    with Image.open(handle) as image:
        check_image_shape(*image.size)
        image.load()
        return image.convert("RGB")


def load_image(source: str | Path | bytes) -> Image.Image:
    """:func:`open_rgb` with user-facing errors: FileNotFoundError for a missing path, ValueError naming it else."""
    if isinstance(source, (str, Path)) and is_local(str(source)) and not Path(source).exists():
        raise FileNotFoundError(f"image file not found: {source}")
    try:
        return open_rgb(source)
    except DECODE_ERRORS as err:
        name = "<bytes>" if isinstance(source, (bytes, bytearray)) else str(source)
        raise ValueError(f"cannot decode image {name}: {err}") from err


def list_images(root: str | Path, recursive: bool = True) -> list[Path] | list[str]:
    """The image files under ``root`` (by :data:`IMAGE_EXTENSIONS`, case-insensitive), sorted; hidden files skipped.

    Paths for a local folder; URLs (str) for a folder in a store (``s3://bucket/images/``)."""
    if not is_local(str(root)):
        return list_files(root, IMAGE_EXTENSIONS, recursive=recursive)
    root = Path(root)
    pattern = root.rglob("*") if recursive else root.glob("*")
    return sorted(p for p in pattern if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
                  and p.is_file())


def prepare_sample(
    load: Callable[[], Image.Image],
    transform: Callable[[Image.Image], Any] | None,
    skipped: Counter,
    name: str,
) -> Any | None:
    """``transform(load())``, or None with the reason counted in ``skipped`` when any step fails.

    Reasons: ``missing_file`` (FileNotFoundError), ``corrupt_image`` (:data:`DECODE_ERRORS`) and
    ``transform_error`` (any exception raised by the transform, e.g. an augmentation that cannot handle one
    image). One bad sample never ends a run; the first few of each reason are logged with ``name``.
    """
    try:
        image = load()
    except FileNotFoundError:
        record_skip(skipped, "missing_file", name)
        return None
    except DECODE_ERRORS as err:
        record_skip(skipped, "corrupt_image", f"{name}: {err}")
        return None
    if transform is None:
        return image
    try:
        return transform(image)
    except Exception as err:  # noqa: BLE001 - any augmentation failure is this one sample's problem
        record_skip(skipped, "transform_error", f"{name}: {type(err).__name__}: {err}")
        return None
