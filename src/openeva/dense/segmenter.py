"""``OpenVocabSegmenter``: label an image with free-text class names, and draw the result.

    seg = OpenVocabSegmenter.from_pretrained("EVA02-B-16", "merged2b_s8b_b131k")
    result = seg.segment("street.jpg", ["sky", "road", "car"], bg_threshold=0.5)
    result.labels          # (H, W) uint8 at the image's size: 0 = background, k + 1 = labels[k]
    overlay(result).save("overlay.png")

The image is resized (not cropped) so its shorter side matches the model's input size and both sides are
multiples of the patch size (the tower resamples its position table and RoPE grid to any grid), then the
class logits are upsampled back to the original size, so the label map covers every pixel of the input.
A very elongated image has its longer side capped at ``max_aspect`` times the input size (the shorter side then
falls below it), so the token grid stays bounded. The full-size label map is made in row chunks from the
low-resolution logits (``segment_labels``); the (C, H, W) probabilities are only made if ``result.scores`` is
read, so a 24 MP photo costs its label map, not gigabytes of float32 logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from openeva.data.images import load_image
from openeva.data.transforms import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from openeva.dense.segment import (
    DEFAULT_TEMPLATES,
    DenseOptions,
    dense_embeddings,
    image_tower,
    segment_labels,
    segment_logits,
    segment_probs,
    upsampled_labels,
)
from openeva.evaluators.text import prompt_classifier, text_encoder, zeroshot_classifier
from openeva.factory import create_model, get_tokenizer, preprocess_cfg

BACKGROUND = "background"
MAX_ASPECT = 8.0  # longer side of the model input at most this many times the tower's input size


def parse_labels(labels: str | Sequence[str]) -> list[str]:
    """``"sky, road,car"`` / a list -> clean names; a clear error for none or duplicates."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    names = [str(n).strip() for n in items if str(n).strip()]
    if not names:
        raise ValueError("no labels given; pass class names, e.g. --labels 'sky,road,car'")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"labels repeat {dupes}; each class name must appear once")
    if len(names) > 254:
        raise ValueError(f"at most 254 labels fit an 8-bit label map, got {len(names)}")
    return names


def model_input(image: Image.Image, visual, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                max_aspect: float = MAX_ASPECT) -> torch.Tensor:
    """PIL image -> (1, 3, h, w) normalised tensor, shorter side = the tower's input size, sides % patch == 0.

    The longer side is capped at ``max_aspect`` x the input size (then the shorter side is smaller, at least one
    patch): a 100 x 20000 strip would otherwise become a 224 x 44800 input, 200 times the tokens of a square."""
    if max_aspect < 1:
        raise ValueError(f"max_aspect must be >= 1, got {max_aspect}")
    base = min(visual.cfg.img_size)
    patch = getattr(visual, "patch_size", None) or visual.cfg.patch_size  # a timm tower: its feature stride
    w, h = image.size
    if w < 1 or h < 1:
        raise ValueError(f"cannot segment an empty image ({w}x{h} pixels)")
    scale = min(base / min(w, h), max_aspect * base / max(w, h))
    nh = max(patch, round(h * scale / patch) * patch)
    nw = max(patch, round(w * scale / patch) * patch)
    img = image.convert("RGB").resize((nw, nh), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, h, w)
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    return x.unsqueeze(0)


