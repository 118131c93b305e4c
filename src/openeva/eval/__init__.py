"""Evaluation of openeva models: zero-shot classification, retrieval, linear probe, kNN, fine-tuning,
open-vocabulary segmentation and zero-shot video.

``evaluate(model, EvalConfig(...))`` runs tasks end to end (``openeva eval`` on the command line). The
evaluators themselves (typed options, rank-aware, shared with training validation) are
:mod:`openeva.evaluators`; the protocol functions re-exported here also work on features you encoded yourself.
"""

from openeva.data.idx import read_idx
from openeva.data.labelled import load_classification_dataset, load_retrieval_dataset
from openeva.eval.config import EvalConfig, FinetuneEvalOptions, SegmentationEvalOptions, VideoEvalOptions
from openeva.eval.features import FeatureCache, encode_images, encode_texts
from openeva.eval.knn import knn_classify
from openeva.eval.linear_probe import evaluate_linear_probe
from openeva.eval.results import format_table, load_results, make_result, merge_results, validate_result
from openeva.eval.retrieval import evaluate_retrieval
from openeva.eval.runner import evaluate
from openeva.eval.zeroshot import build_zeroshot_classifier, load_classnames, load_templates
from openeva.evaluators import KNNOptions, LinearProbeOptions

__all__ = [
    "EvalConfig",
    "FeatureCache",
    "FinetuneEvalOptions",
    "KNNOptions",
    "LinearProbeOptions",
    "SegmentationEvalOptions",
    "VideoEvalOptions",
    "build_zeroshot_classifier",
    "encode_images",
    "encode_texts",
    "evaluate",
    "evaluate_retrieval",
    "format_table",
    "knn_classify",
    "evaluate_linear_probe",
    "load_classification_dataset",
    "load_classnames",
    "load_results",
    "load_retrieval_dataset",
    "load_templates",
    "make_result",
    "merge_results",
    "read_idx",
    "validate_result",
]
