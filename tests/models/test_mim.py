"""MIM student and CLIP teacher: targets equal a direct teacher forward, grid resampling, loading, errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from openeva.factory import build_student, build_teacher, create_model, save_model
from openeva.models.mim import ClipTeacher, MIMStudent, resample_target_grid

STUDENT = "eva02_test_patch8_32"
TEACHER = "EVA02-test"


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return create_model(TEACHER).eval()


def _images(n=2, size=32, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_teacher_targets_equal_direct_teacher_forward(clip):
    teacher = ClipTeacher(copy.deepcopy(clip.visual), precision="fp32")
    images = _images()
    with torch.no_grad():
        tokens = clip.visual.forward_features(images)  # (B, 1 + N, D), after the final norm
        direct = clip.visual.head(tokens[:, 1:])  # (B, N, C)
    got = teacher(images, grid_size=(4, 4))
    assert got.shape == (2, 16, clip.embed_dim)
    torch.testing.assert_close(got, direct)
    # the pooled CLS token through the same head is encode_image: the target uses the same projection
    torch.testing.assert_close(clip.visual.head(tokens[:, 0]), clip.encode_image(images))


def test_bf16_teacher_close_to_fp32(clip):
    fp32 = ClipTeacher(copy.deepcopy(clip.visual), precision="fp32")
    bf16 = ClipTeacher(copy.deepcopy(clip.visual), precision="bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16
    images = _images()
    a, b = fp32(images, (4, 4)), bf16(images, (4, 4))
    assert b.dtype == torch.float32
    assert F.cosine_similarity(a, b, dim=-1).min() > 0.98


def test_teacher_is_frozen_and_stays_in_eval(clip):
    teacher = ClipTeacher(copy.deepcopy(clip.visual), precision="fp32")
    teacher.train()
    assert not teacher.visual.training
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not teacher(_images(), (4, 4)).requires_grad


def test_teacher_grid_resampled_bilinearly_to_student_grid():
    torch.manual_seed(0)
    coarse = create_model(TEACHER, patch_size=16).visual  # 32 px / 16 = 2x2 grid
    teacher = ClipTeacher(coarse, precision="fp32")
    images = _images()
    own = teacher.patch_features(images)  # (B, 4, C)
    got = teacher(images, grid_size=(4, 4))  # (B, 16, C)
    fmap = own.transpose(1, 2).reshape(2, -1, 2, 2)
    want = F.interpolate(fmap, size=(4, 4), mode="bilinear", align_corners=False).flatten(2).transpose(1, 2)
    assert got.shape == (2, 16, teacher.target_dim)
    torch.testing.assert_close(got, want)


def test_teacher_at_another_resolution_sees_the_same_crop_resized():
    torch.manual_seed(0)
    teacher = ClipTeacher(create_model(TEACHER, img_size=48).visual, precision="fp32")  # 6x6 grid
    images = _images()
    resized = F.interpolate(images, size=(48, 48), mode="bicubic", align_corners=False, antialias=True)
    want = resample_target_grid(teacher.patch_features(resized), (6, 6), (4, 4))
    torch.testing.assert_close(teacher(images, (4, 4)), want)


def test_resample_target_grid_keeps_constant_maps_and_identity():
    t = torch.randn(2, 9, 5)
    assert resample_target_grid(t, (3, 3), (3, 3)) is t
    const = torch.ones(2, 4, 5) * torch.arange(5.0)
    torch.testing.assert_close(resample_target_grid(const, (2, 2), (7, 7)), torch.ones(2, 49, 5) * torch.arange(5.0))
    with pytest.raises(ValueError, match="3x3"):
        resample_target_grid(torch.randn(1, 8, 2), (3, 3), (4, 4))


def test_teacher_renormalises_images_when_its_statistics_differ(clip):
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    teacher = ClipTeacher(copy.deepcopy(clip.visual), precision="fp32", mean=clip.spec.mean, std=clip.spec.std,
                          input_mean=mean, input_std=std)
    pixels = torch.rand(2, 3, 32, 32)
    student_view = (pixels - 0.5) / 0.25
    teacher_view = (pixels - torch.tensor(clip.spec.mean).view(1, 3, 1, 1)) / torch.tensor(clip.spec.std).view(1, 3, 1, 1)
    direct = ClipTeacher(copy.deepcopy(clip.visual), precision="fp32")
    torch.testing.assert_close(teacher(student_view, (4, 4)), direct(teacher_view, (4, 4)), atol=1e-4, rtol=1e-4)


def test_build_teacher_loads_only_the_vision_tower_from_a_clip_checkpoint(tmp_path, clip):
    save_model(clip, tmp_path / "clip")
    teacher = build_teacher(str(tmp_path / "clip"), precision="fp32")
    assert not hasattr(teacher, "text")
    for k, v in clip.visual.state_dict().items():
        torch.testing.assert_close(teacher.visual.state_dict()[k], v, msg=k)
    # the same weights as a bare vision-tower file (timm-style, no prefix) for a registered name
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in clip.visual.state_dict().items()}, str(tmp_path / "visual.safetensors"))
    again = build_teacher(TEACHER, pretrained=str(tmp_path / "visual.safetensors"), precision="fp32")
    images = _images()
    torch.testing.assert_close(again(images, (4, 4)), teacher(images, (4, 4)))


def test_build_teacher_and_student_refuse_the_wrong_kind_of_model():
    with pytest.raises(ValueError, match="not a CLIP model"):
        build_teacher(STUDENT)
    with pytest.raises(ValueError, match="is a CLIP model"):
        build_student(TEACHER, target_dim=32)
    with pytest.raises(ValueError, match="precision"):
        build_teacher(TEACHER, precision="int8")
    with pytest.raises(FileNotFoundError):
        build_teacher(TEACHER, pretrained="/no/such/teacher.pt")


def test_student_layout_and_predictions():
    torch.manual_seed(0)
    student = build_student(STUDENT, target_dim=32, drop_path_rate=0.1)
    assert isinstance(student, MIMStudent)
    keys = set(student.state_dict())
    assert {"mask_token", "norm.weight", "norm.bias", "lm_head.weight", "lm_head.bias"} <= keys
    assert not any(k.startswith("fc_norm") or k.startswith("head") for k in keys)
    assert student.cfg.patch_embed_grad_scale == 0.1 and student.cfg.drop_path_rate == 0.1
    assert student.layer_id("lm_head.weight") == student.num_layers - 1
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :3] = True
    mask[1, 5:10] = True
    pred = student(_images(), mask)
    assert pred.shape == (8, 32)
    plain = student.export_config()
    assert (plain.global_pool, plain.mask_token, plain.drop_path_rate, plain.patch_embed_grad_scale) == (
        "avg", False, 0.0, 1.0)


def test_student_mask_token_replaces_masked_patches_only():
    torch.manual_seed(0)
    student = build_student(STUDENT, target_dim=32).eval()
    images = _images(1)
    mask = torch.zeros(1, 16, dtype=torch.bool)
    mask[0, 0] = True
    a = student.forward_features(images, mask)
    changed = images.clone()
    changed[..., :8, :8] += 5.0  # only the pixels of masked patch 0
    torch.testing.assert_close(student.forward_features(changed, mask), a)
    changed = images.clone()
    changed[..., 8:16, :8] += 5.0  # pixels of unmasked patch 4
    assert not torch.allclose(student.forward_features(changed, mask), a)
