"""Checkpoint I/O: mismatches refused with every key named and the model untouched, clear errors for bad files,
pickles read with ``weights_only=True`` only, and openeva's own safetensors + config.json format."""

from __future__ import annotations

import json
import pathlib

import pytest
import torch

import openeva
from openeva.checkpoints import CheckpointMismatchError, read_config, read_state_dict, save_checkpoint
from openeva.checkpoints.convert import unwrap_state_dict
from openeva.models import EVAViT, ViTConfig


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, before) -> bool:
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _saved(tmp_path, name="eva02_test_patch8_32", **kwargs) -> pathlib.Path:
    torch.manual_seed(1)
    model = openeva.create_model(name, **kwargs)
    torch.save(model.state_dict(), tmp_path / f"{name}.pt")
    return tmp_path / f"{name}.pt"


def test_other_size_is_refused_naming_mis_shaped_keys_and_model_is_unchanged(tmp_path):
    path = _saved(tmp_path)
    cfg = openeva.get_model_spec("eva02_test_patch8_32").config.replace(embed_dim=32, mlp_hidden=64)
    model = EVAViT(cfg)
    before = _snapshot(model)
    with pytest.raises(CheckpointMismatchError) as err:
        openeva.load_checkpoint(model, path)
    mismatched = {k for k, _, _ in err.value.mismatched}
    assert {"cls_token", "pos_embed", "blocks.0.attn.qkv.weight", "blocks.1.mlp.fc1.weight"} <= mismatched
    assert err.value.missing == [] and err.value.unexpected == []
    message = str(err.value)
    assert str(path) in message and "nothing was loaded" in message
    assert "cls_token: checkpoint (1, 1, 64) vs model (1, 1, 32)" in message
    assert _unchanged(model, before)


def test_other_layout_is_refused_naming_missing_and_unexpected_keys(tmp_path):
    """A packed-SwiGLU (Ti/S-like) checkpoint has no sub-LN; a deeper one has blocks this model lacks."""
    sub_ln = openeva.create_model("eva02_test_patch8_32")
    before = _snapshot(sub_ln)
    with pytest.raises(CheckpointMismatchError) as err:
        openeva.load_checkpoint(sub_ln, _saved(tmp_path, "eva02_test_packed_patch8_32"))
    assert set(err.value.missing) == {f"blocks.{i}.mlp.norm.{p}" for i in range(2) for p in ("weight", "bias")}
    assert "blocks.0.mlp.norm.weight" in str(err.value)
    assert _unchanged(sub_ln, before)

    shallow = openeva.create_model("eva02_test_patch8_32", depth=1)
    with pytest.raises(CheckpointMismatchError) as err:
        openeva.load_checkpoint(shallow, _saved(tmp_path))
    assert "blocks.1.attn.qkv.weight" in err.value.unexpected
    assert "unexpected keys: blocks.1." in str(err.value)


def test_other_clip_model_is_refused(tmp_path):
    model = openeva.create_model("EVA02-test")
    before = _snapshot(model)
    with pytest.raises(CheckpointMismatchError) as err:
        openeva.load_checkpoint(model, _saved(tmp_path, "EVA02-E-test"))
    assert "visual.blocks.0.attn.norm.weight" in err.value.missing
    assert _unchanged(model, before)


def test_non_strict_and_ignore_missing(tmp_path):
    sd = openeva.create_model("eva02_test_patch8_32").state_dict()
    del sd["fc_norm.weight"], sd["fc_norm.bias"]
    torch.save(sd, tmp_path / "partial.pt")
    model = openeva.create_model("eva02_test_patch8_32")
    with pytest.raises(CheckpointMismatchError, match="missing keys: fc_norm.weight"):
        openeva.load_checkpoint(model, tmp_path / "partial.pt")
    info = openeva.load_checkpoint(model, tmp_path / "partial.pt", ignore_missing=("fc_norm.*",))
    assert info["missing"] == ["fc_norm.weight", "fc_norm.bias"]
    assert openeva.load_checkpoint(model, tmp_path / "partial.pt", strict=False)["missing"] == info["missing"]
    # shapes are checked even when not strict
    sd["cls_token"] = torch.zeros(1, 1, 8)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointMismatchError, match="cls_token"):
        openeva.load_checkpoint(model, tmp_path / "bad.pt", strict=False)


