"""What every room needs at run time: precision, device and atomic writes. Imports nothing of openeva.

Precision. bf16 autocast only pays where the hardware multiplies bf16 natively: CUDA GPUs from Ampere on, and
CPUs whose oneDNN has bf16 kernels (AVX-512 BF16 or AMX; ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``). On an
AVX2-only CPU bf16 is emulated and measured 7-10x slower than fp32 (issue 10), so "auto" keeps fp32 there.
An explicit precision is always kept: this module decides nothing the user already decided.
``resolve_precision`` is the one function that decides which precision is fast; ``dtype_of`` / ``precision_of``
the one map between names and dtypes; ``autocast`` the one autocast context; ``Precision`` adds the fp16
gradient scaler for training.

Device. ``resolve_device`` is the one rule (auto, cpu, cuda, cuda:N, meta) used by training, evaluation,
serving and the quickstart.

Atomic writes. A reader (a resumed run, a serving process, a crashed writer's next start) sees the old file or
the new one, never half of one: every file openeva writes goes to a temporary name in the same folder, is
fsynced, then renamed over the target (``os.replace`` is atomic within a filesystem).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import torch

PRECISION_CHOICES = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_HELP = "auto (the GPU of this local rank when CUDA is available, else cpu), cpu, cuda or cuda:N"


# ---------------------------------------------------------------------------------------------- hardware facts


def _mkldnn_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        return False


def _amx() -> bool:
    """AMX tiles (Intel Sapphire Rapids on): bf16 matmuls ~6x fp32 where AVX-512 BF16 alone gives ~2x. torch's
    capability string says "AVX512" for both, so a benchmark figure records this too."""
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_capability() -> dict:
    """The CPU facts that decide which precision is fast, for logs, run directories and benchmark JSON."""
    return {
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),  # "AVX2", "AVX512", ...
        "mkldnn_bf16": _mkldnn_bf16(),
        "amx": _amx(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def _cuda_bf16(device: torch.device) -> bool:
    try:
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without including_emulation
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


# ---------------------------------------------------------------------------------------------- precision


def resolve_precision(requested: str, device: str | torch.device = "cpu", int8: bool = False) -> tuple[str, str]:
    """-> (precision, reason). "auto": bf16 where the device has native bf16, else fp32; others kept as given.

    ``int8``: the model's Linear layers are dynamically quantized (``openeva.quantize_int8``). Those kernels take
    fp32 activations only, so "auto" is fp32 then and an explicit bf16/fp16 is refused.
    The reason is one line meant for the start of a run's log, e.g. ``"this CPU has no native bf16 (AVX2)"``.
    """
    if requested not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {requested!r}")
    if int8:
        if requested not in ("auto", "fp32"):
            raise ValueError(f"int8 inference computes in fp32 around its int8 Linear layers; precision "
                             f"{requested!r} cannot be combined with it (use precision auto or fp32)")
        return "fp32", "int8 Linear layers take fp32 activations" if requested == "auto" else "set explicitly"
    if requested != "auto":
        return requested, "set explicitly"
    dev = torch.device(device)
    if dev.type == "cuda":
        if _cuda_bf16(dev):
            return "bf16", "this GPU has native bf16"
        return "fp32", "this GPU has no native bf16 (pass precision=fp16 for autocast with loss scaling)"
    if dev.type == "cpu":
        cap = torch.backends.cpu.get_cpu_capability()
        if _mkldnn_bf16():
            return "bf16", f"this CPU has native bf16 in oneDNN ({cap})"
        return "fp32", f"this CPU has no native bf16 ({cap}); bf16 would be emulated and slower"
    return "fp32", f"no bf16 policy for device type {dev.type!r}"


def describe_precision(requested: str, device: str | torch.device = "cpu", int8: bool = False) -> str:
    """The line every command prints at start: ``precision auto -> fp32: <reason>``."""
    precision, reason = resolve_precision(requested, device, int8=int8)
    return f"precision {requested} -> {precision}: {reason}"


def dtype_of(precision: str) -> torch.dtype:
    """"fp32" / "bf16" / "fp16" -> the torch dtype (resolve "auto" first)."""
    try:
        return _DTYPES[precision]
    except KeyError:
        raise ValueError(f"precision must be one of fp32, bf16, fp16 here (resolve 'auto' first), "
                         f"got {precision!r}") from None


def precision_of(dtype: torch.dtype | str) -> str:
    """torch dtype (or its name, "bfloat16") -> "fp32" / "bf16" / "fp16"."""
    name = str(dtype).removeprefix("torch.")
    for precision, candidate in _DTYPES.items():
        if str(candidate).removeprefix("torch.") == name:
            return precision
    raise ValueError(f"no precision name for dtype {dtype!r} (expected float32, bfloat16 or float16)")


def autocast(precision: str, device: str | torch.device) -> contextlib.AbstractContextManager:
    """Autocast to ``precision`` on ``device`` (a no-op context for fp32). Weights stay in their own dtype."""
    if dtype_of(precision) == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=dtype_of(precision))


class Precision:
    """Training precision: ``autocast()`` for forward passes and a gradient scaler (a pass-through unless fp16).

    Weights and optimizer state stay fp32 in every mode (autocast casts per op), as open_clip's ``amp`` /
    ``amp_bf16``; fp16 needs loss scaling so small gradients do not underflow, bf16 does not.
    """

    def __init__(self, precision: str, device: str | torch.device):
        self.dtype = dtype_of(precision)
        self.name = precision
        self.device = torch.device(device)
        enabled = precision == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=enabled) if enabled else None

    def autocast(self) -> contextlib.AbstractContextManager:
        return autocast(self.name, self.device)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Bring gradients to their true scale before clipping (fp16 only)."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Optimizer step; returns False when fp16 found inf/NaN gradients and skipped it."""
        if self.scaler is None:
            optimizer.step()
            return True
        scale = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= scale

    def state_dict(self) -> dict:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)


# ---------------------------------------------------------------------------------------------- device


def resolve_device(device: str | torch.device, local_rank: int = 0) -> torch.device:
    """The one device rule: "auto" -> the GPU of this local rank where CUDA is available, else the CPU;
    "cuda" -> the GPU of this local rank; "cuda:N" -> GPU N; "cpu" and "meta" as given."""
    dev = str(device)
    if dev == "auto":
        dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev in ("cpu", "meta"):
        return torch.device(dev)
    if dev == "cuda" or dev.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"device={dev!r} but no CUDA device is available (use device cpu or auto)")
        count = torch.cuda.device_count()
        if dev == "cuda":
            return torch.device("cuda", local_rank % count)
        index = dev.removeprefix("cuda:")
        if not index.isdigit() or int(index) >= count:
            raise ValueError(f"device={dev!r}: this machine has CUDA devices 0..{count - 1}")
        return torch.device("cuda", int(index))
    raise ValueError(f"device must be {DEVICE_HELP}; got {dev!r}")


# ---------------------------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an error, the file written there is
    fsynced and renamed over ``path``. On an error the temporary file is removed and ``path`` is untouched.

    For writers that take a path (``np.save``, ``faiss.write_index``, ``safetensors.save_file``)."""
    dest = Path(path)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """``write(tmp_path)`` then the atomic rename (see ``atomic_path``). Returns ``Path(path)``."""
    with atomic_path(path) as tmp:
        write(tmp)
    return Path(path)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj, *, indent: int | None = 2, sort_keys: bool = True) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=sort_keys) + "\n")
