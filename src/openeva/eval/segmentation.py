"""Open-vocabulary semantic segmentation evaluation: mIoU of the training-free dense labels on image + mask pairs.

Protocol as MaskCLIP / mmseg report it: per image, class logits at the mask's resolution, argmax (background
below a probability threshold and / or where background prompts win), accumulated into one (C + 1) x (C + 1) confusion matrix over the
dataset (row = truth, column = prediction; class 0 = background, ignore pixels dropped). IoU per class =
TP / (TP + FP + FN); mIoU is the mean over classes present in the truth or the prediction; ``miou_fg`` leaves
background out; ``pixel_acc`` is the fraction of labelled pixels right.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from tqdm import tqdm

from openeva.metrics import confusion, iou_metrics
from openeva.dense.segment import DenseOptions, logits_to_labels
from openeva.dense.segmenter import BACKGROUND, OpenVocabSegmenter


def evaluate_segmentation(
    model,
    tokenizer,
    dataset,
    classnames: Sequence[str],
    templates: Sequence[str],
    *,
    options: DenseOptions = DenseOptions(),
    bg_threshold: float | None = None,
    background: Sequence[str] = (),
    mean=None,
    std=None,
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """mIoU of ``model`` on ``dataset`` (``ds[i] -> (PIL image, (H, W) mask)``), classes = mask values 1..C.

    Returns ``{"metrics": {...}, "per_class_iou": {name: iou}, "num_samples": n, ...}``: the fields of a
    CLIP_benchmark-shaped record (``eval.results.make_result`` adds dataset / model / task).
    """
    names = list(classnames)
    if not names:
        raise ValueError("segmentation needs class names (--classnames) for the mask values 1..C")
    if bg_threshold is not None and not 0.0 <= bg_threshold <= 1.0:
        raise ValueError(f"bg_threshold must be in [0, 1], got {bg_threshold}")
    if len(dataset) == 0:
        raise ValueError("the segmentation dataset has no samples")
    kwargs = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    seg = OpenVocabSegmenter(model, tokenizer, templates=templates, options=options, device=device, **kwargs)
    L = len(names) + 1
    conf = torch.zeros(L, L, dtype=torch.long)
    for i in tqdm(range(len(dataset)), desc="segmenting", disable=not progress, unit="image"):
        image, mask = dataset[i]
        truth = torch.from_numpy(np.array(mask, dtype=np.uint8))  # (H, W)
        logits = seg.logits(image, names, out_size=tuple(truth.shape), background=background)  # (C [+1], H, W)
        pred = logits_to_labels(logits.unsqueeze(0), bg_threshold, background_last=bool(background))[0]  # (H, W)
        conf += confusion(pred, truth, L)
    metrics, per_class = iou_metrics(conf)
    return {
        "metrics": metrics,
        "per_class_iou": dict(zip([BACKGROUND, *names], per_class)),
        "num_samples": len(dataset),
        "num_classes": len(names),
        "num_templates": len(templates),
        "bg_threshold": bg_threshold,
        "background_prompts": list(background),
        "dense_method": options.method,
        "dense_refine": options.refine,
    }
