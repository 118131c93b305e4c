"""Quickstart evaluation on held-out attribute combinations, with the task functions of :mod:`openeva.eval`.

Every (shape, color) pair in :data:`openeva.data.synthetic.HELDOUT_PAIRS` is absent from the training split,
so these metrics ask whether a model composes attributes it only saw apart:

* zero-shot top-1 over all 30 "<color> <shape>" classes, over the 5 shapes and over the 6 colors;
* image <-> text retrieval recall@1 (one caption per image);
* a linear probe for the shape (CLIP models and the MIM student alike), fitted on fresh images of all 30
  pairs, where color says nothing about shape, and tested on the held-out images: how linearly decodable shape
  is from the frozen features. (Fitted on training pairs only, a probe learns "this color is never that
  shape" and scores below chance on exactly the held-out pairs, which measures the split, not the features.)

Images are encoded once per model and reused by every task.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from openeva.data.synthetic import ShapesClassification
from openeva.eval.features import image_features
from openeva.runtime import autocast
from openeva.eval.linear_probe import LinearProbeOptions, evaluate_linear_probe
from openeva.eval.retrieval import evaluate_retrieval
from openeva.eval.zeroshot import build_zeroshot_classifier, classification_metrics, zeroshot_logits
from openeva.quickstart.data import RenderedShapes

# attribute -> (name in the metric keys, ShapesClassification attribute giving class names and templates)
_ZEROSHOT = {"pair": "shape_color", "shape": "shape", "color": "color"}


@dataclass
class EvalSets:
    """The evaluation images: held-out pairs (zero-shot, retrieval, probe test) and all pairs (probe fit)."""

    heldout: RenderedShapes
    probe_train: RenderedShapes
    retrieval_samples: int

    def counts(self) -> dict[str, int]:
        n_ret = min(self.retrieval_samples, len(self.heldout))
        return {"zeroshot": len(self.heldout), "retrieval_images": n_ret, "retrieval_texts": n_ret,
                "linear_probe_train": len(self.probe_train), "linear_probe_test": len(self.heldout)}


def prepare_eval_sets(heldout_samples: int, probe_train_samples: int, retrieval_samples: int, image_size: int,
                      mean, std, seed: int = 0) -> EvalSets:
    """Render the evaluation sets; seeds differ from the training pool's so no image repeats."""
    heldout = RenderedShapes(heldout_samples, split="heldout", seed=seed + 1000, image_size=image_size,
                             mean=mean, std=std)
    probe_train = RenderedShapes(probe_train_samples, split="all", seed=seed + 2000, image_size=image_size,
                                 mean=mean, std=std)
    return EvalSets(heldout, probe_train, retrieval_samples)


@torch.no_grad()
def encode_images(model, data: RenderedShapes, batch_size: int = 256, precision: str = "fp32") -> torch.Tensor:
    """(N, E) image features: a CLIP model's embedding or a backbone's pooled pre-logits features."""
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        images = data.images(slice(start, start + batch_size))  # (B, 3, H, W)
        with autocast(precision, "cpu"):
            out.append(image_features(model, images).float())  # (B, E)
    return torch.cat(out)


def _probe(train_x, train_y, test_x, test_y, num_classes: int, seed: int) -> float:
    result = evaluate_linear_probe(train_x, train_y, test_x, test_y, num_classes, LinearProbeOptions(
        weight_decays=(1e-4, 1e-3, 1e-2, 1e-1), max_iter=200, seed=seed))
    return result.metrics["acc1"]


def linear_probe_shape(model, sets: EvalSets, seed: int = 0, precision: str = "fp32") -> dict[str, float]:
    """Shape linear probe: fit on features of all pairs, test on the held-out pairs."""
    classes = ShapesClassification(0, attribute="shape").classes
    train_x = encode_images(model, sets.probe_train, precision=precision)
    test_x = encode_images(model, sets.heldout, precision=precision)
    acc = _probe(train_x, sets.probe_train.labels("shape", classes), test_x, sets.heldout.labels("shape", classes),
                 len(classes), seed)
    return {"linear_probe_shape_acc1": acc}


@torch.no_grad()
def evaluate_clip(model, tokenizer, sets: EvalSets, seed: int = 0, precision: str = "fp32") -> dict[str, float]:
    """All quickstart metrics of a CLIP model (fractions in [0, 1])."""
    model.eval()
    heldout_x = encode_images(model, sets.heldout, precision=precision)  # (N, E)
    metrics: dict[str, float] = {}
    for key, attribute in _ZEROSHOT.items():
        spec = ShapesClassification(0, attribute=attribute)
        classifier = build_zeroshot_classifier(model, tokenizer, spec.classes, spec.templates,
                                               precision=precision)  # (E, C)
        labels = sets.heldout.labels(key, spec.classes)
        scores = zeroshot_logits(heldout_x, classifier)  # (N, C)
        metrics[f"zeroshot_{key}_acc1"] = classification_metrics(scores, labels, len(spec.classes))["acc1"]

    n = min(sets.retrieval_samples, len(sets.heldout))
    tokens = tokenizer(sets.heldout.captions[:n])  # (n, L)
    with autocast(precision, "cpu"):
        text_x = model.encode_text(tokens).float()  # (n, E)
    ret, _ = evaluate_retrieval(heldout_x[:n], text_x, torch.arange(n))
    metrics["retrieval_i2t_r1"] = ret["text_retrieval_recall@1"]
    metrics["retrieval_t2i_r1"] = ret["image_retrieval_recall@1"]

    classes = ShapesClassification(0, attribute="shape").classes
    train_x = encode_images(model, sets.probe_train, precision=precision)
    metrics["linear_probe_shape_acc1"] = _probe(train_x, sets.probe_train.labels("shape", classes), heldout_x,
                                                sets.heldout.labels("shape", classes), len(classes), seed)
    return metrics
