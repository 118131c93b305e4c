"""Creating models the way open_clip and timm users expect: by name, with weights and transforms.

``create_model("EVA02-B-16", pretrained="path/or/tag")``; a name can also be an openeva checkpoint directory
(``local-dir:/path`` or a plain path holding ``config.json``), which rebuilds the saved model and loads it.
Weights are loaded under the policies of :mod:`openeva.factory.policies`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from openeva.checkpoints import LoadPolicy, load_weights, read_config, read_weights, resolve_model_dir, save_checkpoint
from openeva.data.transforms import PreprocessConfig, image_transform
from openeva.factory.policies import CLASSIFIER, MODEL, PARTIAL
from openeva.runtime import PRECISION_CHOICES, dtype_of, resolve_precision
from openeva.models.clip import CLIP, CLIPConfig
from openeva.models.int8 import quantize_int8
from openeva.models.registry import ModelSpec, get_model_spec
from openeva.models.hf_text import HFTextConfig
from openeva.models.tokenizer import TokenizerSpec, build_tokenizer, tokenizer_for_folder
from openeva.models.towers import build_tower, tower_from_dict, tower_to_dict
from openeva.models.timm_tower import TimmTowerConfig
from openeva.factory.tower_weights import has_library_tower, read_tower_weights
from openeva.models.tome import apply_tome
from openeva.models.vit import EVAViT, ViTConfig


def _pair(v) -> tuple[int, int] | None:
    if v is None:
        return None
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def resolve_spec(name: str) -> tuple[ModelSpec, str | None]:
    """A registered name, or an openeva checkpoint directory -> (spec, weights path or None)."""
    path = name[len("local-dir:"):] if name.startswith("local-dir:") else name
    if name.startswith("timm/") and not Path(name).exists():
        raise ValueError(f"{name!r}: a timm backbone is named timm:<name> (e.g. timm:{name[5:]}); "
                         "a path must exist")
    if name.startswith("local-dir:") or (os.sep in name or Path(name).exists()):
        model_dir = resolve_model_dir(path)  # a run directory -> its final/ (or latest checkpoint)
        return spec_from_saved_config(read_config(model_dir)), str(model_dir)
    return get_model_spec(name), None


def spec_from_saved_config(cfg: dict) -> ModelSpec:
    try:
        base = get_model_spec(cfg["model_name"]) if cfg.get("model_name") else None
    except ValueError:
        base = None
    model_cfg = cfg["model_config"]
    config = CLIPConfig.from_dict(model_cfg) if "vision" in model_cfg else tower_from_dict(model_cfg, "vision")
    pre = cfg.get("preprocess", {})
    kw = {k: tuple(pre[k]) for k in ("mean", "std") if k in pre}
    for key in ("interpolation", "resize_mode"):
        if key in pre:
            kw[key] = pre[key]
    if cfg.get("tokenizer"):
        kw["tokenizer"] = TokenizerSpec.from_dict(cfg["tokenizer"])
    elif base is not None and base.tokenizer is not None:
        kw["tokenizer"] = base.tokenizer
    return ModelSpec(name=cfg.get("model_name", "local"), config=config,
                     pretrained=base.pretrained if base else {}, **kw)


def build_config(
    spec: ModelSpec, img_size=None, patch_dropout: float | None = None, **vision_overrides
) -> ViTConfig | CLIPConfig:
    """The spec's config with a new image size / patch dropout / other vision-tower overrides applied.

    ``timm_name`` (with ``timm_pool`` / ``timm_proj`` / ``timm_proj_bias`` / ``timm_pretrained``, open_clip's
    ``vision_cfg`` keys) swaps a CLIP model's vision tower for that timm backbone at the model's embedding dim
    and image size (``model.vision.timm_name=convnext_tiny`` in a training config).
    """
    size = _pair(img_size)
    changes = dict(vision_overrides)
    timm = {k: changes.pop(k) for k in list(changes) if k.startswith("timm_") and changes[k] is not None}
    if timm:
        spec = _with_timm_vision(spec, timm)
    if size is not None:
        changes["img_size"] = size
    if patch_dropout is not None:
        changes["patch_drop_rate"] = patch_dropout
    if not changes:
        return spec.config
    if isinstance(spec.config, CLIPConfig):
        return spec.config.replace(vision=spec.config.vision.replace(**changes))
    return spec.config.replace(**changes)


_TIMM_KEYS = {"timm_pool": "pool", "timm_proj": "proj", "timm_proj_bias": "proj_bias", "timm_pretrained": "pretrained",
              "timm_drop": "drop"}


def _with_timm_vision(spec: ModelSpec, timm: dict) -> ModelSpec:
    """``spec`` with its CLIP vision tower replaced by (or its timm tower re-optioned with) ``timm``'s choices."""
    unknown = sorted(set(timm) - set(_TIMM_KEYS) - {"timm_name"})
    if unknown:
        raise ValueError(f"unknown timm tower option(s) {', '.join(unknown)}; known: timm_name, "
                         f"{', '.join(_TIMM_KEYS)}")
    if not isinstance(spec.config, CLIPConfig):
        raise ValueError(f"timm_name swaps a CLIP model's vision tower; {spec.name} is a backbone (a bare timm "
                         "backbone is named timm:<name>, e.g. timm:convnext_tiny)")
    vision = spec.config.vision
    options = {_TIMM_KEYS[k]: v for k, v in timm.items() if k != "timm_name"}
    if "timm_name" in timm:
        vision = TimmTowerConfig(timm_name=timm["timm_name"], embed_dim=spec.config.embed_dim, img_size=vision.img_size,
                                 **options)
    elif isinstance(vision, TimmTowerConfig):
        vision = vision.replace(**options)
    else:
        raise ValueError(f"{', '.join(timm)} need timm_name: {spec.name}'s vision tower is not a timm backbone")
    return dataclasses.replace(spec, config=spec.config.replace(vision=vision))


