"""Open-vocabulary semantic segmentation evaluation: mIoU of the training-free dense labels on image + mask pairs.

Protocol as MaskCLIP / mmseg report it: per image, class logits at the mask's resolution, argmax (background
below a probability threshold and / or where background prompts win), accumulated into one (C + 1) x (C + 1) confusion matrix over the
dataset (row = truth, column = prediction; class 0 = background, ignore pixels dropped). IoU per class =
TP / (TP + FP + FN); mIoU is the mean over classes present in the truth or the prediction; ``miou_fg`` leaves
background out; ``pixel_acc`` is the fraction of labelled pixels right. The scoring is the
:class:`~openeva.evaluators.segmentation.MIoU` evaluator (shared with segmentation training), over the logits
of the training-free :class:`~openeva.dense.segmenter.OpenVocabSegmenter`.
"""

from __future__ import annotations

from typing import Sequence

from functools import partial

import numpy as np
import torch
from PIL import Image

from openeva.dense.segment import DenseOptions, logits_to_labels
from openeva.dense.segmenter import BACKGROUND, OpenVocabSegmenter
from openeva.evaluators.base import Batching
from openeva.evaluators.segmentation import MIoU, Segmented
from openeva.metrics import iou_metrics


class _Pixels(torch.utils.data.Dataset):
    """``(PIL image, mask)`` samples as ``(uint8 (H, W, 3) pixels, (H, W) long mask)``: images of any size, one
    per batch."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i):
        image, mask = self.dataset[i]
        pixels = torch.from_numpy(np.array(image.convert("RGB"), dtype=np.uint8))  # (H, W, 3)
        return pixels, torch.from_numpy(np.array(mask, dtype=np.int64))  # (H, W)


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

    def predict(pixels: torch.Tensor) -> torch.Tensor:  # (1, H, W, 3) -> (1, C [+1], H, W) at the mask's size
        image = Image.fromarray(pixels[0].cpu().numpy())
        return seg.logits(image, names, out_size=tuple(pixels.shape[1:3]), background=background).unsqueeze(0)

    to_labels = partial(logits_to_labels, bg_threshold=bg_threshold, background_last=bool(background))
    evaluator = MIoU(batching=Batching(batch_size=1, progress=progress), to_labels=to_labels)
    conf, _, _ = evaluator.confusion(predict, Segmented(_Pixels(dataset), len(names) + 1))
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
