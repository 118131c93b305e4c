"""precision "auto": the choice per reported hardware capability (mocked), and that explicit choices are kept."""

import pytest
import torch

from openeva import hardware
from openeva.hardware import describe_precision, resolve_precision


def _cpu(monkeypatch, capability: str, native_bf16: bool):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(hardware, "_mkldnn_bf16", lambda: native_bf16)


@pytest.mark.parametrize("capability", ["AMX", "AVX512"])  # AMX and AVX-512 BF16: oneDNN has native bf16
def test_auto_is_bf16_on_cpus_with_native_bf16(monkeypatch, capability):
    _cpu(monkeypatch, capability, True)
    precision, reason = resolve_precision("auto", "cpu")
    assert precision == "bf16" and capability in reason


@pytest.mark.parametrize("capability", ["AVX2", "AVX512", "DEFAULT"])  # AVX-512 without BF16 is emulated too
def test_auto_is_fp32_without_native_bf16(monkeypatch, capability):
    _cpu(monkeypatch, capability, False)
    precision, reason = resolve_precision("auto", "cpu")
    assert precision == "fp32" and "no native bf16" in reason and capability in reason
    assert describe_precision("auto", "cpu").startswith("precision auto -> fp32: this CPU has no native bf16")


@pytest.mark.parametrize("gpu_bf16,expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda(monkeypatch, gpu_bf16, expected):
    monkeypatch.setattr(hardware, "_cuda_bf16", lambda device: gpu_bf16)
    _cpu(monkeypatch, "AVX2", False)  # the host CPU does not matter for a CUDA device
    assert resolve_precision("auto", "cuda:0")[0] == expected


@pytest.mark.parametrize("explicit", ["fp32", "bf16", "fp16"])
def test_explicit_precision_is_kept(monkeypatch, explicit):
    _cpu(monkeypatch, "AVX2", False)
    assert resolve_precision(explicit, "cpu") == (explicit, "set explicitly")


@pytest.mark.parametrize("cap,native", [("AVX2", False), ("AVX512", True), ("AMX", True)])
def test_int8_computes_in_fp32_on_every_cpu(monkeypatch, cap, native):
    _cpu(monkeypatch, cap, native)  # dynamic int8 Linear kernels take fp32 activations only
    assert resolve_precision("auto", "cpu", int8=True)[0] == "fp32"
    assert resolve_precision("fp32", "cpu", int8=True) == ("fp32", "set explicitly")
    with pytest.raises(ValueError, match="int8"):
        resolve_precision("bf16", "cpu", int8=True)


def test_bad_precision_is_refused():
    with pytest.raises(ValueError, match="precision must be one of auto"):
        resolve_precision("fp8", "cpu")


def test_capability_reports_the_cpu():
    info = hardware.cpu_capability()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["mkldnn_bf16"], bool) and isinstance(info["amx"], bool)
    assert not info["amx"] or info["mkldnn_bf16"]  # oneDNN's bf16 kernels run on AMX wherever it has tiles
