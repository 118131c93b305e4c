"""Synthetic captioned shapes: a built-in image-text dataset so training and evaluation run with no data.

Each sample is a colored shape (circle, square, triangle, diamond, star) of a size (small, large) at a
position (top left, top right, bottom left, bottom right, center) on a dark, lightly noised background,
captioned from a few templates, e.g. "a small red triangle at the top left". Sample ``i`` depends only on
``(seed, split, i)``, so datasets are reproducible and need no storage; rendering is plain PIL (~10k 64px
images per second on one core).

Held-out combinations (for zero-shot generalization tests): the (shape, color) pairs in
:data:`HELDOUT_PAIRS` never occur in split ``"train"``; split ``"heldout"`` contains only them and split
``"all"`` draws from every pair. Every shape and every color still occurs in ``"train"`` with other partners.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "diamond", "star")
COLORS = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 235),
    "yellow": (235, 210, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 30),
}
SIZES = {"small": 0.13, "large": 0.24}  # half-extent as a fraction of the image side
POSITIONS = {
    "top left": (0.28, 0.28),
    "top right": (0.72, 0.28),
    "bottom left": (0.28, 0.72),
    "bottom right": (0.72, 0.72),
    "center": (0.5, 0.5),
}
# One held-out color per shape, each color at most once, so no attribute value disappears from "train".
HELDOUT_PAIRS = (
    ("circle", "blue"),
    ("square", "yellow"),
    ("triangle", "purple"),
    ("diamond", "red"),
    ("star", "green"),
)
CAPTION_TEMPLATES = (
    "a {size} {color} {shape} at the {position}",
    "a photo of a {size} {color} {shape} in the {position}",
    "there is a {color} {shape} in the {position}, it is {size}",
    "{size} {color} {shape}, {position}",
)
SPLITS = ("train", "heldout", "all")
EMPTY_SCENE_CAPTION = "an empty background"


class ShapeAttributes(NamedTuple):
    shape: str
    color: str
    size: str
    position: str


def shape_class_names() -> list[str]:
    return list(SHAPES)


def color_class_names() -> list[str]:
    return list(COLORS)


def shape_color_class_names() -> list[str]:
    """Names of the (shape, color) classes, e.g. "red circle"; index = shape_index * n_colors + color_index."""
    return [f"{color} {shape}" for shape in SHAPES for color in COLORS]


def split_pairs(split: str) -> list[tuple[str, str]]:
    """The (shape, color) pairs that split ``split`` draws from."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    every = [(shape, color) for shape in SHAPES for color in COLORS]
    if split == "all":
        return every
    heldout = set(HELDOUT_PAIRS)
    return [p for p in every if (p in heldout) == (split == "heldout")]


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a regular shape of half-extent r centred at (cx, cy), rotated by angle (radians)."""
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.8 * r, cy), (cx, cy + r), (cx - 0.8 * r, cy)]
    if shape == "triangle":
        corners = [-math.pi / 2 + angle + i * 2 * math.pi / 3 for i in range(3)]
        return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in corners]
    if shape == "star":
        points = []
        for i in range(10):
            radius = r if i % 2 == 0 else 0.45 * r
            a = -math.pi / 2 + angle + i * math.pi / 5
            points.append((cx + radius * math.cos(a), cy + radius * math.sin(a)))
        return points
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def _shape_geometry(attributes: ShapeAttributes, s: int, rng: np.random.Generator):
    """Jittered centre, half-extent, colour and rotation of one shape (draws from ``rng`` in a fixed order)."""
    fx, fy = POSITIONS[attributes.position]
    cx = (fx + rng.uniform(-0.04, 0.04)) * s
    cy = (fy + rng.uniform(-0.04, 0.04)) * s
    r = SIZES[attributes.size] * rng.uniform(0.9, 1.1) * s
    color = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLORS[attributes.color])
    angle = math.radians(rng.uniform(-10, 10))
    return cx, cy, r, color, angle


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, angle: float, fill) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        k = 0.85 * r
        draw.rectangle([cx - k, cy - k, cx + k, cy + k], fill=fill)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, angle), fill=fill)


def _background(s: int, rng: np.random.Generator) -> Image.Image:
    gray = int(rng.integers(25, 75))
    noise = rng.integers(-8, 9, size=(s, s, 3), dtype=np.int16)
    return Image.fromarray(np.clip(gray + noise, 0, 255).astype(np.uint8), mode="RGB")  # (S, S, 3)


def render_shape(attributes: ShapeAttributes, image_size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one sample: jittered position, size, color and rotation on a noisy dark background."""
    image = _background(image_size, rng)
    cx, cy, r, color, angle = _shape_geometry(attributes, image_size, rng)
    _draw_shape(ImageDraw.Draw(image), attributes.shape, cx, cy, r, angle, color)
    return image


