"""End-to-end checks of `openeva models` and `openeva convert` through the real entry point."""

import json

import pytest
import torch

import openeva
from openeva.cli import main


def test_models_lists_every_registered_model_with_counts(capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == set(openeva.list_models())
    b16 = rows["EVA02-B-16"]
    assert b16["params_m"] == pytest.approx(149.69, abs=0.01)  # open_clip 3.3 count (eva.md)
    assert b16["vision_params_m"] == pytest.approx(86.26, abs=0.01)
    assert rows["EVA02-L-14-336"]["image_size"] == [336, 336]
    assert "merged2b_s8b_b131k" in b16["pretrained"]


def test_models_table_and_kind_filter(capsys):
    assert main(["models", "--kind", "backbone"]) == 0
    out = capsys.readouterr().out
    assert "eva02_base_patch14_224" in out and "EVA02-B-16" not in out
    header = out.splitlines()[0].split()
    assert header[-7:] == ["embed", "serve", "tome", "int8", "onnx", "train", "pretrained"]


def test_models_families_and_capabilities(capsys):
    """Each family's row: its tower families, counts, and what it supports with the reason for what it does not."""
    names = ["ViT-B-32", "ViT-B-16-SigLIP", "convnext_base", "EVA02-B-16", "eva02_tiny_patch14_224",
             "timm:swin_tiny_patch4_window7_224"]
    assert main(["models", *names, "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert list(rows) == names
    open_clip = pytest.importorskip("open_clip")
    ref = open_clip.create_model("ViT-B-32", device="meta")
    # openeva drops OpenAI's key bias (softmax ignores it: 12 x 768 weights), otherwise open_clip's count
    assert rows["ViT-B-32"]["params_m"] == pytest.approx(sum(p.numel() for p in ref.parameters()) / 1e6, abs=0.01)
    assert rows["ViT-B-32"]["family"] == {"vision": "ViT", "text": "CLIP text"}
    assert rows["ViT-B-16-SigLIP"]["family"]["vision"] == "ViT (map pool)"
    assert rows["EVA02-B-16"]["family"]["vision"] == "ViT (RoPE)"
    assert rows["convnext_base"]["family"]["vision"] == "timm ConvNeXt"
    everything = dict.fromkeys(["embed", "serve", "tome", "int8", "onnx", "train"], True)
    for name in ("ViT-B-32", "ViT-B-16-SigLIP", "EVA02-B-16"):
        assert rows[name]["supports"] == everything and rows[name]["refusals"] == {}
    assert rows["ViT-B-32"]["tome_r_auto"] == 3 and rows["ViT-B-16-SigLIP"]["tome_r_auto"] == 12
    conv = rows["convnext_base"]
    assert conv["supports"] == everything | {"tome": False} and "tome_r_auto" not in conv
    assert "ConvNeXt" in conv["refusals"]["tome"] and "not a ViT" in conv["refusals"]["tome"]
    tiny = rows["eva02_tiny_patch14_224"]
    assert not tiny["supports"]["embed"] and not tiny["supports"]["serve"] and tiny["train_task"] == "finetune"
    assert "CLIP model" in tiny["refusals"]["serve"]
    swin = rows["timm:swin_tiny_patch4_window7_224"]
    assert swin["family"]["vision"] == "timm SwinTransformer" and "SwinTransformer" in swin["refusals"]["tome"]
    assert swin["params_m"] == pytest.approx(28.29, abs=0.01)  # timm's count for swin_tiny


def test_models_capabilities_come_from_the_code_that_refuses(monkeypatch):
    """Not a table: change what the int8 code refuses and the listing follows."""
    import openeva.models.int8 as int8

    from openeva.cli.models_cmd import model_row

    assert model_row("EVA02-test")["supports"]["int8"]
    monkeypatch.setattr(int8, "int8_refusal", lambda model: "no int8 today")
    row = model_row("EVA02-test")
    assert not row["supports"]["int8"] and row["refusals"]["int8"] == "no int8 today"


def _timm_tiny_checkpoint(path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("eva02_tiny_patch14_224", num_classes=0).eval()
    torch.save({"module": ref.state_dict()}, path)  # DeepSpeed-style wrapping
    return ref


def test_convert_infers_model_and_round_trips(tmp_path, capsys):
    ref = _timm_tiny_checkpoint(tmp_path / "ckpt.pt")
    assert main(["convert", str(tmp_path / "ckpt.pt"), str(tmp_path / "out")]) == 0
    assert "eva02_tiny_patch14_224" in capsys.readouterr().out
    model = openeva.create_model(str(tmp_path / "out")).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


def test_convert_at_another_resolution(tmp_path):
    _timm_tiny_checkpoint(tmp_path / "ckpt.pt")
    assert main(["convert", str(tmp_path / "ckpt.pt"), str(tmp_path / "out"), "--img-size", "112", "168"]) == 0
    model = openeva.create_model(str(tmp_path / "out"))
    assert model.cfg.img_size == (112, 168)
    assert model(torch.randn(1, 3, 112, 168)).shape == (1, 192)


def test_convert_errors_are_clear(tmp_path, capsys):
    assert main(["convert", str(tmp_path / "missing.pt"), str(tmp_path / "out")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint at all")
    assert main(["convert", str(tmp_path / "garbage.pt"), str(tmp_path / "out")]) == 2
    assert "cannot read checkpoint" in capsys.readouterr().err
    torch.save({"something.weight": torch.zeros(3)}, tmp_path / "alien.pt")
    assert main(["convert", str(tmp_path / "alien.pt"), str(tmp_path / "out")]) == 2
    assert "fits no registered model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_unknown_model_name_suggests_close_names():
    with pytest.raises(ValueError, match="EVA02-B-16"):
        openeva.create_model("eva02-b-16")
