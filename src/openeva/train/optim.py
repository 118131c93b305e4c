"""Optimizer parameter groups from the Task's hooks, and the optimizers (AdamW, timm's LAMB).

Groups follow EVA-CLIP's recipe: each trained module (vision tower, text tower, the rest) has its own lr and
weight decay; with layer decay ``ld < 1`` a parameter in layer ``i`` of ``L`` gets ``lr * ld ** (L - 1 - i)``
(embeddings decay most, the head not at all). No weight decay on biases, norms (every tensor with ndim <= 1)
and the names a module lists in ``no_weight_decay()`` (position embeddings, class / mask tokens, logit scale).
The optimizer never inspects module names itself; the modules' hooks decide.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from openeva.train.task import ParamGroupSpec

logger = logging.getLogger(__name__)


def _no_decay_names(module: nn.Module) -> set[str]:
    fn = getattr(module, "no_weight_decay", None)
    return set(fn()) if callable(fn) else set()


def param_groups(
    task: nn.Module, specs: list[ParamGroupSpec], base_lr: float, weight_decay: float
) -> list[dict]:
    """Parameter groups for ``torch.optim`` from ``task.param_group_specs()``.

    A parameter belongs to the first spec whose module holds it, so a later spec for a whole model collects
    only what the earlier (tower) specs left, e.g. CLIP's logit scale. Trainable Task parameters no spec
    covers go to a default group (base lr, decay by the ndim rule). Each group carries ``base_lr`` and
    ``lr_scale``; the schedule sets ``lr = base_lr * lr_scale * factor(step)``.
    """
    if not specs:
        raise ValueError("the task's param_group_specs() returned no modules to train")
    seen: set[int] = set()
    groups: dict[tuple, dict] = {}
    for index, spec in enumerate(specs):
        lr = base_lr if spec.lr is None else float(spec.lr)
        wd = weight_decay if spec.weight_decay is None else float(spec.weight_decay)
        if not 0.0 < spec.layer_decay <= 1.0:
            raise ValueError(f"layer_decay for {spec.prefix!r} must be in (0, 1], got {spec.layer_decay}")
        use_layers = spec.layer_decay < 1.0
        if use_layers and not (hasattr(spec.module, "num_layers") and hasattr(spec.module, "layer_id")):
            raise ValueError(f"layer decay for {spec.prefix!r} needs num_layers and layer_id() on "
                             f"{type(spec.module).__name__}")
        skip = _no_decay_names(spec.module)
        for name, p in spec.module.named_parameters():
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            no_decay = p.ndim <= 1 or name.endswith(".bias") or name in skip
            layer = spec.module.layer_id(name) if use_layers else 0
            scale = math.pow(spec.layer_decay, spec.module.num_layers - 1 - layer) if use_layers else 1.0
            key = (index, layer, no_decay)
            if key not in groups:
                suffix = f"layer{layer}_" if use_layers else ""
                groups[key] = {"name": f"{spec.prefix or 'task'}_{suffix}{'no_decay' if no_decay else 'decay'}",
                               "params": [], "param_names": [], "base_lr": lr, "lr": lr * scale,
                               "lr_scale": scale, "weight_decay": 0.0 if no_decay else wd}
            groups[key]["params"].append(p)
            groups[key]["param_names"].append(f"{spec.prefix}.{name}" if spec.prefix else name)
    leftover = [(n, p) for n, p in task.named_parameters() if p.requires_grad and id(p) not in seen]
    for name, p in leftover:
        no_decay = p.ndim <= 1 or name.endswith(".bias")
        key = (len(specs), 0, no_decay)
        groups.setdefault(key, {"name": f"other_{'no_decay' if no_decay else 'decay'}", "params": [],
                                "param_names": [], "base_lr": base_lr, "lr": base_lr, "lr_scale": 1.0,
                                "weight_decay": 0.0 if no_decay else weight_decay})
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    if leftover:
        logger.info("%d trainable parameters outside param_group_specs() use the base lr: %s", len(leftover),
                    ", ".join(n for n, _ in leftover[:5]))
    if not groups:
        raise ValueError("nothing to train: every parameter of the task's modules is frozen")
    return list(groups.values())


def create_optimizer(groups: list[dict], name: str, lr: float, betas=(0.9, 0.98), eps: float = 1e-6,
                     weight_decay: float = 0.05, lamb_max_grad_norm: float | None = 1.0) -> torch.optim.Optimizer:
    """AdamW (torch) or LAMB (timm, the optimizer EVA-CLIP trains with)."""
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                 fused=_fused_adamw_ok(groups) or None)
    if name == "lamb":
        from timm.optim import Lamb

        return Lamb(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                    max_grad_norm=lamb_max_grad_norm)
    raise ValueError(f"optimizer must be adamw or lamb, got {name!r}")


def _fused_adamw_ok(groups: list[dict]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: plain floating tensors on CPU or CUDA.

    On CPU the default per-parameter loop costs as much as a small model's backward (it is also slowed by
    denormal second moments); the fused kernel does the same update about 10x faster. Sharded (FSDP2 DTensor)
    parameters keep the default implementation.
    """
    params = [p for g in groups for p in g["params"]]
    return bool(params) and all(type(p) is torch.nn.Parameter and p.device.type in ("cpu", "cuda")
                                and p.dtype.is_floating_point for p in params)


def describe_groups(groups: list[dict]) -> list[dict]:
    """A JSON-able summary (name, lr, lr scale, weight decay, parameter count) for the run log."""
    return [{"name": g["name"], "lr": g["base_lr"] * g["lr_scale"], "lr_scale": round(g["lr_scale"], 6),
             "weight_decay": g["weight_decay"], "num_params": sum(p.numel() for p in g["params"])}
            for g in groups]
