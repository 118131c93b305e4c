"""One model builder: the MIM student and teacher, the classifier and CLIP training's model come from the factory,
each loading its weights under its stated policy; ``models/`` keeps the modules only."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

import openeva.models.mim as mim_modules
from openeva.checkpoints import CheckpointMismatchError
from openeva.factory import build_student, create_clip, create_model, load_tower, policies, save_model

STUDENT = "eva02_test_patch8_32"


def test_models_hold_modules_only():
    assert not hasattr(mim_modules, "build_student") and not hasattr(mim_modules, "build_teacher")
    assert not hasattr(mim_modules, "CLIP_TOWER_NEW_KEYS") and policies.CLIP_VISUAL.may_be_missing


def test_mim_continues_from_a_plain_backbone_with_fresh_mask_token_and_lm_head(tmp_path):
    torch.manual_seed(0)
    backbone = create_model(STUDENT)
    with torch.no_grad():
        backbone.fc_norm.weight.normal_()
    save_model(backbone, tmp_path / "backbone")
    student = build_student(STUDENT, target_dim=32, pretrained=str(tmp_path / "backbone"))
    torch.testing.assert_close(student.norm.weight, backbone.fc_norm.weight)  # fc_norm -> the student's norm
    torch.testing.assert_close(student.blocks[1].mlp.fc2.weight, backbone.blocks[1].mlp.fc2.weight)
    assert student.lm_head.out_features == 32 and student.mask_token is not None


def test_mim_continuation_refuses_what_the_student_policy_does_not_allow(tmp_path):
    """The old ``strict=False`` load let any key stay random; now only the MIM-only keys may be missing."""
    sd = build_student(STUDENT, target_dim=32).state_dict()
    del sd["blocks.0.attn.qkv.weight"]
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "student.safetensors"))
    with pytest.raises(CheckpointMismatchError, match="fit the MIM student") as err:
        build_student(STUDENT, target_dim=32, pretrained=str(tmp_path / "student.safetensors"))
    assert err.value.missing == ["blocks.0.attn.qkv.weight"]


def test_clip_text_tower_refuses_an_unexpected_key_by_name(tmp_path):
    torch.manual_seed(0)
    clip = create_model("EVA02-test")
    sd = {k: v.contiguous() for k, v in clip.state_dict().items()}
    sd["text.extra_adapter.weight"] = torch.zeros(2)
    save_file(sd, str(tmp_path / "clip.safetensors"))
    with pytest.raises(CheckpointMismatchError) as err:
        create_clip("EVA02-test", pretrained_text=str(tmp_path / "clip.safetensors"))
    assert err.value.unexpected == ["extra_adapter.weight"] and "does not fit the CLIP text tower" in str(err.value)


def test_clip_towers_from_checkpoints_report_in_the_policy_words(tmp_path):
    torch.manual_seed(0)
    source = create_model("EVA02-test")
    save_model(source, tmp_path / "clip")
    torch.manual_seed(1)
    model = create_clip("EVA02-test", pretrained_text=str(tmp_path / "clip"), skip_list=("text_projection",
                                                                                          "logit_scale"))
    torch.testing.assert_close(model.text.token_embedding.weight, source.text.token_embedding.weight)
    assert not torch.equal(model.text.text_projection, source.text.text_projection)  # skipped: fresh init
    report = load_tower(model.visual, str(tmp_path / "clip"), "visual")
    assert report.tower == "CLIP vision tower" and report.complete and report.format == "openeva_clip"
    with pytest.raises(ValueError, match="which must be"):
        load_tower(model.visual, str(tmp_path / "clip"), "audio")
