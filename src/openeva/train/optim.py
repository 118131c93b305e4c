"""Optimizer parameter groups from the Task's hooks, and the optimizers (AdamW, and EVA-CLIP's LAMB).

Groups follow EVA-CLIP's recipe: each trained module (vision tower, text tower, the rest) has its own lr and
weight decay; with layer decay ``ld < 1`` a parameter in layer ``i`` of ``L`` gets ``lr * ld ** (L - 1 - i)``
(embeddings decay most, the head not at all). No weight decay on biases, norms (every tensor with ndim <= 1)
and the names a module lists in ``no_weight_decay()`` (position embeddings, the class token, the logit scale;
EVA decays the text token embedding and the MIM mask token, so they are not listed).
The optimizer never inspects module names itself; the modules' hooks decide.

:class:`Lamb` is LAMB as DeepSpeed's ``FusedLamb`` computes it, which is what EVA-CLIP trains with.
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
                     weight_decay: float = 0.05) -> torch.optim.Optimizer:
    """AdamW (torch) or :class:`Lamb` (DeepSpeed's formula, the optimizer EVA-CLIP trains with).

    Neither clips gradients: the run's one global clip (``optim.grad_clip``, 5.0 in the EVA-CLIP recipes) is the
    engine's, as in EVA-CLIP's DeepSpeed run.
    """
    groups = [{k: v for k, v in g.items() if k != "param_names"} for g in groups]
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                                 fused=_fused_adamw_ok(groups) or None)
    if name == "lamb":
        return Lamb(groups, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be adamw or lamb, got {name!r}")


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al., 2019, arXiv 1904.00962) as DeepSpeed's ``FusedLamb`` computes it; EVA-CLIP trains with it.

    For every parameter tensor ``p`` with gradient ``g`` at its step ``t`` (``m = v = 0`` before the first)::

        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g ** 2
        u = m / (sqrt(v) + eps) + weight_decay * p
        r = clamp(||p|| / ||u||, min_coeff, max_coeff), or 1 when ||p|| or ||u|| is 0
        p = p - lr * sqrt(1 - b2 ** t) / (1 - b1 ** t) * r * u

    As in DeepSpeed (``csrc/lamb/fused_lamb_cuda_kernel.cu``; defaults ``max_coeff=10``, ``min_coeff=0.01``,
    ``eps`` outside the square root): the trust ratio ``r`` is clamped to [0.01, 10] and applied to every tensor,
    biases, norms and the logit scale included (timm's ``Lamb`` skips tensors without weight decay and leaves
    the ratio unclamped); the bias correction is folded into the step size, so ``eps`` is added to the
    uncorrected ``sqrt(v)`` and the decay term is scaled with the step. There is no clipping here (timm's and
    apex's LAMB clip the global gradient norm to 1.0 again): the engine's ``optim.grad_clip`` is the only clip.

    The ratio is computed per tensor, so a step does not depend on how many processes train. Under ZeRO stage 1,
    as EVA-CLIP ran, DeepSpeed computes it per flattened slice of a parameter group owned by each GPU (a slice
    can span several tensors or part of one), which ties the update to the GPU count; that is not copied.

    Plain tensor ops only, so parameters may be FSDP2 ``DTensor`` shards: the norms are then of the whole
    tensor (the DTensor reduces them over the shards), and nothing reads a device value on the host (the step
    count lives on the CPU, as in torch's Adam; the clamp and the zero-norm case are ``torch.where``).
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.98), eps: float = 1e-6,
                 weight_decay: float = 0.0, bias_correction: bool = True, max_coeff: float = 10.0,
                 min_coeff: float = 0.01):
        if not lr >= 0.0:
            raise ValueError(f"Lamb lr must be >= 0, got {lr}")
        if not (len(betas) == 2 and all(0.0 <= b < 1.0 for b in betas)):
            raise ValueError(f"Lamb betas must be two numbers in [0, 1), got {betas}")
        if not eps > 0.0:
            raise ValueError(f"Lamb eps must be > 0, got {eps}")
        if not weight_decay >= 0.0:
            raise ValueError(f"Lamb weight_decay must be >= 0, got {weight_decay}")
        if not 0.0 < min_coeff <= max_coeff:
            raise ValueError(f"Lamb needs 0 < min_coeff <= max_coeff, got {min_coeff}, {max_coeff}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        bias_correction=bias_correction, max_coeff=max_coeff, min_coeff=min_coeff)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)  # on the CPU: reading it is no device sync
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step_size = group["lr"]
                if group["bias_correction"]:
                    t = float(state["step"])
                    step_size *= math.sqrt(1.0 - beta2 ** t) / (1.0 - beta1 ** t)
                _lamb_update(p, p.grad, state["exp_avg"], state["exp_avg_sq"], beta1, beta2, group["eps"],
                             group["weight_decay"], group["min_coeff"], group["max_coeff"], step_size)
        return loss


def _lamb_update(p: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor, beta1: float,
                 beta2: float, eps: float, weight_decay: float, min_coeff: float, max_coeff: float,
                 step_size: float) -> None:
    """One tensor's LAMB update in place (see :class:`Lamb`); every operand has ``p``'s shape."""
    exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    update = exp_avg / exp_avg_sq.sqrt().add_(eps)
    if weight_decay != 0.0:
        update.add_(p, alpha=weight_decay)
    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)  # () each
    ratio = torch.where((w_norm > 0) & (u_norm > 0), (w_norm / u_norm).clamp(min_coeff, max_coeff),
                        torch.ones_like(w_norm))  # (): the division's inf / nan where a norm is 0 is never taken
    p.add_(update.mul_(ratio), alpha=-step_size)


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