def create_model(
    model_name: str,
    pretrained: str | None = None,
    precision: str = "fp32",
    device: str | torch.device = "cpu",
    img_size=None,
    force_image_size=None,
    force_patch_dropout: float | None = None,
    num_classes: int | None = None,
    strict: bool = True,
    tome_r: int | list[int] | None = None,
    int8: bool = False,
    **vision_overrides,
) -> nn.Module:
    """Builds a registered model (CLIP or backbone), optionally loading weights.

    ``img_size`` (timm) and ``force_image_size`` (open_clip) are synonyms: any size divisible by the patch size,
    non-square too; position embeddings are resampled and RoPE rebuilt for it. ``pretrained``: a checkpoint path
    in any supported format, or a published tag from ``list_pretrained()`` (needs network + huggingface_hub).
    ``num_classes`` (backbones) sets a new classifier head, which is then not required in the checkpoint (a head
    of another size there is replaced: ``policies.CLASSIFIER``); ``strict=False`` lets any key stay as initialised.
    ``device``: parameters are created there ("meta": shapes only, nothing allocated). ``tome_r``: merge that many
    image tokens per block, or one count per block (``openeva.apply_tome``); ``int8``: dynamic int8 Linear layers for CPU inference
    (``openeva.quantize_int8``). ``precision`` is the dtype of the weights; "auto" resolves by the hardware
    (``openeva.runtime.resolve_precision``: bf16 only where it is native, fp32 with int8).
    """
    if precision not in PRECISION_CHOICES:
        raise ValueError(f"precision must be one of {', '.join(PRECISION_CHOICES)}, got {precision!r}")
    precision, _ = resolve_precision(precision, device, int8=int8)
    spec, saved_weights = resolve_spec(model_name)
    overrides = dict(vision_overrides)
    if num_classes is not None:
        if spec.is_clip:
            raise ValueError("num_classes applies to backbones; a CLIP model's head is its projection")
        overrides["num_classes"] = num_classes
    cfg = build_config(spec, img_size=img_size or force_image_size, patch_dropout=force_patch_dropout, **overrides)
    device, dtype = torch.device(device), dtype_of(precision)
    weights = pretrained or saved_weights
    if device.type == "meta" and pretrained is not None:
        raise ValueError("device='meta' builds shapes without storage; weights cannot be loaded there (drop "
                         "pretrained=, or build on 'cpu'/'cuda')")
    policy = CLASSIFIER if num_classes is not None else MODEL if strict else PARTIAL
    if device.type == "meta":  # a saved model directory rebuilds its shapes; its weights are not read
        weights = None
    path = resolve_pretrained(spec, weights) if weights is not None else None
    if path is not None and policy.requires_every_key:
        # every weight comes from the checkpoint: build without storage, then adopt the loaded tensors (one copy)
        model = _build(cfg, spec, torch.device("meta")).to(dtype)
        load_from(model, path, policy, assign=True)
        model = model.to(device)  # a no-op where the checkpoint was read onto that device already
    else:
        model = _build(cfg, spec, device).to(dtype)  # built (and initialised) where it is asked: no CPU copy
        if path is not None:
            load_from(model, path, policy)
    return _inference_options(model, tome_r, int8)


