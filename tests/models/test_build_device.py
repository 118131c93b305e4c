"""create_model(device=...) builds where it is asked (meta: shapes only), and loads a checkpoint without a copy."""

import os

import pytest
import torch

import openeva


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
from openeva.checkpoints.io import CheckpointMismatchError


def test_meta_build_allocates_nothing():
    """The largest registered CLIP (~5B parameters, ~20 GB in fp32) on meta: no storage, no CPU copy."""
    before = _rss_bytes()
    model = openeva.create_model("EVA02-E-14-plus", device="meta")
    grown = _rss_bytes() - before
    devices = {t.device.type for t in (*model.parameters(), *model.buffers())}
    assert devices == {"meta"}
    assert sum(p.numel() for p in model.parameters()) > 4e9
    assert grown < 1 << 30  # a CPU build would take ~20 GB (the OOM of issue 10)


def test_meta_build_of_a_backbone_and_precision():
    model = openeva.create_model("eva02_test_patch8_32", device="meta", precision="bf16")
    assert {(p.device.type, p.dtype) for p in model.parameters()} == {("meta", torch.bfloat16)}


def test_meta_build_refuses_weights_and_skips_a_saved_models_file(tmp_path):
    with pytest.raises(ValueError, match="meta"):  # reading a 20 GB checkpoint onto meta would be the OOM again
        openeva.create_model("eva02_test_patch8_32", pretrained=str(tmp_path / "w.safetensors"), device="meta")
    openeva.save_model(openeva.create_model("eva02_test_patch8_32"), tmp_path / "saved")
    (tmp_path / "saved" / "model.safetensors").write_bytes(b"not read")  # a meta rebuild never opens it
    model = openeva.create_model(str(tmp_path / "saved"), device="meta")
    assert {p.device.type for p in model.parameters()} == {"meta"}


def test_precision_auto_follows_the_hardware(monkeypatch):
    from openeva import runtime

    for native, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(runtime, "_mkldnn_bf16", lambda native=native: native)
        model = openeva.create_model("eva02_test_patch8_32", precision="auto")
        assert {p.dtype for p in model.parameters()} == {dtype}
    assert {p.dtype for p in openeva.create_model("EVA02-test", precision="auto", int8=True).visual.parameters()
            if p.is_floating_point()} <= {torch.float32}


def test_checkpoint_load_adopts_the_saved_tensors(tmp_path):
    ref = openeva.create_model("EVA02-test")
    openeva.save_model(ref, tmp_path / "m")
    loaded = openeva.create_model(str(tmp_path / "m"))
    ours = loaded.state_dict()
    assert ours.keys() == ref.state_dict().keys()
    assert all(torch.equal(v, ref.state_dict()[k]) for k, v in ours.items())
    assert all(p.device.type == "cpu" and p.requires_grad and isinstance(p, torch.nn.Parameter)
               for p in loaded.parameters())
    images = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(loaded.encode_image(images), ref.encode_image(images), rtol=0, atol=0)
    half = openeva.create_model(str(tmp_path / "m"), precision="bf16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}


def test_checkpoint_with_missing_keys_still_refused(tmp_path):
    from safetensors.torch import save_file

    sd = openeva.create_model("EVA02-test").state_dict()
    sd.pop("logit_scale")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    try:
        openeva.create_model("EVA02-test", pretrained=str(tmp_path / "w.safetensors"))
    except CheckpointMismatchError as e:
        assert "logit_scale" in str(e)
    else:
        raise AssertionError("a checkpoint without logit_scale loaded strictly")
