"""When a difference between two accuracies is beyond noise: the one rule both chains' verdicts use.

A difference counts as beyond noise when it exceeds :data:`NOISE_SIGMAS` standard errors of the difference of
two accuracies on the same ``n`` images. With each side's per-image correctness (``correct``, a string of 0/1 in
image order) the standard error is the paired one (McNemar's: only the images the two disagree on carry noise);
without, two independent binomials, sqrt(p(1-p)/n) each, which overstates the noise of two classifiers scored on
the same images (for a fine-tune against its own probe, about twice).
"""

from __future__ import annotations

import math

import torch

NOISE_SIGMAS = 2.0


def correctness(scores: torch.Tensor, labels: torch.Tensor) -> str:
    """Which of the images an (N, C) score matrix gets right, as an N-character string of 0/1 (compact in JSON)."""
    return "".join("1" if ok else "0" for ok in (scores.argmax(-1) == labels.to(scores.device)).tolist())


def _unpaired_se(a: float, b: float, n: int) -> float:
    if n < 1:
        return math.inf  # no images: nothing is beyond noise
    return math.sqrt(max(a * (1 - a), 1e-12) / n + max(b * (1 - b), 1e-12) / n)


def _paired_se(correct_a: str, correct_b: str) -> float:
    """Standard error of the mean per-image difference (1 - 0, 0 - 1 or 0) of two classifiers on the same images."""
    n = len(correct_a)
    a_only = sum(1 for x, y in zip(correct_a, correct_b) if x == "1" and y == "0")
    b_only = sum(1 for x, y in zip(correct_a, correct_b) if x == "0" and y == "1")
    mean = (a_only - b_only) / n
    return math.sqrt(max((a_only + b_only) / n - mean * mean, 1e-12) / n)


def difference(a: float, b: float, n: int, correct_a: str | None = None, correct_b: str | None = None) -> dict:
    """a - b on the same n images, its standard error and whether it is beyond NOISE_SIGMAS of it.

    With both sides' per-image correctness over the same n images, the paired standard error; otherwise (or when a
    skipped image left the two of different lengths) the unpaired one. Both are returned.
    """
    unpaired = _unpaired_se(a, b, n)
    paired = correct_a is not None and correct_b is not None and len(correct_a) == len(correct_b) == n > 0
    se = _paired_se(correct_a, correct_b) if paired else unpaired
    diff = a - b
    return {"diff": diff, "se": se, "paired": paired, "se_unpaired": unpaired,
            "beyond_noise": abs(diff) > NOISE_SIGMAS * se}