def test_new_head_on_a_headless_checkpoint(tmp_path):
    """create_model(num_classes=...) does not require the head in the checkpoint (fine-tuning starts)."""
    path = _saved(tmp_path)
    model = openeva.create_model("eva02_test_patch8_32", pretrained=str(path), num_classes=10)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    src = torch.load(path, weights_only=True)
    assert torch.equal(model.pos_embed.detach(), src["pos_embed"])


def test_missing_file_and_garbage_files_give_clear_errors(tmp_path):
    model = openeva.create_model("eva02_test_patch8_32")
    with pytest.raises(FileNotFoundError, match="checkpoint not found: .*nope.pt"):
        openeva.load_checkpoint(model, tmp_path / "nope.pt")
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint")
    with pytest.raises(ValueError, match="cannot read checkpoint .*garbage.pt"):
        openeva.load_checkpoint(model, tmp_path / "garbage.pt")
    (tmp_path / "garbage.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}garbage")
    with pytest.raises(ValueError, match="cannot read safetensors checkpoint .*garbage.safetensors"):
        openeva.load_checkpoint(model, tmp_path / "garbage.safetensors")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="not an openeva checkpoint directory"):
        openeva.load_checkpoint(model, tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        openeva.create_model(str(tmp_path / "empty_dir"))


def test_pickles_that_hold_no_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="holds a list, not a state dict"):
        read_state_dict(tmp_path / "list.pt")
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, tmp_path / "meta.pt")
    with pytest.raises(ValueError, match="no state dict found"):
        read_state_dict(tmp_path / "meta.pt")


class _Exploit:
    """Unpickling this (without weights_only) would create a file: the classic pickle code-execution hole."""

    def __init__(self, target: pathlib.Path):
        self.target = target

    def __reduce__(self):
        return pathlib.Path.touch, (self.target,)


def test_pickled_code_is_never_run(tmp_path):
    target = tmp_path / "pwned"
    sd = openeva.create_model("eva02_test_patch8_32").state_dict()
    torch.save({"model": sd, "payload": _Exploit(target)}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        openeva.load_checkpoint(openeva.create_model("eva02_test_patch8_32"), tmp_path / "evil.pt")
    assert not target.exists()


def test_torch_load_is_always_called_with_weights_only(tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    path = _saved(tmp_path)
    openeva.load_checkpoint(openeva.create_model("eva02_test_patch8_32"), path)
    openeva.create_model("eva02_test_patch8_32", pretrained=str(path))
    assert calls and all(c is True for c in calls)


def test_unwrap_prefers_ema_then_model_then_module_then_state_dict():
    a, b, c, d = ({"w": torch.full((1,), float(i))} for i in range(4))
    assert unwrap_state_dict({"model_ema": a, "model": b, "module": c, "state_dict": d}) is a
    assert unwrap_state_dict({"model": b, "module": c}) is b
    assert unwrap_state_dict({"module": c, "state_dict": d, "epoch": 1}) is c
    assert unwrap_state_dict({"state_dict": d, "optimizer": {}}) is d
    assert unwrap_state_dict({"model_ema": {"state_dict": a}, "model": b}) is a
    assert unwrap_state_dict(a) is a


def test_openeva_format_is_safetensors_plus_config(tmp_path):
    torch.manual_seed(0)
    model = openeva.create_model("eva02_test_patch8_32", img_size=(40, 48))
    out = openeva.save_model(model, tmp_path / "run" / "ckpt", extra={"epoch": 7})
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]  # no temp files left
    cfg = read_config(out)
    assert cfg == json.loads((out / "config.json").read_text())
    assert cfg["model_name"] == "eva02_test_patch8_32" and cfg["epoch"] == 7
    assert cfg["model_config"]["img_size"] == [40, 48]
    assert cfg["preprocess"]["size"] == [40, 48]
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "openeva"}
        assert set(f.keys()) == set(model.state_dict())
    # a bare safetensors file and the directory read the same tensors
    direct = read_state_dict(out / "model.safetensors")
    assert all(torch.equal(direct[k], v) for k, v in read_state_dict(out).items())


