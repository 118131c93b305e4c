"""Zero-shot classification as CLIP (Radford et al. 2021) and open_clip evaluate it.

Each class embedding is the mean over prompt templates of the L2-normalized text embeddings, normalized
again (:func:`openeva.metrics.zeroshot_head`); logits are ``100 * img @ W`` with normalized image features.
Class names and templates come from :mod:`openeva.data.classnames` (bundled sets or the user's files).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from openeva.data.classnames import BUILTIN_DATASETS, fill_template, load_builtin, load_classnames, load_templates
from openeva.eval.features import encode_texts
from openeva.metrics import (
    classification_metrics, confusion_matrix, per_class_accuracy, zeroshot_head, zeroshot_logits,
)

__all__ = [
    "BUILTIN_DATASETS", "build_zeroshot_classifier", "classification_metrics", "confusion_matrix", "load_builtin",
    "load_classnames", "load_templates", "per_class_accuracy", "zeroshot_logits",
]


@torch.no_grad()
def build_zeroshot_classifier(
    model,
    tokenizer: Callable[[list[str]], torch.Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> torch.Tensor:
    """Zero-shot weights ``W`` of shape (E, C): per class, mean of normalized template embeddings, renormalized."""
    texts = [fill_template(t, c) for c in classnames for t in templates]
    emb = encode_texts(model, tokenizer, texts, batch_size=batch_size, device=device, precision=precision,
                       progress=progress, desc="class prompts")  # (C*T, E)
    return zeroshot_head(emb, len(classnames))  # (E, C)
