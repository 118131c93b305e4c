"""MIMTask: masked-only loss, frozen teacher, targets, pixel baseline, and the loss falling on shapes."""

from __future__ import annotations

import pytest
import torch

from openeva.data.loader import collate_skip_none
from openeva.data.masking import BlockMaskGenerator
from openeva.data.synthetic import ShapesDataset
from openeva.data.transforms import PreprocessConfig, image_transform
from openeva.factory import build_student, build_teacher
from openeva.train.mim_task import MIMTask, with_masks

STUDENT = "eva02_test_patch8_32"
TEACHER = "EVA02-test"


def _task(target="clip", seed=0, **kw):
    torch.manual_seed(seed)
    if target == "clip":
        teacher = build_teacher(TEACHER, precision="fp32")
        return MIMTask(build_student(STUDENT, teacher.target_dim), teacher, **kw)
    return MIMTask(build_student(STUDENT, 8 * 8 * 3), target="pixel", **kw)


def _batch(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    gen = BlockMaskGenerator((4, 4), num_masking_patches=6, min_num_patches=2)
    masks = torch.stack([gen(g) for _ in range(n)])  # (B, 4, 4)
    return images, ["a caption"] * n, masks


def test_loss_is_masked_only():
    """Perturbing the student's outputs at unmasked positions leaves the loss unchanged; masked ones change it."""
    task = _task()
    images, texts, masks = _batch()
    flat = masks.flatten(1)
    base, _ = task((images, texts, masks))

    def perturb(where):
        def hook(module, inputs, out):  # out: (B, 1 + N, D) normalised tokens
            noise = torch.zeros_like(out)
            noise[:, 1:][where] = 3.0
            return out + noise
        return hook

    handle = task.student.norm.register_forward_hook(perturb(~flat))
    unmasked, _ = task((images, texts, masks))
    handle.remove()
    handle = task.student.norm.register_forward_hook(perturb(flat))
    masked, _ = task((images, texts, masks))
    handle.remove()
    torch.testing.assert_close(unmasked, base)
    assert not torch.allclose(masked, base)


def test_targets_are_the_teacher_patch_features_of_the_masked_tokens():
    task = _task()
    images, texts, masks = _batch()
    flat = masks.flatten(1)
    with torch.no_grad():
        tokens = task.teacher.visual.forward_features(images)
        direct = task.teacher.visual.head(tokens[:, 1:])  # (B, N, C)
        pred = task.student(images, flat)  # (M, C)
    loss, metrics = task((images, texts, masks))
    want = -torch.nn.functional.cosine_similarity(pred, direct[flat], dim=-1).mean()
    torch.testing.assert_close(loss.detach(), want)
    assert metrics["mask_ratio"] == pytest.approx(6 / 16)


def test_no_gradient_reaches_the_teacher_and_checkpoints_leave_it_out():
    task = _task()
    loss, _ = task(_batch())
    loss.backward()
    assert all(p.grad is None and not p.requires_grad for p in task.teacher.parameters())
    assert task.student.lm_head.weight.grad is not None and task.student.mask_token.grad is not None
    # the patch embedding trains, with EVA-02's damped gradient
    assert task.student.patch_embed.proj.weight.grad is not None
    specs = task.param_group_specs()
    assert [s.module for s in specs] == [task.student]
    sd = task.state_dict()
    assert not any(k.startswith("teacher.") for k in sd) and "student.lm_head.weight" in sd
    fresh = _task(seed=1)
    fresh.load_state_dict(sd)  # strict load without teacher keys works
    torch.testing.assert_close(fresh.student.lm_head.weight, task.student.lm_head.weight)


def test_teacher_stays_in_eval_when_the_task_trains():
    task = _task().train()
    assert task.student.training and not task.teacher.training


def test_patch_embed_gradient_is_scaled_by_a_tenth():
    """x.detach() * 0.9 + x * 0.1: the patch kernel's gradient is exactly 0.1 of the undamped one."""
    grads = []
    for scale in (0.1, 1.0):
        torch.manual_seed(0)
        teacher = build_teacher(TEACHER, precision="fp32")
        student = build_student(STUDENT, teacher.target_dim, patch_embed_grad_scale=scale)
        loss, _ = MIMTask(student, teacher)(_batch())
        loss.backward()
        grads.append(student.patch_embed.proj.weight.grad.clone())
    torch.testing.assert_close(grads[0], 0.1 * grads[1])


def test_masks_drawn_by_the_task_when_the_batch_has_none():
    gen = BlockMaskGenerator((4, 4), num_masking_patches=5, min_num_patches=2)
    task = _task(mask_generator=gen)
    images, _, _ = _batch()
    loss, metrics = task(images)
    assert torch.isfinite(loss) and metrics["mask_ratio"] == pytest.approx(5 / 16)
    with pytest.raises(ValueError, match="no bool mask"):
        _task()((images, ["x"] * 4))


def test_bad_inputs_are_refused_with_clear_errors():
    task = _task()
    images, texts, masks = _batch()
    with pytest.raises(ValueError, match="patch grid"):
        task((images, torch.zeros(4, 3, 3, dtype=torch.bool)))
    # masks selecting nothing: nothing to learn, a zero loss (refusing them would need a host sync every step)
    empty, metrics = task((images, torch.zeros(4, 4, 4, dtype=torch.bool)))
    assert empty.item() == 0.0 and metrics["mask_ratio"] == 0.0
    with pytest.raises(ValueError, match="student expects"):
        task((torch.randn(4, 3, 16, 16), masks))
    with pytest.raises(ValueError, match="target_dim"):
        MIMTask(build_student(STUDENT, 7), build_teacher(TEACHER, precision="fp32"))
    with pytest.raises(ValueError, match="needs a teacher"):
        MIMTask(build_student(STUDENT, 32))
    with pytest.raises(ValueError, match="patch\\*\\*2"):
        MIMTask(build_student(STUDENT, 32), target="pixel")
    with pytest.raises(ValueError, match="target must be"):
        MIMTask(build_student(STUDENT, 32), target="dino")


def test_pixel_target_is_mae_normalised_pixel_regression():
    from openeva.losses.mim import patchify, pixel_regression_loss

    task = _task("pixel")
    images, texts, masks = _batch()
    flat = masks.flatten(1)
    loss, metrics = task((images, texts, masks))
    with torch.no_grad():
        pred = task.student(images, flat)
    want = pixel_regression_loss(pred, patchify(images, 8)[flat], norm_pix=True)
    torch.testing.assert_close(loss.detach(), want)
    assert "cos_sim" not in metrics


def _shapes_loader(n=64, batch=16):
    pre = PreprocessConfig(size=(32, 32))
    ds = ShapesDataset(n, image_size=32, seed=0, transform=image_transform(pre, True, scale=(0.2, 1.0), hflip=0.5))
    gen = BlockMaskGenerator((4, 4), num_masking_patches=6, min_num_patches=2)
    return torch.utils.data.DataLoader(with_masks(ds, gen), batch, shuffle=True, collate_fn=collate_skip_none,
                                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("target", ["clip", "pixel"])
def test_mim_loss_falls_on_shapes(target):
    """Tiny student, tiny random teacher, a few dozen AdamW steps on synthetic shapes: the loss falls."""
    task = _task(target).train()
    opt = torch.optim.AdamW(task.student.parameters(), lr=2e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.05)
    losses = []
    loader = _shapes_loader()
    for _ in range(8):  # 8 epochs x 4 batches = 32 steps
        for batch in loader:
            loss, _ = task(batch)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(task.student.parameters(), 3.0)
            opt.step()
            losses.append(loss.item())
    first, last = sum(losses[:4]) / 4, sum(losses[-4:]) / 4
    assert last < first - 0.2, (first, last)  # typically -0.45 -> -0.9 (clip), 1.2 -> 0.6 (pixel)
