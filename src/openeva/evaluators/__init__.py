"""One evaluation system: evaluators with typed options, shared by ``openeva eval`` and training validation.

Each evaluator is a frozen dataclass (its options, batching, and any companion such as a tokenizer) with
``run(model, data, *, device, precision, group=None) -> {metric: value}``; ``group`` is a
``torch.distributed`` process group (None: one process) and every evaluator states its rank rule
(:mod:`openeva.evaluators.distributed`). This package sits low: it imports data, metrics, runtime and nothing
of train, eval, dense, serve, quickstart, cli, factory or checkpoints, so all of those can use it.

=================  ==========================================  ============================================
evaluator          data                                        rank rule
=================  ==========================================  ============================================
``Accuracy``       (images, labels) of a classifier            score each part, sum the counts
``ZeroShot``       :class:`Labelled` images                    score each part, sum the counts
``Retrieval``      (image, tokens) pairs                       gather the features
``KNN``            :class:`TrainTest`                          gather the bank, sum the counts
``LinearProbe``    :class:`TrainTest`                          gather, fit on rank 0, broadcast, sum counts
``MIoU``           :class:`Segmented` (input, mask) pairs      score each part, sum the confusion
``VideoZeroShot``  :class:`Labelled` videos (frames, label)    score each part, sum the counts
=================  ==========================================  ============================================
"""

from openeva.evaluators.base import Batching, Evaluator, Labelled, TrainTest
from openeva.evaluators.classification import Accuracy, AccuracyOptions, ZeroShot, ZeroShotOptions
from openeva.evaluators.features import EncodedImages, encode_images, image_features
from openeva.evaluators.knn import KNN, KNNOptions
from openeva.evaluators.linear_probe import LinearProbe, LinearProbeOptions
from openeva.evaluators.retrieval import Retrieval, RetrievalOptions
from openeva.evaluators.segmentation import MIoU, MIoUOptions, Segmented
from openeva.evaluators.text import build_zeroshot_classifier, encode_texts, zeroshot_classifier
from openeva.evaluators.video import VideoOptions, VideoZeroShot

__all__ = [
    "Accuracy", "AccuracyOptions", "Batching", "EncodedImages", "Evaluator", "KNN", "KNNOptions", "Labelled",
    "LinearProbe", "LinearProbeOptions", "MIoU", "MIoUOptions", "Retrieval", "RetrievalOptions", "Segmented",
    "TrainTest", "VideoOptions", "VideoZeroShot", "ZeroShot", "ZeroShotOptions", "build_zeroshot_classifier",
    "encode_images", "encode_texts", "image_features", "zeroshot_classifier",
]
