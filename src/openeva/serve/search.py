"""Text or image queries against an :class:`~openeva.index.Index`: a table, JSON, or a thumbnail grid."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from openeva.data.images import open_rgb
from openeva.data.collection import DECODE_ERRORS, load_source
from openeva.serve.encoder import Encoder
from openeva.index import Index


def encode_query(encoder: Encoder, text: str | None = None, image=None) -> np.ndarray:
    """One (1, D) unit query vector from a text or an image (path, bytes or PIL image)."""
    if (text is None) == (image is None):
        raise ValueError("give exactly one of a text or an image query")
    if text is not None:
        if not text.strip():
            raise ValueError("the text query is empty")
        return encoder.encode_texts([text])  # (1, D)
    if not isinstance(image, Image.Image):
        try:
            image = open_rgb(image)
        except FileNotFoundError:
            raise FileNotFoundError(f"query image not found: {image}") from None
        except DECODE_ERRORS as err:
            raise ValueError(f"cannot read the query image {image}: {err}") from None
    return encoder.encode_images(encoder.preprocess(image.convert("RGB"))[None])  # (1, D)


def search(index: Index, encoder: Encoder, text: str | None = None, image=None, k: int = 10) -> list[dict]:
    """Ranked hits for one text or image query."""
    index.check_compatible(encoder.info)
    return index.search(encode_query(encoder, text=text, image=image), k)[0]


def format_table(hits: list[dict]) -> str:
    lines = [f"{'rank':>4}  {'score':>7}  {'id':<40}  caption"]
    for h in hits:
        caption = (h.get("caption") or "")[:60]
        lines.append(f"{h['rank']:>4}  {h['score']:>7.4f}  {str(h['id'])[:40]:<40}  {caption}")
    return "\n".join(lines)


def thumbnail(index: Index, row: int, size: int = 256) -> Image.Image:
    """The image of index row ``row``, shrunk to fit ``size`` (read only from the index's own sources)."""
    image = load_source(index.meta[row]["source"])
    image.thumbnail((size, size))
    return image


def draw_grid(index: Index, hits: list[dict], path, cell: int = 160, columns: int = 5) -> str:
    """Write a PNG grid of the hits' thumbnails, each labelled with its rank and score."""
    if not hits:
        raise ValueError("no results to draw")
    rows = (len(hits) + columns - 1) // columns
    label_h = 18
    grid = Image.new("RGB", (columns * cell, rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    for n, hit in enumerate(hits):
        x, y = (n % columns) * cell, (n // columns) * (cell + label_h)
        try:
            thumb = ImageOps.contain(load_source(index.meta[hit["row"]]["source"]), (cell - 8, cell - 8))
            grid.paste(thumb, (x + (cell - thumb.width) // 2, y + (cell - thumb.height) // 2))
        except (FileNotFoundError, *DECODE_ERRORS):
            draw.text((x + 8, y + cell // 2), "(unreadable)", fill="red")
        draw.text((x + 4, y + cell + 2), f"#{hit['rank']}  {hit['score']:.3f}", fill="black")
    grid.save(path)
    return str(path)