def test_save_checkpoint_overwrites_atomically_and_reports_corrupt_config(tmp_path):
    model = EVAViT(ViTConfig(embed_dim=32, depth=1, num_heads=2, mlp_hidden=64, patch_size=8, img_size=16))
    save_checkpoint(model, tmp_path, {"model_config": model.cfg.to_dict()})
    save_checkpoint(model, tmp_path, {"model_config": model.cfg.to_dict(), "step": 2})
    assert read_config(tmp_path)["step"] == 2
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt checkpoint config"):
        read_config(tmp_path)
    assert read_config(tmp_path / "elsewhere" / "x.pt") is None


@pytest.mark.parametrize("name", ["eva02_test_patch8_32", "EVA02-test"])
def test_non_square_checkpoint_loads_at_another_resolution(tmp_path, name):
    """A checkpoint saved at 32x48 (4x6 patches) reloads at 40x40: its config.json gives the saved grid, and
    the position embedding is resampled from 4x6, not refused as a non-square row count."""
    from openeva.factory import save_model
    from openeva.layers import resample_pos_embed

    torch.manual_seed(0)
    wide = openeva.create_model(name, img_size=(32, 48))
    save_model(wide, tmp_path / "wide")
    square = openeva.create_model(str(tmp_path / "wide"), img_size=(40, 40))
    tower, wide_tower = (square, wide) if name.startswith("eva02") else (square.visual, wide.visual)
    assert tower.cfg.grid_size == (5, 5)
    expected = resample_pos_embed(wide_tower.pos_embed.detach(), (5, 5), (4, 6), wide_tower.num_prefix_tokens)
    torch.testing.assert_close(tower.pos_embed.detach(), expected)
    out = square.encode_image(torch.randn(1, 3, 40, 40)) if hasattr(square, "encode_image") \
        else square(torch.randn(1, 3, 40, 40))
    assert torch.isfinite(out).all()
    # the fine-tuning classifier and the CLIP tower init read weights through their own loaders: same grid
    from openeva.factory import build_classifier

    clf = build_classifier(str(tmp_path / "wide"), 3, img_size=(40, 40))
    torch.testing.assert_close(clf.pos_embed.detach(), expected)


class _Arbitrary:
    pass


def test_unreadable_pickles_get_an_actionable_message(tmp_path):
    """Pickled objects and TorchScript archives are refused with what to do, not torch's weights_only advice."""
    torch.save({"a": _Arbitrary()}, tmp_path / "obj.pt")
    with pytest.raises(ValueError, match="weights_only=True only") as err:
        read_state_dict(tmp_path / "obj.pt")
    assert "weights_only set to False" not in str(err.value)
    torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.randn(1, 2)), tmp_path / "ts.pt")
    with pytest.raises(ValueError, match="TorchScript archive"):
        read_state_dict(tmp_path / "ts.pt")


def test_run_directories_resolve_to_their_model(tmp_path, caplog):
    """`--model runs/NAME` (or an unfinished run's final/) finds the model; anything else is a one-line error."""
    from openeva.checkpoints import resolve_model_dir

    model = openeva.create_model("eva02_test_patch8_32")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"task": "clip"}))  # the run's own config, not a model's
    for step in (2, 10):
        openeva.save_model(model, run / "checkpoints" / f"step_{step:07d}")
    with caplog.at_level("WARNING"):
        assert resolve_model_dir(run) == run / "checkpoints" / "step_0000010"
        assert resolve_model_dir(run / "final") == run / "checkpoints" / "step_0000010"
    assert "latest checkpoint" in caplog.text
    assert openeva.create_model(str(run)).cfg == model.cfg
    openeva.save_model(model, run / "final")
    assert resolve_model_dir(run) == run / "final"
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"task": "clip"}))
    with pytest.raises(ValueError, match="not an openeva model .*no model_config"):
        openeva.create_model(str(other))
