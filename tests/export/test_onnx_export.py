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
