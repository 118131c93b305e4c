"""PNG plots of evaluation results: confusion matrix, per-class accuracy, retrieval hits and misses.

Uses matplotlib's object API (``Figure``) rather than pyplot, so no global backend or figure state is
touched and plotting works headless.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_confusion_matrix(confusion: torch.Tensor, classnames: Sequence[str], path, title: str = "") -> Path:
    """Row-normalised (C, C) confusion matrix; class names on the axes only when C <= 40."""
    conf = confusion.double()
    rates = (conf / conf.sum(dim=1, keepdim=True).clamp(min=1)).numpy()  # (C, C)
    n = len(classnames)
    size = min(4 + 0.3 * n, 16) if n <= 40 else 10
    fig = _figure(size + 1.5, size)
    ax = fig.add_subplot()
    im = ax.imshow(rates, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    if n <= 40:
        ax.set_xticks(range(n), [c[:20] for c in classnames], rotation=90, fontsize=7)
        ax.set_yticks(range(n), [c[:20] for c in classnames], fontsize=7)
        if n <= 15:
            for i in range(n):
                for j in range(n):
                    if conf[i, j] > 0:
                        ax.text(j, i, int(conf[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if rates[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix")
    return _save(fig, path)


def plot_per_class_accuracy(accuracy: torch.Tensor, classnames: Sequence[str], path, title: str = "",
                            max_bars: int = 50) -> Path:
    """Horizontal bars of per-class recall, worst first; with many classes, the worst and best halves."""
    acc = accuracy.double().numpy()  # (C,), NaN for classes without samples
    order = [i for i in np.argsort(np.nan_to_num(acc, nan=2.0)) if not np.isnan(acc[i])]
    if len(order) > max_bars:
        half = max_bars // 2
        order = order[:half] + order[-half:]
    fig = _figure(8, 1 + 0.22 * len(order))
    ax = fig.add_subplot()
    values = [acc[i] for i in order]
    colors = ["#c0392b" if v < 0.5 else "#2e86c1" for v in values]
    ax.barh(range(len(order)), values, color=colors)
    ax.set_yticks(range(len(order)), [classnames[i][:30] for i in order], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy (recall)")
    shown = "" if len(order) == np.sum(~np.isnan(acc)) else f" (worst and best {len(order) // 2})"
    ax.set_title((title or "per-class accuracy") + shown)
    return _save(fig, path)


def plot_retrieval_examples(
    load_image: Callable[[int], object],
    image_indices: Sequence[int],
    captions: Sequence[Sequence[str]],
    top1_texts: Sequence[str],
    hits: Sequence[bool],
    path,
    title: str = "",
    columns: int = 4,
) -> Path:
    """A grid of image -> text queries: each image with its top-1 caption, green border = hit, red = miss.

    ``load_image(i)`` returns a PIL image (or None); ``captions[k]`` are the true captions of query k.
    """
    n = len(image_indices)
    if n == 0:
        raise ValueError("no retrieval examples to plot")
    rows = (n + columns - 1) // columns
    fig = _figure(3.2 * columns, 3.6 * rows)
    for k, idx in enumerate(image_indices):
        ax = fig.add_subplot(rows, columns, k + 1)
        img = load_image(idx)
        if img is not None:
            ax.imshow(np.asarray(img))
        ax.set_xticks([])
        ax.set_yticks([])
        color = "#27ae60" if hits[k] else "#c0392b"
        for spine in ax.spines.values():
            spine.set_edgecolor(color)
            spine.set_linewidth(4)
        label = "HIT" if hits[k] else "MISS"
        lines = textwrap.wrap(f"{label}: {textwrap.shorten(top1_texts[k], 80)}", 38)[:3]
        if not hits[k] and captions[k]:
            lines += textwrap.wrap(f"true: {textwrap.shorten(captions[k][0], 80)}", 38)[:3]
        ax.set_title("\n".join(lines), fontsize=7, color=color)
    fig.suptitle(title or "image -> text retrieval (top-1)")
    return _save(fig, path)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