class SegmentationResult:
    """``labels`` (H, W) uint8 (0 = background, k + 1 = ``names[k]``), ``scores`` (C, H, W) class probabilities.

    ``scores`` may be given, or is made on first read from ``logits``, the low-resolution (C [+ 1], h, w) class
    logits (softmax over all of them, the first C kept): 4 * C * H * W bytes that ``segment`` does not spend
    unless they are asked for."""

    def __init__(self, image: Image.Image, labels: np.ndarray, names: Sequence[str],
                 scores: torch.Tensor | None = None, logits: torch.Tensor | None = None):
        if scores is None and logits is None:
            raise ValueError("SegmentationResult needs scores or the low-resolution logits they come from")
        self.image, self.labels, self.names = image, labels, list(names)
        self._scores, self.logits = scores, logits

    @property
    def scores(self) -> torch.Tensor:
        if self._scores is None:
            self._scores = segment_probs(self.logits.unsqueeze(0), self.labels.shape, len(self.names))[0]
        return self._scores

    def __repr__(self) -> str:
        return f"SegmentationResult(names={self.names}, labels={self.labels.shape})"

    def areas(self) -> dict[str, float]:
        """Fraction of the image given to each name (and to background)."""
        total = self.labels.size
        out = {BACKGROUND: float((self.labels == 0).sum()) / total}
        for k, n in enumerate(self.names):
            out[n] = float((self.labels == k + 1).sum()) / total
        return out


class OpenVocabSegmenter:
    """A CLIP model + tokenizer ready to segment images against any class names (text classifiers cached)."""

    def __init__(self, model, tokenizer: Callable, templates: Sequence[str] = DEFAULT_TEMPLATES,
                 options: DenseOptions = DenseOptions(), mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD,
                 device: str | torch.device = "cpu"):
        self.visual = image_tower(model)
        if not hasattr(model, "encode_text"):
            raise TypeError(f"{type(model).__name__} has no text tower; open-vocabulary segmentation needs a CLIP")
        if not templates:
            raise ValueError("templates must contain at least one prompt template")
        self.model = model.to(device).eval()
        self.tokenizer, self.templates, self.options = tokenizer, list(templates), options
        self.mean, self.std, self.device = tuple(mean), tuple(std), torch.device(device)
        self._classifiers: dict[tuple[str, ...], torch.Tensor] = {}

    @classmethod
    def from_pretrained(cls, model_name: str, pretrained: str | None = None, **kwargs) -> "OpenVocabSegmenter":
        """Build the named model (tag or checkpoint path) with its tokenizer and normalisation."""
        model = create_model(model_name, pretrained)
        pcfg = preprocess_cfg(model)
        kwargs.setdefault("mean", pcfg.get("mean", OPENAI_CLIP_MEAN))
        kwargs.setdefault("std", pcfg.get("std", OPENAI_CLIP_STD))
        return cls(model, get_tokenizer(model_name), **kwargs)

    def classifier(self, names: Sequence[str], background: Sequence[str] = ()) -> torch.Tensor:
        """(E, C) prompt-ensembled, normalised text embeddings of ``names``; with ``background`` prompts (used
        verbatim, averaged) one more column (E, C + 1) for the background class."""
        key = (tuple(names), tuple(background))
        if key not in self._classifiers:
            encode = text_encoder(self.model, self.tokenizer, device=self.device)
            w = zeroshot_classifier(encode, names, self.templates)  # (E, C)
            if background:  # the background prompts, used verbatim, ensembled as one more class
                w = torch.cat([w, prompt_classifier(encode, [list(background)])], dim=1)  # (E, C + 1)
            self._classifiers[key] = w
        return self._classifiers[key]

    @torch.no_grad()
    def _dense(self, image: Image.Image) -> torch.Tensor:
        x = model_input(image, self.visual, self.mean, self.std).to(self.device)  # (1, 3, h, w)
        return dense_embeddings(self.model, x, self.options)  # (1, E, gh, gw)

    @torch.no_grad()
    def logits(self, image: Image.Image, names: Sequence[str], out_size: tuple[int, int] | None = None,
               background: Sequence[str] = ()) -> torch.Tensor:
        """(C, H, W) class logits (C + 1 with ``background`` prompts, background last) at ``out_size``
        (default: the image's own (H, W)). That is 4 * C * H * W bytes: for label maps of large images use
        :meth:`labels`, which never holds them all."""
        size = out_size or (image.size[1], image.size[0])
        return segment_logits(self._dense(image), self.classifier(names, background).to(self.device), size)[0].cpu()

    @torch.no_grad()
    def labels(self, image: Image.Image, names: Sequence[str], out_size: tuple[int, int] | None = None,
               bg_threshold: float | None = None, background: Sequence[str] = ()) -> torch.Tensor:
        """(H, W) uint8 labels at ``out_size`` (default: the image's), as ``logits_to_labels(logits(...))``
        gives them (to float rounding), made in row chunks without the full (C, H, W) logits."""
        if len(names) > 255:
            raise ValueError(f"an 8-bit label map holds at most 255 labels, got {len(names)}")
        size = tuple(out_size or (image.size[1], image.size[0]))
        cls = self.classifier(names, background).to(self.device)
        return segment_labels(self._dense(image), cls, size, bg_threshold, background_last=bool(background),
                              dtype=torch.uint8)[0].cpu()

    def segment(self, image: Image.Image | str | Path, labels: str | Sequence[str],
                bg_threshold: float | None = None, background: Sequence[str] = ()) -> SegmentationResult:
        """Label every pixel of ``image`` with one of ``labels``, or background: below ``bg_threshold``, or
        where the ``background`` prompts (e.g. ["an empty background", "the sky"]) win over every label."""
        names = parse_labels(labels)
        background = [b.strip() for b in background if b.strip()]
        img = load_image(image) if isinstance(image, (str, Path)) else image
        size = (img.size[1], img.size[0])
        cls = self.classifier(names, background).to(self.device)
        low = segment_logits(self._dense(img), cls)  # (1, C [+ 1], gh, gw): the full size is made in chunks
        labels_map = upsampled_labels(low, size, bg_threshold, background_last=bool(background),
                                      dtype=torch.uint8)[0]  # (H, W)
        return SegmentationResult(img, labels_map.cpu().numpy(), names, logits=low[0].cpu())


