"""ONNX export: separate image/text graphs, dynamic batch, int32 tokens, parity with PyTorch (random and trained
weights), the OnnxClip runtime wrapper, and the CLI."""

import json

import pytest
import torch

import openeva
from openeva.cli import main

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from openeva.export import OnnxClip, export_onnx  # noqa: E402


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_export_random_clip_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = openeva.create_model("EVA02-test").eval()
    manifest = export_onnx(model, tmp_path / "x")
    assert set(manifest["graphs"]) == {"image", "text"} and manifest["opset"] >= 17
    assert all(c["ok"] for cs in manifest["parity"].values() for c in cs)
    graph = onnx.load(str(tmp_path / "x" / "text.onnx")).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"  # dynamic batch
    runtime = OnnxClip(tmp_path / "x")
    images = torch.randn(5, 3, 32, 32)  # a batch size the export never saw
    tok = openeva.get_tokenizer("EVA02-test")(["a red circle", "two blue squares"])  # int64 from the tokenizer
    with torch.no_grad():
        assert _rel(runtime.encode_image(images), model.encode_image(images)) <= 1e-4
        assert _rel(runtime.encode_text(tok), model.encode_text(tok)) <= 1e-4
    assert torch.allclose(runtime.encode_image(images, normalize=True).norm(dim=-1), torch.ones(5))


def test_export_trained_weights_and_backbone(tmp_path):
    """Weights after a few optimizer steps (not the init) and a backbone with a head (image graph only)."""
    torch.manual_seed(0)
    model = openeva.create_model("eva02_test_patch8_32", num_classes=5)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 3, 32, 32)), torch.randint(0, 5, (8,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    manifest = export_onnx(model.eval(), tmp_path / "b")
    assert set(manifest["graphs"]) == {"image"} and all(c["ok"] for c in manifest["parity"]["image"])
    runtime = OnnxClip(tmp_path / "b")
    assert not runtime.has_text
    with pytest.raises(ValueError, match="no text tower"):
        runtime.encode_text(torch.ones(1, 77, dtype=torch.long))


def test_export_refuses_merged_or_half_models(tmp_path):
    with pytest.raises(ValueError, match="token merging"):
        export_onnx(openeva.create_model("EVA02-test", tome_r=2), tmp_path / "t")
    with pytest.raises(ValueError, match="fp32"):
        export_onnx(openeva.create_model("EVA02-test", precision="bf16"), tmp_path / "h")
    with pytest.raises(ValueError, match="int8"):  # refused with a message, not an AttributeError on packed params
        export_onnx(openeva.create_model("EVA02-test", int8=True), tmp_path / "q")


def test_cli_export_onnx(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    openeva.save_model(openeva.create_model("EVA02-test"), ckpt)
    assert main(["export", "onnx", "--model", str(ckpt), "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "image.onnx" in printed and "text.onnx" in printed and "int32" in printed
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["model"] == str(ckpt)
    assert main(["export", "onnx", "--model", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error" in err and len(err.strip().splitlines()) == 1  # one line from main's boundary, no traceback
    with pytest.raises(FileNotFoundError, match="manifest"):
        OnnxClip(tmp_path)


@pytest.mark.parametrize("family", ["vit", "siglip", "timm", "hf"])
def test_export_every_tower_family_matches_pytorch(tmp_path, family):
    """Plain ViT (QuickGELU, norm_pre), SigLIP (map pooling, bidirectional text, last-token pool), a timm ConvNeXt
    tower and a Hugging Face text tower with padding: both graphs equal PyTorch at batch sizes not exported."""
    from tiny_towers import image_size, text_ids, tiny_clip

    model = tiny_clip(family)
    manifest = export_onnx(model, tmp_path / family)
    assert set(manifest["graphs"]) == {"image", "text"}
    assert all(c["ok"] for cs in manifest["parity"].values() for c in cs)
    runtime = OnnxClip(tmp_path / family)
    images, ids = torch.randn(4, 3, *image_size(model)), text_ids(model, 4, seed=1)  # HF rows: padded lengths
    with torch.no_grad():
        assert _rel(runtime.encode_image(images), model.encode_image(images)) <= 1e-4
        assert _rel(runtime.encode_text(ids), model.encode_text(ids)) <= 1e-4


def test_onnx_refusal_names_the_state_not_the_family():
    from openeva.export.onnx import onnx_refusal

    for name in ("convnext-test", "EVA02-test"):
        assert onnx_refusal(openeva.create_model(name, device="meta")) is None  # answers on the meta device too
    assert "token merging" in onnx_refusal(openeva.create_model("EVA02-test", tome_r=2))


def test_cli_export_a_timm_tower_model_by_name(tmp_path, capsys):
    """`openeva export onnx --model convnext-test`: a registered CLIP with a timm ConvNeXt tower, by name."""
    assert main(["export", "onnx", "--model", "convnext-test", "--out", str(tmp_path / "c")]) == 0
    assert "image.onnx" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["model"] == "convnext-test" and manifest["image_size"] == [64, 64]
    assert all(c["ok"] for cs in manifest["parity"].values() for c in cs)
