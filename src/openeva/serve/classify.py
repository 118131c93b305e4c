"""Zero-shot labels for every image of a collection (``openeva classify``, ``openeva.classify``).

Class names and templates come from the data layer's loaders (builtin lists such as ``imagenet1k``,
files, or plain lists); the prompt classifier is the library's one zero-shot head
(:func:`openeva.evaluators.text.zeroshot_classifier`) over the :class:`Encoder` interface, so any backend
classifies, and the scores are :func:`openeva.metrics.zeroshot_logits`. Unreadable images are skipped, counted and listed, as in ``openeva embed``.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from openeva.data.collection import open_collection
from openeva.data.classnames import load_classnames, load_templates
from openeva.evaluators.text import zeroshot_classifier
from openeva.metrics import zeroshot_logits
from openeva.runtime import atomic_write_bytes
from openeva.serve.embed import _collate, _Decoded
from openeva.serve.encoder import Encoder, load_encoder

DEFAULT_TEMPLATES = ("a photo of a {c}.", "{c}")


def parse_labels(labels) -> list[str]:
    """``"cat,dog,car"`` or a list -> stripped, non-empty, unique label strings."""
    items = labels.split(",") if isinstance(labels, str) else list(labels)
    names = [str(x).strip() for x in items if str(x).strip()]
    if not names:
        raise ValueError("no labels given (e.g. --labels \"cat,dog,car\")")
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate labels in {names}")
    return names


def text_classifier(encoder: Encoder, classnames: list[str], templates) -> np.ndarray:
    """(D, C) unit class vectors: the mean of each class's normalised prompt embeddings, renormalised."""
    weights = zeroshot_classifier(lambda texts: torch.from_numpy(encoder.encode_texts(texts)), classnames,
                                  list(templates))  # (D, C)
    return weights.numpy()


def label_probs(image_vectors: np.ndarray, classifier: np.ndarray) -> np.ndarray:
    """(N, D) image vectors x (D, C) class vectors -> (N, C) softmax probabilities of CLIP's 100 x cosine."""
    logits = zeroshot_logits(torch.from_numpy(np.asarray(image_vectors)), torch.from_numpy(classifier))  # (N, C)
    return logits.softmax(dim=-1).numpy()


def top_labels(probs: np.ndarray, classnames: list[str], k: int) -> list[list[tuple[str, float]]]:
    k = min(k, len(classnames))
    order = np.argsort(-probs, axis=1)[:, :k]
    return [[(classnames[j], float(p[j])) for j in row] for p, row in zip(probs, order)]


def classify(src, model: str | None = None, labels=None, *, classnames: str | None = None, templates=None,
             out=None, pretrained: str | None = None, encoder: Encoder | None = None, k: int = 5,
             batch_size: int = 64, workers: int = 0, image_key: str | None = None, progress: bool = True) -> dict:
    """Label every image of ``src``; returns ``{"predictions": [...], "skipped": [...], "labels": [...]}``.

    ``labels`` ("cat,dog" or a list) or ``classnames`` (a builtin name like ``imagenet1k`` or a file);
    ``templates`` a builtin name, file or list (default: "a photo of a {c}." and "{c}"). With ``out`` the
    predictions are also written as CSV (id, path, label, score, top_k as JSON).
    """
    if (labels is None) == (classnames is None):
        raise ValueError("give exactly one of labels or classnames")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    names = parse_labels(labels) if labels is not None else load_classnames(classnames)
    if templates is None:
        prompts = list(DEFAULT_TEMPLATES)
    else:
        prompts = load_templates(templates)
    collection = open_collection(src, image_key=image_key)
    if encoder is None:
        if model is None:
            raise ValueError("classify needs a model name (or an encoder)")
        encoder = load_encoder(model, pretrained)
    classifier = text_classifier(encoder, names, prompts)  # (D, C)
    loader = torch.utils.data.DataLoader(_Decoded(collection, encoder.preprocess), batch_size=batch_size,
                                         num_workers=workers, collate_fn=_collate)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(collection), unit="img", desc="classify", dynamic_ncols=True)
    predictions, skipped = [], []
    for pixels, kept, bad in loader:
        if pixels is not None:
            probs = label_probs(encoder.encode_images(pixels), classifier)  # (B, C)
            for (i, _, _), top in zip(kept, top_labels(probs, names, k)):
                predictions.append({"id": collection.key(i), "path": collection.path(i), "label": top[0][0],
                                    "score": top[0][1], "top_k": top})
        skipped += [{"id": collection.key(i), "path": collection.path(i), "error": err} for i, err in bad]
        if bar is not None:
            bar.update(len(kept) + len(bad))
    if bar is not None:
        bar.close()
    result = {"labels": names, "templates": prompts, "predictions": predictions, "skipped": skipped,
              "source_skipped": collection.skipped}
    if out is not None:
        write_predictions_csv(predictions, Path(out).expanduser())
    return result


def write_predictions_csv(predictions: list[dict], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["id", "path", "label", "score", "top_k"])
    for p in predictions:
        writer.writerow([p["id"], p["path"], p["label"], f"{p['score']:.6f}",
                         json.dumps([[name, round(s, 6)] for name, s in p["top_k"]])])
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue().encode())