# ------------------------------------------------------------------------------------------------ drawing
def palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct colours: index 0 (background) black, then a fixed hue walk (golden-angle steps)."""
    import colorsys

    out = [(0, 0, 0)]
    for k in range(num_classes):
        r, g, b = colorsys.hsv_to_rgb((k * 0.618034) % 1.0, 0.75, 0.95)
        out.append((int(255 * r), int(255 * g), int(255 * b)))
    return out


def label_image(labels: np.ndarray, num_classes: int) -> Image.Image:
    """A palette PNG whose pixel values are the labels themselves (readable as data and as a picture)."""
    img = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for rgb in palette(num_classes) for c in rgb]
    img.putpalette(flat + [0] * (768 - len(flat)))
    return img


def overlay(result: SegmentationResult, alpha: float = 0.55, legend: bool = True) -> Image.Image:
    """The image with class colours blended over it and a legend (colour box + name + area) on the right."""
    base = result.image.convert("RGB")
    colours = np.array(palette(len(result.names)), dtype=np.float32)  # (C + 1, 3)
    rgb = np.asarray(base, dtype=np.float32)  # (H, W, 3)
    paint = colours[result.labels]  # (H, W, 3)
    fg = (result.labels > 0)[..., None]
    blended = np.where(fg, (1 - alpha) * rgb + alpha * paint, rgb).clip(0, 255).astype(np.uint8)
    out = Image.fromarray(blended)
    if not legend:
        return out
    areas = result.areas()
    rows = [(BACKGROUND, palette(0)[0], areas[BACKGROUND])]
    rows += [(n, tuple(int(c) for c in colours[k + 1]), areas[n]) for k, n in enumerate(result.names)]
    row_h, box = 14, 10
    text_w = max(6 * len(f"{n} {a:.0%}") for n, _, a in rows) + box + 12
    canvas = Image.new("RGB", (out.width + text_w, max(out.height, row_h * len(rows) + 4)), (255, 255, 255))
    canvas.paste(out, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, (name, colour, area) in enumerate(rows):
        y = 2 + i * row_h
        draw.rectangle([out.width + 4, y + 1, out.width + 4 + box, y + 1 + box], fill=colour, outline=(90, 90, 90))
        draw.text((out.width + 8 + box, y), f"{name} {area:.0%}", fill=(0, 0, 0))
    return canvas
