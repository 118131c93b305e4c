"""Building the two models of EVA-02 MIM pretraining: the student and the frozen CLIP teacher.

The modules live in :mod:`openeva.models.mim`; here they are made from registered names or checkpoint
directories, their weights loaded under ``policies.MIM_STUDENT`` (a student's checkpoint, or a plain backbone's:
then ``mask_token`` and ``lm_head`` start fresh) and ``policies.MIM_TEACHER`` (every vision-tower key).
"""

from __future__ import annotations

from openeva.factory.create import build_config, load_from, resolve_pretrained, resolve_spec
from openeva.factory.policies import MIM_STUDENT, MIM_TEACHER
from openeva.models.mim import ClipTeacher, MIMStudent
from openeva.models.vit import EVAViT
from openeva.runtime import resolve_precision


def build_student(
    model_name: str,
    target_dim: int,
    img_size=None,
    drop_path_rate: float = 0.0,
    patch_embed_grad_scale: float = 0.1,
    pretrained: str | None = None,
) -> MIMStudent:
    """A registered backbone (e.g. ``eva02_base_patch14_224``) as a MIM student: freshly initialised, or
    continuing from ``pretrained`` (a path or tag: a student's checkpoint, e.g. IN-21K -> Merged-38M, or a plain
    backbone's)."""
    spec, _ = resolve_spec(model_name)
    if spec.is_clip:
        raise ValueError(f"student {model_name!r} is a CLIP model; the MIM student is a backbone "
                         "(e.g. eva02_base_patch14_224; see `openeva models`)")
    cfg = build_config(spec, img_size=img_size, drop_path_rate=drop_path_rate,
                       patch_embed_grad_scale=patch_embed_grad_scale)
    student = MIMStudent(cfg, target_dim)
    student.spec = spec
    if pretrained:
        load_from(student, resolve_pretrained(spec, pretrained), MIM_STUDENT)
    return student


def build_teacher(
    model_name: str,
    pretrained: str | None = None,
    precision: str = "auto",
    input_mean: tuple[float, float, float] | None = None,
    input_std: tuple[float, float, float] | None = None,
) -> ClipTeacher:
    """A CLIP model's vision tower as a teacher, weights from any format ``load_checkpoint`` reads.

    ``model_name``: a registered CLIP name (``EVA02-B-16``, ``EVA01-g-14``) or an openeva CLIP checkpoint
    directory (then ``pretrained`` defaults to it). ``pretrained``: an EVA-CLIP ``.pt``, open_clip ``.bin``, timm
    vision-tower file, openeva directory, or a published tag. Only the vision tower is built and loaded (no text
    tower in memory). With no weights at all the teacher is random (tests, smoke runs), which is logged loudly
    by the caller's config, not refused. ``precision`` "auto": bf16 where the CPU / GPU has it natively, else
    fp32 (``openeva.runtime.resolve_precision``).
    """
    precision, _ = resolve_precision(precision, "cpu")
    spec, saved = resolve_spec(model_name)
    if not spec.is_clip:
        raise ValueError(f"teacher {model_name!r} is not a CLIP model; the target needs the CLIP projection head "
                         "(use e.g. EVA02-B-16 or EVA01-g-14)")
    visual = EVAViT(spec.config.vision)
    weights = pretrained or saved
    if weights is not None:
        load_from(visual, resolve_pretrained(spec, weights), MIM_TEACHER)
    teacher = ClipTeacher(visual, precision=precision, mean=spec.mean, std=spec.std,
                          input_mean=input_mean, input_std=input_std)
    teacher.spec = spec
    teacher.pretrained = weights
    return teacher
