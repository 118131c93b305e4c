"""The MIM hand-off, key by key: a saved MIM student as a classifier backbone and as an EVA-CLIP vision tower."""

from __future__ import annotations

import pytest
import torch

from openeva.checkpoints import read_config, read_state_dict
from openeva.factory import build_student, create_model, load_tower, save_model

STUDENT = "eva02_test_patch8_32"
MIM_ONLY = {"mask_token", "lm_head.weight", "lm_head.bias"}


@pytest.fixture(scope="module")
def mim_dir(tmp_path_factory):
    """A 'trained' student: every tensor random and distinct (norm weights too), saved as a run would."""
    torch.manual_seed(0)
    student = build_student(STUDENT, target_dim=32)
    with torch.no_grad():
        for p in student.parameters():
            p.copy_(torch.randn_like(p))
    out = tmp_path_factory.mktemp("mim") / "model"
    save_model(student, out, extra={"mim": {"teacher": "EVA02-test"}})
    return out, {k: v.clone() for k, v in student.state_dict().items()}


def test_saved_directory_is_eva_mim_layout_with_plain_backbone_config(mim_dir):
    out, student_sd = mim_dir
    saved = read_state_dict(out)
    assert set(saved) == set(student_sd)
    assert MIM_ONLY | {"norm.weight", "norm.bias"} <= set(saved)
    cfg = read_config(out)
    assert cfg["model_name"] == STUDENT
    assert cfg["model_config"]["global_pool"] == "avg" and cfg["model_config"]["mask_token"] is False
    assert cfg["model_config"]["patch_embed_grad_scale"] == 1.0
    assert cfg["mim"] == {"teacher": "EVA02-test"}


@pytest.mark.parametrize("how", ["directory", "pretrained", "build_classifier"])
def test_mim_to_classifier_key_by_key(mim_dir, how):
    out, student_sd = mim_dir
    if how == "directory":
        clf = create_model(str(out), num_classes=10)
    elif how == "pretrained":
        clf = create_model(STUDENT, pretrained=str(out), num_classes=10)
    else:
        from openeva.train.finetune_task import build_classifier

        clf = build_classifier(str(out), 10)
    sd = clf.state_dict()
    used = set()
    for k, v in sd.items():
        if k.startswith("head."):
            assert v.shape[0] == 10  # new classifier, re-initialised
            continue
        src = "norm." + k[len("fc_norm."):] if k.startswith("fc_norm.") else k
        torch.testing.assert_close(v, student_sd[src], msg=f"{k} <- {src}")
        used.add(src)
    assert set(student_sd) - used == MIM_ONLY  # every other tensor landed somewhere
    assert not hasattr(clf, "lm_head") and clf.mask_token is None
    assert clf(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mim_directory_builds_the_plain_backbone(mim_dir):
    out, student_sd = mim_dir
    backbone = create_model(str(out))
    assert backbone.cfg.global_pool == "avg" and backbone.num_classes == 0
    torch.testing.assert_close(backbone.fc_norm.weight, student_sd["norm.weight"])
    assert backbone(torch.randn(1, 3, 32, 32)).shape == (1, 64)


def test_mim_to_clip_vision_tower_key_by_key(mim_dir):
    out, student_sd = mim_dir
    torch.manual_seed(1)
    clip = create_model("EVA02-test")
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    report = load_tower(clip.visual, str(out), "visual")
    used = set()
    for k, v in clip.state_dict().items():
        if not k.startswith("visual."):
            torch.testing.assert_close(v, before[k], msg=k)  # text tower and logit scale untouched
            continue
        name = k[len("visual."):]
        if name.startswith("head.") or (name.startswith("blocks.") and ".attn.norm." in name):
            torch.testing.assert_close(v, before[k], msg=k)  # CLIP-only: projection and inner_attn_ln stay fresh
            continue
        torch.testing.assert_close(v, student_sd[name], msg=k)  # norm -> norm, blocks identical
        used.add(name)
    assert set(student_sd) - used == MIM_ONLY
    assert any("attn.norm" in k for k in report.missing) and "head.weight" in report.missing
    assert clip.encode_image(torch.randn(2, 3, 32, 32)).shape == (2, 32)


def test_mim_to_clip_tower_with_another_patch_size_resamples_kernel_and_grid(mim_dir):
    out, student_sd = mim_dir
    clip = create_model("EVA02-test", patch_size=16)  # as EVA02-B-16 from a patch-14 student
    report = load_tower(clip.visual, str(out), "visual")
    vis = clip.visual.state_dict()
    assert vis["patch_embed.proj.weight"].shape[-1] == 16 and vis["pos_embed"].shape[1] == 1 + 4
    torch.testing.assert_close(vis["pos_embed"][:, 0], student_sd["pos_embed"][:, 0])  # CLS slot kept
    torch.testing.assert_close(vis["blocks.1.mlp.fc2.weight"], student_sd["blocks.1.mlp.fc2.weight"])
    assert any("patch kernel" in n for n in report.notes) and any("resampled pos_embed" in n for n in report.notes)


def test_mim_into_a_mismatched_tower_is_refused(mim_dir):
    out, _ = mim_dir
    from openeva.checkpoints import CheckpointMismatchError

    with pytest.raises(CheckpointMismatchError):
        load_tower(create_model("EVA02-E-test").visual, str(out), "visual")  # GELU post-norm tower: other tensors
