"""Every weight-loading policy openeva applies, stated once: per tower, which keys may differ from its checkpoint.

Everything not named here must be in the checkpoint with the model's shape, or the load is refused
(:class:`~openeva.checkpoints.CheckpointMismatchError`, naming every key) and nothing is loaded. Layout adaptation
(key renames, MIM-only keys a backbone lacks, resampled position grids and patch kernels) happens before the check,
in :func:`openeva.checkpoints.read_weights`, and is reported in the load's notes.
"""

from __future__ import annotations

from openeva.checkpoints.io import MIM_ONLY_KEYS
from openeva.checkpoints.policy import LoadPolicy

# Tensors an EVA-CLIP vision tower has and a MIM backbone does not: the projection head (new) and EVA-CLIP's
# sub-LN on the merged attention heads (``inner_attn_ln``, B/L towers), both left at their fresh init.
CLIP_TOWER_NEW_KEYS = ("head.*", "blocks.*.attn.norm.*")

# ``create_model`` (CLIP or backbone) and the MIM teacher's vision tower: every key, exactly.
MODEL = LoadPolicy("model")
MIM_TEACHER = LoadPolicy("MIM teacher")
# A backbone with a new ``num_classes`` head (``create_model(..., num_classes=K)``, fine-tuning): the checkpoint's
# head is kept when it has K classes; a headless (MIM) checkpoint or one for another label set gets a new head.
CLASSIFIER = LoadPolicy("classifier", may_be_missing=("head.*",), may_be_reshaped=("head.*",))
# Continuing MIM from a checkpoint: a student's own, or a plain backbone's (then ``mask_token`` and ``lm_head``
# start fresh).
MIM_STUDENT = LoadPolicy("MIM student", may_be_missing=MIM_ONLY_KEYS)
# CLIP training's tower inits (``model.pretrained_image`` / ``model.pretrained_text``), each widened by the run's
# skip list: a vision tower from a MIM backbone or any CLIP, a text tower from any CLIP.
CLIP_VISUAL = LoadPolicy("CLIP vision tower", may_be_missing=CLIP_TOWER_NEW_KEYS)
CLIP_TEXT = LoadPolicy("CLIP text tower")
# ``create_model(..., strict=False)``: any model key may stay as initialised; what is there must still fit.
PARTIAL = LoadPolicy("model", may_be_missing=("*",))