class ShapesDataset:
    """Map-style captioned shapes: ``ds[i] -> (image, caption)``.

    ``image`` is a PIL image, or ``transform(image)``; ``caption`` is a string, or ``tokenizer([caption])[0]``
    (a LongTensor row). ``attributes(i)`` / ``labels`` give the :class:`ShapeAttributes` of each sample.
    Use different ``seed`` values for train and validation sets of the same split.
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int = 64,
        seed: int = 0,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        tokenizer: Callable[[list[str]], Any] | None = None,
        templates: tuple[str, ...] = CAPTION_TEMPLATES,
    ) -> None:
        if not isinstance(num_samples, int) or num_samples < 0:
            raise ValueError(f"num_samples must be an int >= 0, got {num_samples!r}")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        if not templates:
            raise ValueError("templates must contain at least one caption template")
        self.pairs = split_pairs(split)
        self.num_samples = num_samples
        self.image_size = image_size
        self.seed = int(seed)
        self.split = split
        self.transform = transform
        self.tokenizer = tokenizer
        self.templates = tuple(templates)
        self._split_id = SPLITS.index(split)

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for ShapesDataset of {self.num_samples} samples")
        return np.random.default_rng((self.seed, self._split_id, index))

    @staticmethod
    def _draw_attributes(rng: np.random.Generator, pairs: list[tuple[str, str]]) -> ShapeAttributes:
        shape, color = pairs[int(rng.integers(len(pairs)))]
        size = tuple(SIZES)[int(rng.integers(len(SIZES)))]
        position = tuple(POSITIONS)[int(rng.integers(len(POSITIONS)))]
        return ShapeAttributes(shape, color, size, position)

    def attributes(self, index: int) -> ShapeAttributes:
        return self._draw_attributes(self._rng(index), self.pairs)

    @functools.cached_property
    def labels(self) -> list[ShapeAttributes]:
        """Attributes of every sample (no rendering)."""
        return [self.attributes(i) for i in range(self.num_samples)]

    def caption(self, index: int) -> str:
        return self.render(index, image=False)[1]

    def render(self, index: int, image: bool = True) -> tuple[Image.Image | None, str, ShapeAttributes]:
        """Raw sample ``(PIL image or None, caption, attributes)`` before transform and tokenizer."""
        rng = self._rng(index)
        attrs = self._draw_attributes(rng, self.pairs)
        template = self.templates[int(rng.integers(len(self.templates)))]
        caption = template.format(**attrs._asdict())
        picture = render_shape(attrs, self.image_size, rng) if image else None
        return picture, caption, attrs

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        image, caption, _ = self.render(index)
        out_image = self.transform(image) if self.transform is not None else image
        out_text = self.tokenizer([caption])[0] if self.tokenizer is not None else caption
        return out_image, out_text


# Prompt templates for zero-shot classification: each averages over the attribute that is not the class.
_CLASS_TEMPLATES = {
    "shape": tuple(f"a {color} {{}}" for color in COLORS),
    "color": tuple(f"a {{}} {shape}" for shape in SHAPES),
    "shape_color": ("a {}", "a small {}", "a large {}"),
}


class ShapesClassification:
    """Classification view of :class:`ShapesDataset`: ``ds[i] -> (image, class_index)``.

    ``attribute`` picks the label: "shape", "color" or "shape_color" (all 30 pairs, names like "red circle",
    the same classes for every split so held-out pairs can be scored zero-shot). ``classes`` are the class
    names, ``targets`` the label of each sample, ``templates`` zero-shot prompt templates with one ``{}``.
    """

    def __init__(
        self,
        num_samples: int,
        attribute: str = "shape",
        split: str = "all",
        image_size: int = 64,
        seed: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        if attribute not in _CLASS_TEMPLATES:
            raise ValueError(f"attribute must be one of {tuple(_CLASS_TEMPLATES)}, got {attribute!r}")
        self.attribute = attribute
        self.shapes = ShapesDataset(num_samples, image_size=image_size, seed=seed, split=split)
        self.transform = transform
        self.classes = {
            "shape": shape_class_names,
            "color": color_class_names,
            "shape_color": shape_color_class_names,
        }[attribute]()
        self.templates = _CLASS_TEMPLATES[attribute]

    def __len__(self) -> int:
        return len(self.shapes)

    def target_of(self, attrs: ShapeAttributes) -> int:
        if self.attribute == "shape":
            return SHAPES.index(attrs.shape)
        if self.attribute == "color":
            return list(COLORS).index(attrs.color)
        return SHAPES.index(attrs.shape) * len(COLORS) + list(COLORS).index(attrs.color)

    @functools.cached_property
    def targets(self) -> list[int]:
        return [self.target_of(a) for a in self.shapes.labels]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, _, attrs = self.shapes.render(index)
        target = self.target_of(attrs)
        return (self.transform(image) if self.transform is not None else image), target


class ShapeScenes:
    """Scenes of several shapes with their true segmentation masks: ``ds[i] -> (image, mask)``.

    Each scene holds ``min_shapes..max_shapes`` shapes (0: an empty background) at distinct positions with distinct labels (colours when
    ``label_by="color"``, shapes when ``"shape"``), drawn like :class:`ShapesDataset`'s. ``mask`` is an (S, S)
    uint8 array: 0 = background, ``k + 1`` = ``classes[k]``; a later shape covers an earlier one in the image
    and in the mask alike. Sample ``i`` depends only on ``(seed, i)``.
    """

    def __init__(self, num_samples: int, image_size: int = 64, seed: int = 0, label_by: str = "color",
                 min_shapes: int = 2, max_shapes: int = 3, sizes: tuple[str, ...] = ("large",)) -> None:
        if label_by not in ("color", "shape"):
            raise ValueError(f"label_by must be 'color' or 'shape', got {label_by!r}")
        if not 0 <= min_shapes <= max_shapes <= len(POSITIONS):
            raise ValueError(f"need 0 <= min_shapes <= max_shapes <= {len(POSITIONS)}, got {min_shapes}, {max_shapes}")
        if not sizes or any(z not in SIZES for z in sizes):
            raise ValueError(f"sizes must be a non-empty subset of {tuple(SIZES)}, got {sizes!r}")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"image_size must be an int >= 8, got {image_size!r}")
        self.num_samples, self.image_size, self.seed = int(num_samples), image_size, int(seed)
        self.label_by, self.min_shapes, self.max_shapes, self.sizes = label_by, min_shapes, max_shapes, tuple(sizes)
        self.classes = color_class_names() if label_by == "color" else shape_class_names()

    def __len__(self) -> int:
        return self.num_samples

    def scene(self, index: int) -> list[ShapeAttributes]:
        """The shapes of scene ``index`` in drawing order."""
        return self._layout(self._rng(index))

    def caption(self, index: int) -> str:
        """What the scene shows, e.g. "a red circle and a blue square" ("an empty background" for none):
        scenes double as image-text pairs for training a small CLIP that has seen several objects at once."""
        shapes = self.scene(index)
        if not shapes:
            return EMPTY_SCENE_CAPTION
        return " and ".join(f"a {a.color} {a.shape}" for a in shapes)

    def _rng(self, index: int) -> np.random.Generator:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for ShapeScenes of {self.num_samples} samples")
        return np.random.default_rng((self.seed, 7, index))

    def _layout(self, rng: np.random.Generator) -> list[ShapeAttributes]:
        n = int(rng.integers(self.min_shapes, self.max_shapes + 1))
        positions = rng.choice(len(POSITIONS), size=n, replace=False)
        labels = rng.choice(len(self.classes), size=n, replace=False)
        out = []
        for pos, lab in zip(positions, labels):
            other = SHAPES if self.label_by == "color" else tuple(COLORS)
            pick = other[int(rng.integers(len(other)))]
            shape, color = (pick, self.classes[lab]) if self.label_by == "color" else (self.classes[lab], pick)
            size = self.sizes[int(rng.integers(len(self.sizes)))]
            out.append(ShapeAttributes(shape, color, size, tuple(POSITIONS)[int(pos)]))
        return out

    def __getitem__(self, index: int) -> tuple[Image.Image, np.ndarray]:
        rng = self._rng(index)
        shapes = self._layout(rng)
        image = _background(self.image_size, rng)
        mask = Image.new("L", (self.image_size, self.image_size), 0)
        draw_image, draw_mask = ImageDraw.Draw(image), ImageDraw.Draw(mask)
        for attrs in shapes:
            cx, cy, r, color, angle = _shape_geometry(attrs, self.image_size, rng)
            label = self.classes.index(attrs.color if self.label_by == "color" else attrs.shape) + 1
            _draw_shape(draw_image, attrs.shape, cx, cy, r, angle, color)
            _draw_shape(draw_mask, attrs.shape, cx, cy, r, angle, label)
        return image, np.asarray(mask, dtype=np.uint8)  # (S, S) labels