def load_from(model: nn.Module, path, policy: LoadPolicy, assign: bool = False):
    """Any supported checkpoint into ``model`` (converted, fitted to its layout) under ``policy``: the factory's one
    way to load weights. Returns the :class:`~openeva.checkpoints.LoadReport`."""
    reader = read_tower_weights if has_library_tower(model) else read_weights  # timm / HF towers: open_clip keys
    sd, notes, fmt = reader(path, model)
    return load_weights(model, sd, policy, path, notes=notes, fmt=fmt, assign=assign)


def _inference_options(model: nn.Module, tome_r: int | list[int] | None, int8: bool) -> nn.Module:
    if tome_r:
        apply_tome(model, tome_r)
    if int8:
        quantize_int8(model)
    return model


def _build(cfg: ViTConfig | CLIPConfig, spec: ModelSpec, device: torch.device) -> nn.Module:
    """The model with its parameters created on ``device`` (on "meta": shapes only, nothing allocated)."""
    with torch.device(device):
        model = CLIP(cfg) if isinstance(cfg, CLIPConfig) else build_tower(cfg, "vision")  # EVAViT, TimmTower, ...
    model.spec = spec  # name, preprocessing and published tags travel with the model
    return model


def resolve_pretrained(spec: ModelSpec, pretrained: str) -> str:
    """A local path as is; a published tag downloaded through the Hugging Face Hub cache."""
    if Path(pretrained).exists():
        return pretrained
    source = spec.pretrained.get(pretrained) or (pretrained if pretrained.startswith("hf-hub:") else None)
    if source is None:
        tags = ", ".join(spec.pretrained) or "none"
        raise FileNotFoundError(f"pretrained {pretrained!r} is neither a file nor a tag of {spec.name} (tags: {tags})")
    try:
        from huggingface_hub import hf_hub_download
    except ImportError as e:
        raise RuntimeError(f"downloading {source} needs `pip install huggingface_hub`, or pass a local path") from e
    org, repo, filename = source[len("hf-hub:"):].split("/", 2)
    try:
        return hf_hub_download(f"{org}/{repo}", filename)
    except Exception as e:  # offline, missing repo, ...
        raise RuntimeError(f"could not download {source}: {e}. Download it elsewhere and pass the file path.") from e


