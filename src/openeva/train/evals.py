"""Which evaluators validate a training run: ``TrainConfig.evals`` names them, each task states what it can run.

The evaluators are :mod:`openeva.evaluators`, the same objects ``openeva eval`` runs: ``retrieval`` and
``zeroshot`` (CLIP training), ``accuracy`` (fine-tuning), ``miou`` (segmentation). ``evals=None`` keeps a task's
default (all it supports); ``evals=()`` turns validation off; naming an evaluator the task cannot run fails in
the preflight, before any compute.
"""

from __future__ import annotations

EVALS = ("retrieval", "zeroshot", "accuracy", "miou")


def select_evals(cfg, supported: tuple[str, ...]) -> tuple[str, ...]:
    """The evaluators ``cfg`` runs for a task that supports ``supported`` (its default: all of them)."""
    if cfg.evals is None:
        return supported
    unsupported = [e for e in cfg.evals if e not in supported]
    if unsupported:
        raise ValueError(f"config evals={list(cfg.evals)}: task {cfg.task!r} validates with "
                         f"{', '.join(supported) or 'nothing'}, not {', '.join(unsupported)}")
    return tuple(cfg.evals)
