"""Zero-shot video classification: the protocol lives in :mod:`openeva.evaluators.video`; these are the names
``openeva.eval.video`` has always offered."""

from openeva.evaluators.video import (
    DEFAULT_VIDEO_TEMPLATES, MAX_LISTED_SKIPS, VideoOptions, VideoZeroShot, embed_video, evaluate_zeroshot_video,
)

__all__ = ["DEFAULT_VIDEO_TEMPLATES", "MAX_LISTED_SKIPS", "VideoOptions", "VideoZeroShot", "embed_video",
           "evaluate_zeroshot_video"]
