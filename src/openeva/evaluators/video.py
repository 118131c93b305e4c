"""Zero-shot video classification as EVA-CLIP reports Kinetics / UCF: T uniformly sampled frames, each embedded
by the image tower, the L2-normalised frame embeddings averaged (and renormalised) into one video embedding,
scored against prompt-ensembled class embeddings (the image zero-shot classifier).

Rank rule: each rank embeds its block of videos; the counts are summed (:class:`VideoZeroShot`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from openeva.evaluators.base import Labelled
from openeva.evaluators.classification import classification_counts, counts_metrics
from openeva.evaluators.distributed import all_sum, rank_positions
from openeva.evaluators.text import build_zeroshot_classifier
from openeva.metrics import classification_metrics, zeroshot_logits
from openeva.runtime import autocast

MAX_LISTED_SKIPS = 20
DEFAULT_VIDEO_TEMPLATES = ("a video of a {c}.", "a photo of a {c}.", "a video of a person doing {c}.")


@torch.no_grad()
def embed_video(model, frames: list, transform: Callable, device="cpu", precision: str = "fp32") -> torch.Tensor:
    """T PIL frames -> (E,) normalised mean of the normalised frame embeddings."""
    x = torch.stack([transform(f) for f in frames]).to(device)  # (T, 3, H, W)
    with autocast(precision, device):
        feats = model.encode_image(x, normalize=True).float()  # (T, E)
    return F.normalize(feats.mean(dim=0), dim=-1).cpu()  # (E,)


def _check(model, names) -> None:
    if len(names) < 2:
        raise ValueError(f"zero-shot video classification needs at least 2 classes, got {list(names)}")
    if not hasattr(model, "encode_text"):
        raise ValueError(f"{type(model).__name__} has no text tower; zero-shot video needs a CLIP model")


def _embed_videos(model, dataset, positions, transform, device, precision, progress):
    """(features (N, E), labels (N,), skipped paths) of the readable videos at ``positions``."""
    feats, labels, skipped = [], [], []
    for i in tqdm(positions, desc="embedding videos", disable=not progress, unit="video"):
        item = dataset[i]
        if item is None:
            samples = getattr(dataset, "samples", None)  # a VideoFolder names its files
            skipped.append(str(samples[i][0]) if samples is not None else str(i))
            continue
        frames, label = item
        feats.append(embed_video(model, frames, transform, device, precision))
        labels.append(label)
    return feats, labels, skipped


def evaluate_zeroshot_video(model, tokenizer, dataset, classnames: Sequence[str], templates: Sequence[str],
                            transform: Callable, *, device: str = "cpu", precision: str = "fp32",
                            progress: bool = False) -> dict:
    """Top-1 / top-5 / mean per-class recall over the readable videos of ``dataset`` (``ds[i] -> (frames, label)``
    or None for a skipped video). Returns the fields of a CLIP_benchmark-shaped record plus the scores."""
    names = list(classnames)
    _check(model, names)
    model = model.to(device).eval()
    classifier = build_zeroshot_classifier(model, tokenizer, names, list(templates), device=device,
                                           precision=precision)  # (E, C)
    feats, labels, skipped = _embed_videos(model, dataset, range(len(dataset)), transform, device, precision,
                                           progress)
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


@dataclass(frozen=True)
class VideoOptions:
    """Zero-shot video: the prompt templates (``{c}`` marks the class name)."""

    templates: tuple[str, ...] = DEFAULT_VIDEO_TEMPLATES
    progress: bool = False

    def __post_init__(self):
        object.__setattr__(self, "templates", tuple(self.templates))
        if not self.templates:
            raise ValueError("zero-shot video needs at least one prompt template")


@dataclass(frozen=True)
class VideoZeroShot:
    """Zero-shot accuracy on :class:`~openeva.evaluators.base.Labelled` videos (items ``(frames, label)``);
    ``transform`` turns one PIL frame into the model's (3, H, W) input."""

    tokenizer: object
    transform: Callable
    options: VideoOptions = field(default_factory=VideoOptions)
    name: str = "zeroshot_video"

    @torch.no_grad()
    def run(self, model, data: Labelled, *, device="cpu", precision: str = "fp32", group=None) -> dict[str, float]:
        names = list(data.classnames)
        _check(model, names)
        classifier = build_zeroshot_classifier(model, self.tokenizer, names, self.options.templates, device=device,
                                               precision=precision)  # (E, C)
        positions = rank_positions(len(data.dataset), group)
        feats, labels, _ = _embed_videos(model, data.dataset, positions, self.transform, device, precision,
                                         self.options.progress)
        counts = torch.zeros(3 + 2 * len(names), dtype=torch.long)
        if feats:
            counts += classification_counts(zeroshot_logits(torch.stack(feats), classifier), torch.tensor(labels),
                                            len(names))
        return counts_metrics(all_sum(counts, group), len(names))
