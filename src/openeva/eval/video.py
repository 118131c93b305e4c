"""Zero-shot video classification as EVA-CLIP reports Kinetics / UCF: T uniformly sampled frames, each embedded
by the image tower, the L2-normalised frame embeddings averaged (and renormalised) into one video embedding,
scored against prompt-ensembled class embeddings (the image zero-shot classifier)."""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from openeva.runtime import autocast
from openeva.eval.zeroshot import build_zeroshot_classifier, classification_metrics, zeroshot_logits

MAX_LISTED_SKIPS = 20


@torch.no_grad()
def embed_video(model, frames: list, transform: Callable, device="cpu", precision: str = "fp32") -> torch.Tensor:
    """T PIL frames -> (E,) normalised mean of the normalised frame embeddings."""
    x = torch.stack([transform(f) for f in frames]).to(device)  # (T, 3, H, W)
    with autocast(precision, device):
        feats = model.encode_image(x, normalize=True).float()  # (T, E)
    return F.normalize(feats.mean(dim=0), dim=-1).cpu()  # (E,)


def evaluate_zeroshot_video(
    model,
    tokenizer,
    dataset,
    classnames: Sequence[str],
    templates: Sequence[str],
    transform: Callable,
    *,
    device: str = "cpu",
    precision: str = "fp32",
    progress: bool = False,
) -> dict:
    """Top-1 / top-5 / mean per-class recall over the readable videos of ``dataset`` (``ds[i] -> (frames, label)``
    or None for a skipped video). Returns the fields of a CLIP_benchmark-shaped record plus the scores."""
    names = list(classnames)
    if len(names) < 2:
        raise ValueError(f"zero-shot video classification needs at least 2 classes, got {names}")
    if not hasattr(model, "encode_text"):
        raise ValueError(f"{type(model).__name__} has no text tower; zero-shot video needs a CLIP model")
    model = model.to(device).eval()
    classifier = build_zeroshot_classifier(model, tokenizer, names, list(templates), device=device,
                                           precision=precision)  # (E, C)
    feats, labels, skipped = [], [], []
    for i in tqdm(range(len(dataset)), desc="embedding videos", disable=not progress, unit="video"):
        item = dataset[i]
        if item is None:
            skipped.append(str(getattr(dataset, "samples", [[i]])[i][0]))
            continue
        frames, label = item
        feats.append(embed_video(model, frames, transform, device, precision))
        labels.append(label)
    if not feats:
        raise ValueError(f"none of the {len(dataset)} videos could be read (e.g. {skipped[:3]})")
    scores = zeroshot_logits(torch.stack(feats), classifier)  # (N, C)
    targets = torch.tensor(labels)
    return {
        "metrics": classification_metrics(scores, targets, len(names)),
        "num_samples": len(labels),
        "num_classes": len(names),
        "num_templates": len(templates),
        "num_frames": getattr(dataset, "num_frames", None),
        "num_skipped": len(skipped),
        "skipped_files": skipped[:MAX_LISTED_SKIPS],
        "scores": scores,
        "labels": targets,
    }