def image_transforms(model: nn.Module, image_mean=None, image_std=None, interpolation=None, resize_mode=None):
    """(train, val) transforms from the model's preprocessing, as open_clip builds them."""
    cfg = preprocess_cfg(model)
    for key, value in (("mean", image_mean), ("std", image_std), ("interpolation", interpolation),
                       ("resize_mode", resize_mode)):
        if value is not None:
            cfg[key] = value
    pcfg = PreprocessConfig.from_dict(cfg)
    return image_transform(pcfg, is_train=True), image_transform(pcfg, is_train=False)


def preprocess_cfg(model: nn.Module) -> dict:
    vision = model.visual if isinstance(model, CLIP) else model
    return model.spec.preprocess_cfg(vision.cfg.img_size)


def create_model_and_transforms(model_name: str, pretrained: str | None = None, image_mean=None, image_std=None,
                                image_interpolation=None, image_resize_mode=None, **kwargs):
    """-> (model, preprocess_train, preprocess_val), as open_clip."""
    model = create_model(model_name, pretrained, **kwargs)
    train, val = image_transforms(model, image_mean, image_std, image_interpolation, image_resize_mode)
    return model, train, val


def create_model_from_pretrained(model_name: str, pretrained: str | None = None, **kwargs):
    """-> (model, preprocess_val), as open_clip."""
    model, _, val = create_model_and_transforms(model_name, pretrained, **kwargs)
    return model, val


def get_tokenizer(model_name: str | None = None, context_length: int | None = None):
    """The tokenizer of a model, as open_clip's ``get_tokenizer``: ``model_name`` a registered name (its
    ``ModelSpec.tokenizer``; a Hugging Face text tower's own tokenizer; else the CLIP BPE), an openeva checkpoint
    directory (the tokenizer its ``config.json`` names), or any folder holding tokenizer files
    (``tokenizer.json`` / ``tokenizer_config.json`` / ``spiece.model``: a SigLIP or HF checkpoint folder).
    ``context_length``: row length (default: the model's text context length, 77 without a model)."""
    if model_name is None:
        return build_tokenizer(None, context_length)
    folder = model_name[len("local-dir:"):] if model_name.startswith("local-dir:") else model_name
    found = tokenizer_for_folder(folder) if Path(folder).is_dir() else None
    if found is not None and not (Path(folder) / "config.json").is_file():
        return build_tokenizer(found, context_length)  # a tokenizer (or HF / open_clip) folder, no openeva model
    spec, _ = resolve_spec(model_name)
    tspec = found or spec.tokenizer
    text = spec.config.text if spec.is_clip else None
    if tspec is None and isinstance(text, HFTextConfig):
        if not text.hf_model_name:
            raise ValueError(f"{spec.name}'s Hugging Face text tower names no tokenizer (hf_model_name)")
        tspec = TokenizerSpec("hf", text.hf_model_name, "whitespace")
    if context_length is None:
        context_length = (tspec.context_length if tspec is not None else None) or (text.context_length if text
                                                                                   else None)
    return build_tokenizer(tspec, context_length)


def model_config_dict(model: nn.Module) -> dict:
    """What ``save_checkpoint`` writes so ``create_model(dir)`` can rebuild the model: the model's
    ``export_config()`` when it has one (a MIM student saves the plain backbone its weights initialise)."""
    cfg = model.export_config() if hasattr(model, "export_config") else model.cfg
    # a backbone other than an EVA ViT saves its tower kind (an EVA backbone's config.json is unchanged)
    saved = cfg.to_dict() if isinstance(cfg, (CLIPConfig, ViTConfig)) else tower_to_dict(cfg, "vision")
    out = {"model_name": model.spec.name, "model_config": saved, "preprocess": preprocess_cfg(model)}
    if getattr(model.spec, "tokenizer", None) is not None:
        out["tokenizer"] = model.spec.tokenizer.to_dict()
    return out


def save_model(model: nn.Module, out_dir: str | os.PathLike, extra: dict | None = None):
    """Saves ``model`` in openeva's format (safetensors + config.json)."""
    return save_checkpoint(model, out_dir, {**model_config_dict(model), **(extra or {})})
