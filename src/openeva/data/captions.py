"""Image-caption datasets from an index file (CSV / TSV / JSONL) or a folder of images with .txt captions.

The index, the folder and the images may be URLs (:mod:`openeva.data.sources`): ``s3://bucket/captions.csv``
with image paths relative to the index's URL, or ``s3://bucket/pairs/`` (a folder of images and captions in a
store that lists folders; plain HTTP cannot list one, and says so).

Problems with the index itself (missing file, missing column, unreadable rows) raise at construction,
before any compute. Problems with individual samples (missing image, corrupt image, failing augmentation,
missing or empty caption) never raise: ``__getitem__`` returns ``None`` and counts the reason in
``dataset.skipped``; use :func:`openeva.data.loader.collate_skip_none` as the DataLoader collate fn.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from openeva.data.images import IMAGE_EXTENSIONS, list_images, open_rgb, prepare_sample
from openeva.data.index import read_index, resolve_listed_path
from openeva.data.loader import record_skip
from openeva.data.sources import is_local, join_source, parent_of, read_text, source_kind

__all__ = ["CaptionDataset", "ImageTextFolder", "clean_caption"]


def clean_caption(value: Any) -> str | None:
    """A usable caption string, or None. Lists (several captions per image) give their first caption."""
    if isinstance(value, (list, tuple)) and value:
        value = value[0]
    if not isinstance(value, str):
        return None
    return " ".join(value.split())


class _PairSource:
    """Shared skip-and-count logic: turn (image source, caption) into a sample or None."""

    transform: Callable[[Image.Image], Any] | None
    tokenizer: Callable[[list[str]], Any] | None
    skipped: Counter
    images_only: bool = False  # MIM: captions are ignored, so a missing one is no reason to skip

    def _make_sample(self, image_source: str | Path | bytes | None, caption: Any, name: str) -> tuple | None:
        text = ""
        if not self.images_only:
            text = clean_caption(caption)
            if not text:
                record_skip(self.skipped, "missing_caption" if text is None else "empty_caption", name)
                return None
        if image_source is None:
            record_skip(self.skipped, "missing_file", name)
            return None
        out_image = prepare_sample(partial(open_rgb, image_source), self.transform, self.skipped, name)
        if out_image is None:
            return None
        out_text = self.tokenizer([text])[0] if self.tokenizer is not None and not self.images_only else text
        return out_image, out_text


class CaptionDataset(_PairSource):
    """Map-style image-caption pairs listed in a CSV, TSV or JSONL file: ``ds[i] -> (image, text) | None``.

    ``image_key`` / ``caption_key`` name the columns (open_clip's ``filepath`` / ``title`` by default).
    Relative image paths resolve against ``root`` when given, else against the index file's folder and then the
    working directory (:func:`~openeva.data.index.resolve_listed_path`). ``sep`` overrides the
    CSV/TSV delimiter (e.g. a tab-separated file named ``.csv``). ``images_only=True`` (MIM) needs no caption
    column and yields ``(image, "")``.
    """

    def __init__(
        self,
        path: str | Path,
        image_key: str = "filepath",
        caption_key: str = "title",
        root: str | Path | None = None,
        transform: Callable[[Image.Image], Any] | None = None,
        tokenizer: Callable[[list[str]], Any] | None = None,
        sep: str | None = None,
        images_only: bool = False,
    ) -> None:
        self.path = Path(path) if is_local(str(path)) else str(path)
        if source_kind(self.path) != "file":
            raise FileNotFoundError(f"caption index file not found: {self.path}")
        self.root = (Path(root) if is_local(str(root)) else str(root)) if root is not None else (
            self.path.parent if isinstance(self.path, Path) else parent_of(self.path))
        self.explicit_root = root is not None
        if isinstance(self.root, Path) and not self.root.is_dir():
            raise FileNotFoundError(f"image root folder not found: {self.root}")
        rows, columns = read_index(self.path, sep)
        roles = [("image_key", image_key)] + ([] if images_only else [("caption_key", caption_key)])
        for role, key in roles:
            if key not in columns:
                hint = " (only one column was found: is sep right?)" if len(columns) == 1 else ""
                raise ValueError(
                    f"{role}={key!r} is not a column of {self.path}; available columns: {columns}{hint}"
                )
        self.name = str(self.path).rstrip("/").rsplit("/", 1)[-1]
        if not rows:
            raise ValueError(f"caption index {self.path} has no rows")
        self.image_paths: list[Any] = [row.get(image_key) for row in rows]
        self.captions: list[Any] = [row.get(caption_key) for row in rows]
        self.images_only = images_only
        self.transform = transform
        self.tokenizer = tokenizer
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.captions)

    def caption(self, index: int) -> str | None:
        """The cleaned caption of row ``index`` (None if unusable)."""
        return clean_caption(self.captions[index])

    def image_path(self, index: int) -> Path | str | None:
        """Where row ``index``'s image is: a path, or a URL (a URL index's relative paths join its URL)."""
        value = self.image_paths[index]
        if not isinstance(value, str) or not value.strip():
            return None
        if self.explicit_root:
            if isinstance(self.root, Path) and is_local(value.strip()):
                return self.root / value.strip()  # an absolute value replaces root
            return join_source(self.root, value.strip())
        return resolve_listed_path(value.strip(), self.root)

    def __getitem__(self, index: int) -> tuple[Any, Any] | None:
        image_path = self.image_path(index)
        source = str(image_path) if isinstance(image_path, str) else image_path  # open_rgb reads a URL string
        return self._make_sample(source, self.captions[index], f"{self.name} row {index}: {image_path}")


class ImageTextFolder(_PairSource):
    """Images under ``root`` (any of ``IMAGE_EXTENSIONS``, searched recursively) with same-name ``.txt`` captions.

    ``ds[i] -> (image, text) | None``; an image without a caption file counts as ``missing_caption``, unless
    ``images_only=True`` (MIM: any folder of images, e.g. one sub-folder per class), which yields ``(image, "")``.
    ``root`` may be a folder URL in a store that lists folders (``s3://bucket/pairs/``): images and captions are
    then read by URL, one request each.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        tokenizer: Callable[[list[str]], Any] | None = None,
        recursive: bool = True,
        images_only: bool = False,
    ) -> None:
        self.root = Path(root) if is_local(str(root)) else str(root)
        if source_kind(self.root) != "dir":
            raise FileNotFoundError(f"image-text folder not found: {self.root}")
        self.image_paths = list_images(self.root, recursive)
        if not self.image_paths:
            raise ValueError(f"no images with extensions {IMAGE_EXTENSIONS} found in {self.root}")
        self.images_only = images_only
        self.transform = transform
        self.tokenizer = tokenizer
        self.skipped: Counter = Counter()

    def __len__(self) -> int:
        return len(self.image_paths)

    def caption(self, index: int) -> str | None:
        image = self.image_paths[index]
        try:
            if isinstance(image, Path):
                return clean_caption(image.with_suffix(".txt").read_text(encoding="utf-8", errors="replace"))
            stem = image.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            return clean_caption(read_text(join_source(parent_of(image), stem + ".txt")))
        except OSError:
            return None

    def __getitem__(self, index: int) -> tuple[Any, Any] | None:
        image_path = self.image_paths[index]
        caption = None if self.images_only else self.caption(index)
        return self._make_sample(image_path, caption, str(image_path))
