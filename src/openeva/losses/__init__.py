"""Training losses: contrastive (CLIP, tiled Inf-CL), sigmoid (SigLIP) and masked-image-modelling losses.

Collectives live here (``rank`` / ``world_size`` are passed in), never in model code.
"""

from openeva.losses.contrastive import ClipLoss
from openeva.losses.distributed import all_gather_with_grad, gather_features
from openeva.losses.mim import mim_cosine_loss, patchify, pixel_regression_loss, unpatchify
from openeva.losses.siglip import SigLipLoss
from openeva.losses.tiled import tiled_clip_loss, tiled_cross_entropy, tiled_logsumexp

__all__ = [
    "ClipLoss",
    "SigLipLoss",
    "all_gather_with_grad",
    "gather_features",
    "mim_cosine_loss",
    "patchify",
    "pixel_regression_loss",
    "tiled_clip_loss",
    "tiled_cross_entropy",
    "tiled_logsumexp",
    "unpatchify",
]
