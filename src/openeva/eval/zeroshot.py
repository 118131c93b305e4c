"""Zero-shot classification as CLIP (Radford et al. 2021) and open_clip evaluate it.

The classifier is built once for the whole library, in :mod:`openeva.evaluators.text`; the metric math is
:mod:`openeva.metrics`; class names and templates come from :mod:`openeva.data.classnames`. This module keeps
the names ``openeva.eval.zeroshot`` has always offered.
"""

from openeva.data.classnames import BUILTIN_DATASETS, fill_template, load_builtin, load_classnames, load_templates
from openeva.evaluators.text import build_zeroshot_classifier
from openeva.metrics import classification_metrics, confusion_matrix, per_class_accuracy, zeroshot_logits

__all__ = [
    "BUILTIN_DATASETS", "build_zeroshot_classifier", "classification_metrics", "confusion_matrix", "fill_template",
    "load_builtin", "load_classnames", "load_templates", "per_class_accuracy", "zeroshot_logits",
]
