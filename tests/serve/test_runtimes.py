"""The inference options of embed / classify / search / serve: precision auto, token merging, int8, and an
ONNX export served through a real uvicorn with the index its PyTorch model built."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("onnxruntime")
from running_server import RunningServer, png

from openeva.export import export_onnx
from openeva.factory import create_model
from openeva.runtime import resolve_precision
from openeva.serve import Index, embed
from openeva.serve.app import create_app
from openeva.serve.encoder import OnnxClipEncoder, TorchClipEncoder, is_onnx_export, load_encoder


@pytest.fixture(scope="module")
def onnx_dir(clip_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "export"
    export_onnx(create_model(clip_dir), out, model_name=clip_dir)
    return out


def test_auto_precision_is_resolved_and_said(clip_dir):
    lines = []
    enc = load_encoder(clip_dir, log=lines.append)
    expected, _ = resolve_precision("auto", "cpu")
    assert enc.info["precision"] == {"fp32": "float32", "bf16": "bfloat16"}[expected]
    assert len(lines) == 1 and "encoder torch" in lines[0] and enc.precision_reason in lines[0]


def test_device_auto_picks_the_gpu_only_where_it_can_run(clip_dir, onnx_dir):
    lines = []
    gpu = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert load_encoder(clip_dir, device="auto", log=lines.append).device == gpu
    assert f"on {gpu.type}" in lines[0]
    assert load_encoder(clip_dir, device="auto", int8=True).device == torch.device("cpu")  # int8 kernels: CPU
    assert isinstance(load_encoder(onnx_dir, device="auto"), OnnxClipEncoder)
    with pytest.raises(ValueError, match="device must be"):
        load_encoder(clip_dir, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no such CUDA device"):
            load_encoder(clip_dir, device="cuda")


def test_tome_and_int8_change_the_encoder_but_not_its_weights_identity(clip_dir):
    plain = TorchClipEncoder(clip_dir, precision="fp32")
    fast = TorchClipEncoder(clip_dir, precision="fp32", tome_r=2, int8=True)
    assert fast.info["weights_hash"] == plain.info["weights_hash"]  # same weights: the same index accepts both
    assert (fast.info["tome_r"], fast.info["int8"]) == (2, True) and (plain.info["tome_r"], plain.info["int8"]) == (0, False)
    x = torch.stack([plain.preprocess(Image.new("RGB", (40, 40), c)) for c in ((200, 30, 30), (10, 90, 250))])
    a, b = plain.encode_images(x), fast.encode_images(x)
    assert a.shape == b.shape and not np.allclose(a, b, atol=1e-6)  # the options really ran
    assert (a * b).sum(-1).min() > 0.9  # and stay close to the plain vectors
    with pytest.raises(ValueError, match="tome_r"):
        TorchClipEncoder(clip_dir, tome_r=-1)


def test_resuming_an_embedding_with_other_inference_options_is_refused(clip_dir, shapes_dir, tmp_path):
    embed(shapes_dir, out=tmp_path / "emb", encoder=TorchClipEncoder(clip_dir, precision="fp32"), progress=False)
    with pytest.raises(ValueError, match="tome_r"):
        embed(shapes_dir, out=tmp_path / "emb", encoder=TorchClipEncoder(clip_dir, precision="fp32", tome_r=2),
              progress=False)


def test_onnx_encoder_matches_torch_and_shares_its_identity(clip_dir, onnx_dir):
    assert is_onnx_export(onnx_dir) and not is_onnx_export(clip_dir)
    torch_enc, onnx_enc = TorchClipEncoder(clip_dir, precision="fp32"), load_encoder(str(onnx_dir))
    assert isinstance(onnx_enc, OnnxClipEncoder)
    for key in ("weights_hash", "config_hash", "preprocess", "dim"):
        assert onnx_enc.info[key] == torch_enc.info[key], key
    x = torch.stack([torch_enc.preprocess(Image.new("RGB", (40, 40), c)) for c in ((200, 30, 30), (10, 90, 250))])
    assert np.allclose(onnx_enc.encode_images(x), torch_enc.encode_images(x), atol=1e-4)
    texts = ["a red circle", "a blue star"]
    assert np.allclose(onnx_enc.encode_texts(texts), torch_enc.encode_texts(texts), atol=1e-4)
    with pytest.raises(ValueError, match="ONNX export"):
        load_encoder(str(onnx_dir), int8=True)


def test_service_runs_on_the_onnx_export_with_the_torch_built_index(clip_dir, onnx_dir, shapes_dir, tmp_path):
    torch_enc = TorchClipEncoder(clip_dir, precision="fp32")
    embed(shapes_dir, out=tmp_path / "emb", encoder=torch_enc, progress=False)
    Index.from_embeddings(tmp_path / "emb").save(tmp_path / "index")
    server = RunningServer(create_app(model=str(onnx_dir), index_path=tmp_path / "index"))
    try:
        c = server.client
        ready = c.get("/readyz").json()
        assert ready["ready"] and ready["index_size"] == 24
        texts = c.post("/v1/embed/texts", json={"texts": ["a red circle"]}).json()["vectors"]
        assert np.allclose(texts, torch_enc.encode_texts(["a red circle"]), atol=1e-4)
        hits = c.post("/v1/search", json={"text": "a red circle", "k": 3}).json()["results"]
        direct = Index.load(tmp_path / "index").search(torch_enc.encode_texts(["a red circle"]), k=3)
        assert [h["id"] for h in hits] == [h["id"] for h in direct[0]]
        image = c.post("/v1/embed/images", files=[("files", ("a.png", png(), "image/png"))]).json()["vectors"]
        assert len(image) == 1 and len(image[0]) == torch_enc.dim
    finally:
        server.stop()
