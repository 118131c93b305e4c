"""precision "auto": the choice per reported hardware capability (mocked), and that explicit choices are kept."""

import pytest
import torch

from openeva import runtime
from openeva.runtime import describe_precision, resolve_precision


def _cpu(monkeypatch, capability: str, native_bf16: bool):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(runtime, "_mkldnn_bf16", lambda: native_bf16)


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
    monkeypatch.setattr(runtime, "_cuda_bf16", lambda device: gpu_bf16)
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
    info = runtime.cpu_capability()
    assert info["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(info["mkldnn_bf16"], bool) and isinstance(info["amx"], bool)
    assert not info["amx"] or info["mkldnn_bf16"]  # oneDNN's bf16 kernels run on AMX wherever it has tiles


# ---------------------------------------------------------------------------------------------- dtypes and autocast


@pytest.mark.parametrize("name,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_dtype_and_precision_names_round_trip(name, dtype):
    assert runtime.dtype_of(name) is dtype
    assert runtime.precision_of(dtype) == name and runtime.precision_of(str(dtype).removeprefix("torch.")) == name


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="resolve 'auto' first"):
        runtime.dtype_of("auto")
    with pytest.raises(ValueError, match="no precision name"):
        runtime.precision_of(torch.int8)


def test_autocast_is_a_no_op_in_fp32_and_casts_in_bf16():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with runtime.autocast("fp32", "cpu"):
        assert (a @ b).dtype == torch.float32
    with runtime.autocast("bf16", torch.device("cpu")):
        assert (a @ b).dtype == torch.bfloat16


# ---------------------------------------------------------------------------------------------- device


@pytest.mark.parametrize("given,expected", [("cpu", "cpu"), ("meta", "meta"), (torch.device("cpu"), "cpu")])
def test_device_rule_keeps_cpu_and_meta(given, expected):
    assert runtime.resolve_device(given) == torch.device(expected)


def test_auto_is_the_cpu_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match="no CUDA device"):
        runtime.resolve_device("cuda:0")


def test_cuda_devices_follow_the_local_rank_or_the_index(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert runtime.resolve_device("auto", local_rank=5) == torch.device("cuda", 1)
    assert runtime.resolve_device("cuda", local_rank=2) == torch.device("cuda", 2)
    assert runtime.resolve_device("cuda:3") == torch.device("cuda", 3)
    with pytest.raises(ValueError, match="0..3"):
        runtime.resolve_device("cuda:4")


@pytest.mark.parametrize("bad", ["gpu", "tpu", "", "cpu:0x"])
def test_bad_device_names_are_refused_with_the_grammar(bad):
    with pytest.raises(ValueError, match="device must be auto"):
        runtime.resolve_device(bad)


def test_a_malformed_cuda_index_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ValueError, match="CUDA devices 0..1"):
        runtime.resolve_device("cuda:x")


# ---------------------------------------------------------------------------------------------- atomic writes


def test_atomic_writes_replace_the_file_and_leave_no_temporary(tmp_path):
    runtime.atomic_write_text(tmp_path / "a.txt", "old")
    runtime.atomic_write_bytes(tmp_path / "a.txt", b"new")
    runtime.atomic_write_json(tmp_path / "b.json", {"z": 1, "a": [1, 2]})
    assert (tmp_path / "a.txt").read_bytes() == b"new"
    assert (tmp_path / "b.json").read_text().startswith('{\n  "a"')  # sorted keys, indented
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json"]


def test_a_failed_write_keeps_the_old_file_whole(tmp_path):
    target = tmp_path / "weights.bin"
    runtime.atomic_write_bytes(target, b"complete")

    def crash_midway(tmp):
        tmp.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        runtime.atomic_write(target, crash_midway)
    assert target.read_bytes() == b"complete"
    assert [p.name for p in tmp_path.iterdir()] == ["weights.bin"]  # the temporary file is gone


def test_runtime_imports_nothing_of_openeva():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(runtime.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.split(".")[0] == "openeva"}
