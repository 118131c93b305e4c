"""The contract between the one training engine and an objective (CLIP, MIM, fine-tuning).

A Task is an ``nn.Module`` that owns the trained model(s) and turns a batch into a loss: the engine wraps the
whole Task in DDP/FSDP, so frozen parts (a MIM teacher) live inside it with ``requires_grad=False``. The engine
does precision, distribution, optimisation, schedule, checkpoints and logging; a Task does none of these.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ParamGroupSpec:
    """A trained module and how its parameters are optimised.

    ``module`` must expose ``no_weight_decay()`` (names exempt from decay besides ndim <= 1 tensors) and, when
    ``layer_decay < 1``, ``num_layers`` and ``layer_id(name)`` (0 = embeddings .. num_layers - 1 = head).
    ``prefix`` is the module's attribute path inside the Task (for naming groups).
    """

    module: nn.Module
    prefix: str
    lr: float | None = None  # None: the run's base lr
    layer_decay: float = 1.0
    weight_decay: float | None = None  # None: the run's weight decay


class Task(nn.Module, abc.ABC):
    """Subclasses implement ``forward(batch) -> (loss, metrics)`` and ``param_group_specs()``.

    A Task whose loss couples the samples of a batch (contrastive) sets ``accumulate_features = True``; its
    ``forward(batch, features_only=True)`` returns the dict of tensors its loss reads ((B, ...) per sample,
    0-dim for functions of parameters alone, such as the logit scale) and ``loss_from_features(features)``
    turns such a dict, concatenated over a step's micro-batches, into ``(loss, metrics)``. The engine then
    accumulates gradients exactly (:mod:`openeva.train.accumulate`): the loss of a step sees all its samples.
    """

    accumulate_features: bool = False

    @abc.abstractmethod
    def forward(self, batch) -> tuple[torch.Tensor, dict[str, float | torch.Tensor]]:
        """The loss to minimise (a scalar) and metrics to log for this batch."""

    @abc.abstractmethod
    def param_group_specs(self) -> list[ParamGroupSpec]:
        """The trained modules with their lr / layer decay / weight decay."""

    def __init_subclass__(cls, **kwargs):
        """A Task that sets ``accumulate_features`` must define ``loss_from_features(features) -> (loss,
        metrics)``: checked when the class is defined, not at its first accumulated step."""
        super().__init_subclass__(**kwargs)
        if cls.accumulate_features and not callable(getattr(cls, "loss_from_features", None)):
            raise TypeError(f"{cls.__name__} sets accumulate_features but defines no loss_from_features(features)")

    def set_world(self, rank: int, world_size: int) -> None:
        """Called once by the engine before training (losses that gather across ranks need these)."""
        self.rank, self.world_size = rank, world_size

    def on_step_end(self, step: int) -> None:
        """Hook after each optimizer step (e.g. clamping CLIP's logit scale)."""

    def evaluate(self, step: int, group=None) -> dict[str, float]:
        """Optional validation metrics, run by the engine every ``eval_every`` steps on every rank: each rank scores
        its share of the validation set and the evaluators combine the shares over ``group`` (None: one process;
        :func:`openeva.train.evals.rank_share`), so every rank returns the one-process metrics. A Task whose
        ``evaluate`` takes no ``group`` is run on rank 0 alone (on every rank, over all of its data, under FSDP)."""
        return {}
