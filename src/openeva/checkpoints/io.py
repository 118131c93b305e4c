"""Reading, adapting, checking and writing checkpoints.

openeva's own format is a directory with ``model.safetensors`` (weights) and ``config.json`` (model name,
model config, preprocessing, and anything the writer adds). Loading accepts that, a bare ``.safetensors``, or a
``.pt/.pth/.bin`` file (read with ``weights_only=True``) in any layout ``convert.detect_format`` knows. A
checkpoint is read into openeva's keys and fitted to the model's layout here (:func:`read_weights`), then checked
and loaded under a :class:`~openeva.checkpoints.policy.LoadPolicy` by the one loader,
:func:`~openeva.checkpoints.policy.load_weights`: a checkpoint that does not fit is refused with every missing,
unexpected and mis-shaped key named, and nothing is loaded unless everything fits.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import os
from pathlib import Path

import torch
from torch import nn

from openeva.checkpoints.convert import detect_format, text_to_openeva, to_openeva, unwrap_state_dict
from openeva.checkpoints.policy import CheckpointMismatchError, LoadPolicy, load_weights  # noqa: F401 (re-export)
from openeva.layers import resample_patch_kernel, resample_pos_embed
from openeva.models.clip import CLIP
from openeva.models.vit import EVAViT
from openeva.runtime import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# Keys only a MIM student has; a backbone without them ignores them when loading MIM weights.
MIM_ONLY_KEYS = ("mask_token", "lm_head.*")


# Top-level keys of a CLIP text tower in an OpenAI-layout state dict (no ``text.`` prefix).
_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


_SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "I64": torch.int64,
    "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool,
}


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors file read tensor by tensor into fresh (aligned) tensors with plain reads.

    Unlike a memory map, the file's pages never count towards the process (reading then copying a mapped file
    makes both resident), so loading a model holds one copy of its weights.
    """
    import json
    import struct

    out = {}
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100 * 2**20:
            raise ValueError(f"header of {n} bytes: not a safetensors file")
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in sorted(((k, v) for k, v in header.items() if k != "__metadata__"),
                                 key=lambda kv: kv[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            t = torch.empty(info["shape"], dtype=_SAFETENSORS_DTYPES[info["dtype"]])
            raw = t.view(-1).view(torch.uint8) if t.numel() else t.view(torch.uint8)
            if raw.numel() != end - start:
                raise ValueError(f"tensor {name}: {end - start} bytes for shape {info['shape']}")
            f.seek(base + start)
            if f.readinto(memoryview(raw.numpy())) != end - start:
                raise ValueError(f"tensor {name} is truncated")
            out[name] = t
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Raw tensors from an openeva directory, a safetensors file or a torch pickle (weights only)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.is_dir():
        path = path / WEIGHTS_NAME
        if not path.exists():
            raise FileNotFoundError(f"{path.parent} is not an openeva checkpoint directory (no {WEIGHTS_NAME})")
    if path.suffix == ".safetensors":
        try:
            return _read_safetensors(path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ValueError(f"cannot read safetensors checkpoint {path}: {e}") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors come in many types
        text = str(e)
        if "TorchScript" in text:
            raise ValueError(f"cannot read checkpoint {path}: it is a TorchScript archive (e.g. OpenAI's original "
                             "CLIP .pt); load it with torch.jit.load, save its state_dict() with torch.save, and "
                             "pass that file") from e
        if "Weights only load failed" in text:
            raise ValueError(f"cannot read checkpoint {path}: it pickles objects other than tensors and plain "
                             "containers; openeva reads checkpoints with weights_only=True only, so that loading "
                             "a file cannot run code. Re-save just the state dict from a trusted source.") from e
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        raise ValueError(f"cannot read checkpoint {path} (not a torch or safetensors file, or corrupt): {first}") from e
    return unwrap_state_dict(obj)


def read_config(path: str | os.PathLike) -> dict | None:
    """The ``config.json`` next to an openeva checkpoint, or None."""
    path = Path(path)
    cfg = (path if path.is_dir() else path.parent) / CONFIG_NAME
    if not cfg.exists():
        return None
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"corrupt checkpoint config {cfg}: {e}") from e


def _model_config_of(directory: Path) -> dict | None:
    try:
        cfg = read_config(directory) if directory.is_dir() else None
    except ValueError:
        return None
    return cfg if isinstance(cfg, dict) and "model_config" in cfg else None


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The openeva model directory ``path`` names: the directory itself, a training run's ``final/``, or, for a
    run that never finished (the run directory or its missing ``final/`` given), its latest ``checkpoints/step_*``
    (said in a warning). ValueError in one line for anything else."""
    path = Path(path)
    if _model_config_of(path) is not None:
        return path
    run = path.parent if path.name == "final" and not path.exists() else path
    if _model_config_of(run / "final") is not None:
        return run / "final"
    steps = sorted((p for p in (run / "checkpoints").glob("step_*") if _model_config_of(p) is not None),
                   key=lambda p: p.name) if (run / "checkpoints").is_dir() else []
    if steps:
        logger.warning("%s has no final model (the run did not finish); using its latest checkpoint %s",
                       run, steps[-1])
        return steps[-1]
    expected = ("expected an openeva model directory (config.json + weights) or a training run directory (with "
                "final/ or checkpoints/step_*)")
    if not path.exists():
        raise FileNotFoundError(f"model not found: {path}")
    if not (path / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{path} is not an openeva model (no config.json): {expected}")
    raise ValueError(f"{path} is not an openeva model (its config.json has no model_config): {expected}")


def config_beside(path) -> dict | None:
    """The openeva config.json beside a checkpoint, or None (absent, unreadable, or some other tool's)."""
    try:
        return read_config(path)
    except (ValueError, OSError):
        return None


def saved_grid(config: dict | None) -> tuple[int, int] | None:
    """The patch grid of the vision tower an openeva checkpoint was saved at (from its config.json: a backbone's
    own, or a CLIP's ``vision``), or None if unknown.

    Needed for non-square checkpoints: the position-embedding rows alone do not say 16x23 from 23x16.
    """
    mc = (config or {}).get("model_config") or {}
    vc = mc.get("vision") or mc
    try:
        size, patch = vc["img_size"], vc["patch_size"]
        h, w = (size, size) if isinstance(size, int) else size
        p = (patch, patch) if isinstance(patch, int) else patch
        return int(h) // int(p[0]), int(w) // int(p[1])
    except (KeyError, TypeError, ValueError):
        return None


def read_weights(path, model: nn.Module) -> tuple[dict[str, torch.Tensor], list[str], str]:
    """Any supported checkpoint converted to openeva's keys and fitted to ``model`` (a CLIP model, a backbone or
    a CLIP vision tower: a CLIP checkpoint then gives its vision tower): ``(state dict, notes, format)``."""
    raw = read_state_dict(path)
    fmt = detect_format(raw)
    sd = to_openeva(raw, fmt, is_clip=isinstance(model, CLIP))
    del raw
    sd, notes = adapt_to_model(sd, model, config_beside(path))
    return sd, notes, fmt


def read_text_tower(path) -> dict[str, torch.Tensor]:
    """The CLIP text tower of an open_clip / EVA-CLIP / openeva CLIP checkpoint (``text.*``), or of an
    OpenAI-layout state dict (text keys at the top level), in the tower's own keys."""
    raw = read_state_dict(path)
    if any(k.startswith("text.") for k in raw):
        sd = {k[len("text."):]: v for k, v in raw.items() if k.startswith("text.")}
    else:
        sd = {k: v for k, v in raw.items() if k.startswith(_TEXT_KEYS)}
    if not sd:
        raise ValueError(f"{path} holds no CLIP text tower (no text.* or token_embedding keys)")
    return text_to_openeva(sd)


def adapt_to_model(sd: dict[str, torch.Tensor], model: nn.Module,
                   source_config: dict | None = None) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Fits a converted state dict to this model's resolution, patch size and head layout; returns notes.

    ``source_config``: the checkpoint's openeva config, if it has one; it gives the saved patch grid, which a
    non-square checkpoint needs (others are square and their grid follows from the number of positions).
    """
    target = model.state_dict()
    notes: list[str] = []
    sd = dict(sd)
    for prefix, tower in _vision_towers(model):
        # MIM checkpoints keep their last LN as ``norm``; mean-pooling backbones name it ``fc_norm`` (timm).
        if f"{prefix}norm.weight" in sd and f"{prefix}norm.weight" not in target and f"{prefix}fc_norm.weight" in target:
            for part in ("weight", "bias"):
                sd[f"{prefix}fc_norm.{part}"] = sd.pop(f"{prefix}norm.{part}")
            notes.append("renamed norm -> fc_norm (MIM checkpoint into a mean-pooling backbone)")
        # ... and the other way: a mean-pooling backbone's ``fc_norm`` is a token-pooling tower's ``norm``
        # (an EVA-CLIP vision tower or a MIM student from a plain EVA-02 backbone)
        if f"{prefix}fc_norm.weight" in sd and f"{prefix}fc_norm.weight" not in target \
                and f"{prefix}norm.weight" in target and f"{prefix}norm.weight" not in sd:
            for part in ("weight", "bias"):
                sd[f"{prefix}norm.{part}"] = sd.pop(f"{prefix}fc_norm.{part}")
            notes.append("renamed fc_norm -> norm (mean-pooling backbone into a token-pooling tower)")
        for pattern in MIM_ONLY_KEYS:
            for k in [k for k in sd if fnmatch.fnmatch(k, prefix + pattern) and k not in target]:
                sd.pop(k)
                notes.append(f"dropped {k} (MIM-only)")
        key = f"{prefix}pos_embed"
        if key in sd and key in target and sd[key].shape != target[key].shape:
            n_old = sd[key].shape[1] - tower.num_prefix_tokens
            grid = saved_grid(source_config)
            if grid is None or grid[0] * grid[1] != n_old:
                side = int(round(n_old ** 0.5))
                if side * side != n_old:
                    raise ValueError(f"cannot resample {key}: {n_old} patch slots is not a square grid and the "
                                     "checkpoint has no openeva config.json giving its grid")
                grid = (side, side)
            sd[key] = resample_pos_embed(sd[key], tower.cfg.grid_size, grid, tower.num_prefix_tokens)
            notes.append(f"resampled {key} {grid[0]}x{grid[1]} -> {tower.cfg.grid_size[0]}x{tower.cfg.grid_size[1]}")
        key = f"{prefix}patch_embed.proj.weight"
        if key in sd and key in target and sd[key].shape[-1] != target[key].shape[-1]:
            sd[key] = resample_patch_kernel(sd[key], target[key].shape[-1])
            notes.append(f"resampled patch kernel to {target[key].shape[-1]}px")
    return sd, notes


def _vision_towers(model: nn.Module):
    if isinstance(model, EVAViT):
        yield "", model
    elif isinstance(getattr(model, "visual", None), EVAViT):
        yield "visual.", model.visual


def load_checkpoint(
    model: nn.Module, path: str | os.PathLike, strict: bool = True, ignore_missing: tuple[str, ...] = (),
    assign: bool = False, policy: LoadPolicy | None = None,
) -> dict:
    """Loads any supported checkpoint into ``model``; returns ``{"format", "notes", "missing"}``.

    ``policy``: which keys may differ (:mod:`openeva.factory.policies` states openeva's own). Without one,
    ``strict`` refuses (CheckpointMismatchError) unless every model key is supplied with the right shape, and
    ``ignore_missing`` names glob patterns of model keys allowed to stay as initialised (e.g. ``("head.*",)``
    when a new head is trained); with ``strict=False`` missing keys are allowed but shapes must still match.
    ``assign``: the checkpoint's tensors become the model's parameters (cast to each parameter's dtype and
    device) instead of being copied into them, so a model built on the meta device is loaded holding one copy.
    """
    if policy is None:
        policy = LoadPolicy("model", may_be_missing=tuple(ignore_missing) if strict else ("*",))
    elif not strict or ignore_missing:
        raise ValueError("pass either policy= or strict=/ignore_missing=, not both")
    sd, notes, fmt = read_weights(path, model)
    return load_weights(model, sd, policy, path, notes=notes, fmt=fmt, assign=assign).as_dict()


def save_checkpoint(model: nn.Module, out_dir: str | os.PathLike, config: dict) -> Path:
    """Writes ``model.safetensors`` + ``config.json`` into ``out_dir`` atomically (temp file, then rename)."""
    return save_weights(model.state_dict(), out_dir, config)


def save_weights(weights: dict[str, torch.Tensor], out_dir: str | os.PathLike, config: dict) -> Path:
    """A state dict + its config as an openeva model directory, each file written atomically."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    atomic_write(out_dir / WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "openeva"}))
    atomic_write_text(out_dir / CONFIG_NAME, json.dumps(config, indent=2, default=list))
    return out_dir
