"""Exact large-batch contrastive training with gradient accumulation (GradCache, Gao et al. 2021,
arXiv 2101.06983; open_clip's ``--accum-freq``).

A contrastive loss couples every sample of a batch, so averaging per-micro-batch losses trains another objective
(each loss sees only its micro-batch's negatives). For a Task with ``accumulate_features = True`` one optimizer
step here is:

1. every micro-batch's features without a graph (``task(batch, features_only=True)`` through the DDP/FSDP
   wrapper), with the RNG state at its start recorded;
2. the loss of the whole step over the concatenated features (``task.loss_from_features``; across ranks the
   loss gathers as usual) and its gradient with respect to those features;
3. every micro-batch's forward again, with the RNG replayed (same dropout / patch dropout), and the backward of
   ``sum(features * their gradient)``: each parameter receives exactly the gradient of the whole step's loss.

Per-sample features are (B, ...) tensors concatenated over micro-batches; 0-dim features (the logit scale and
bias, functions of parameters only) are the same in every micro-batch and get ``1 / accum`` of their gradient
in each re-forward, so they take part in every forward's graph (DDP sees them used) and sum to the full gradient.
Memory is one micro-batch's activations plus the step's features; compute is one extra forward per micro-batch.
"""

from __future__ import annotations

import torch
from torch import nn

from openeva.runtime import Precision
from openeva.train.distributed import gradient_sync


def _capture_rng(device: torch.device):
    """The RNG states a forward can draw from: the CPU generator and, on CUDA, this device's."""
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _restore_rng(state, device: torch.device) -> None:
    cpu, dev = state
    torch.set_rng_state(cpu)
    if dev is not None:
        torch.cuda.set_rng_state(dev, device)


def _concat(chunks: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Micro-batch feature dicts -> one dict: (B, ...) tensors concatenated, 0-dim ones taken from the first; a
    micro-batch without a ``valid`` mask (every row a sample) gets an all-True one when another has one."""
    if not chunks or not isinstance(chunks[0], dict):
        raise TypeError("forward(batch, features_only=True) must return a dict of tensors")
    if any("valid" in c for c in chunks):
        device = next(iter(chunks[0].values())).device
        chunks = [{**c, "valid": c.get("valid", torch.ones(_rows(c), dtype=torch.bool, device=device))}
                  for c in chunks]
    return {k: torch.cat([c[k] for c in chunks]) if v.ndim else v for k, v in chunks[0].items()}


def _rows(chunk: dict[str, torch.Tensor]) -> int:
    """The micro-batch size B of a feature dict (its first per-sample tensor's leading dim)."""
    return next((v.shape[0] for v in chunk.values() if v.ndim), 0)


def cached_accumulation(model: nn.Module, task: nn.Module, batches: list[tuple], precision: Precision,
                        device: torch.device) -> dict[str, torch.Tensor]:
    """Forward and backward of one optimizer step's micro-batches with the loss over all of them (module
    docstring). ``model`` is the wrapped Task (DDP/FSDP or the Task itself), ``task`` the Task, ``batches``
    ``(batch, forward keyword arguments)`` pairs (the engine's validity mask). Gradients are
    accumulated into the parameters (scaled when ``precision`` is fp16), synchronised on the last micro-batch.
    Returns the step's metrics (detached): ``loss`` and what ``task.loss_from_features`` reports.
    """
    states, chunks = [], []
    with torch.no_grad():
        for batch, kw in batches:
            states.append(_capture_rng(device))
            with precision.autocast():
                chunks.append(model(batch, features_only=True, **kw))
    after = _capture_rng(device)
    # fp32 leaves: their gradients are the cotangents of the re-forward and must not underflow in fp16.
    features = {k: v.detach().float().requires_grad_() if v.is_floating_point() else v
                for k, v in _concat(chunks).items()}
    with precision.autocast():
        loss, metrics = task.loss_from_features(features)
    leaves = {k: v for k, v in features.items() if v.requires_grad}
    scaled = precision.scaler.scale(loss) if precision.scaler is not None else loss  # scaled once, here
    grads = torch.autograd.grad(scaled, list(leaves.values()), allow_unused=True)
    grads = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}

    start, last = 0, len(batches) - 1
    for i, (batch, kw) in enumerate(batches):
        _restore_rng(states[i], device)
        rows = _rows(chunks[i])
        with gradient_sync(model, i == last):
            with precision.autocast():
                out = model(batch, features_only=True, **kw)
            surrogate = sum((out[k].float() * (g[start:start + rows] if g.ndim else g / len(batches))).sum()
                            for k, g in grads.items())  # d surrogate / d out[k] = the cached gradient
            surrogate.backward()
        start += rows
    _restore_rng(after, device)
    metrics = {k: torch.as_tensor(v).detach().float() for k, v in metrics.items()}
    return {"loss": loss.detach().float(), **metrics}
