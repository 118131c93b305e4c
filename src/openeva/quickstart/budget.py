"""How many steps fit a ``--minutes`` budget in ``openeva quickstart`` (built-in data or ``--data``): a time model
of the chain, fitted on this CPU from two short timed runs of one of its stages (:func:`calibrate`): a CLIP
training for the built-in chain (:func:`builtin_plan`), a fine-tune for ``--data`` (:func:`chain_plan`).

One short timed run overstates what a step costs: building the model, loading the images, the first steps'
warm-up and scoring the validation images are paid once per stage, not per step. Planned from one 3-step run, a
30 min budget on a 2-core AMX Xeon gave 230 steps a stage and the run took 5 min. Two runs of different lengths
separate the two costs: per step, the difference of their times over the difference of their steps; per stage,
what is left of the shorter run.

A budget never cuts the fine-tune below :data:`MIN_FINETUNE_STEPS` (or the configured length, if shorter): at 49
steps the student's LP-FT fine-tune ended 5 points below the probe it started from (Fashion-MNIST, batch 128),
at 100 level with it; the pretraining stages take what the budget leaves.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# A stage's step in fine-tune steps (same batch): the CLIP step adds the text tower, the MIM step the teacher's
# forward pass.
TEACHER_STEP = 1.2
MIM_STEP = 1.5
MIN_FINETUNE_STEPS = 100
FORWARD_SHARE = 1 / 3  # a forward pass of one image ~ a third of its training step (forward + backward)
# Two timed runs: their difference is the per-step cost. A first untimed 1-step run pays the process's one-time
# warm-up (oneDNN primitives, allocator), which otherwise lands in whichever run is first: without it two runs on
# the same machine measured 0.30 and 0.16 s a step.
CALIBRATION_STEPS = (2, 12)


def check_minutes(minutes: float | None) -> None:
    """Refuse a budget that is not a positive number of minutes (before any work, so a typo costs nothing)."""
    if minutes is not None and not minutes > 0:
        raise ValueError(f"--minutes must be > 0, got {minutes!r}")


@dataclass(frozen=True)
class StepCost:
    """Seconds per fine-tune step and per stage (paid once: build, load, warm-up, scoring), on this CPU."""

    step_s: float
    stage_s: float

    @classmethod
    def from_runs(cls, short_steps: int, short_s: float, long_steps: int, long_s: float) -> "StepCost":
        """The two costs from two timed runs of ``short_steps`` < ``long_steps`` steps."""
        if not 0 < short_steps < long_steps:
            raise ValueError(f"need 0 < short_steps < long_steps, got {short_steps} and {long_steps}")
        # timing noise can make the longer run no slower; a step then costs at least 1% of the long run's average
        # (stages can be 10x a step: the floor must stay far below that), so the plan stays finite
        step = max((long_s - short_s) / (long_steps - short_steps), 0.01 * long_s / long_steps)
        return cls(step_s=step, stage_s=max(short_s - short_steps * step, 0.0))


def calibrate(run: Callable[[int], object], steps: tuple[int, int] = CALIBRATION_STEPS) -> tuple[StepCost, list[float]]:
    """Time ``run(n)`` (a stage of ``n`` steps) after an untimed 1-step warm-up, for each of ``steps``;
    -> (the fitted :class:`StepCost`, the two wall times)."""
    run(1)
    walls = []
    for n in steps:
        start = time.perf_counter()
        run(n)
        walls.append(time.perf_counter() - start)
    return StepCost.from_runs(steps[0], walls[0], steps[1], walls[1]), walls


def budget_record(minutes: float, cost: StepCost, walls: list[float], factor: float) -> dict:
    """What the report keeps of a plan (``actual_s`` is added when the run ends)."""
    return {"minutes": minutes, "step_s": cost.step_s, "stage_s": cost.stage_s,
            "calibration_s": [round(w, 3) for w in walls], "step_factor": factor}


@dataclass(frozen=True)
class Plan:
    """Seconds the chain takes: ``fixed_s`` whatever the steps, plus ``per_factor_s`` times the step factor."""

    fixed_s: float
    per_factor_s: float

    def seconds(self, factor: float) -> float:
        return self.fixed_s + factor * self.per_factor_s


def chain_plan(teacher_steps: int, mim_steps: int, finetune_steps: int, batch_size: int, num_images: int,
               num_train: int, cost: StepCost, scale_finetune: bool = True) -> Plan:
    """The time model of the whole run with the stages' steps multiplied by a factor (the fine-tune's too, unless
    ``scale_finetune`` is False: then its ``finetune_steps`` are a fixed cost).

    Stages: teacher, MIM, fine-tune (a) (its probe head encodes the training images first), fine-tune (b) with
    (a)'s steps, the frozen probes (two backbones encode ``num_images`` images) and (c), which gets the CPU time
    of teacher + MIM + (a): every step of teacher, MIM and (a) is paid twice, (b)'s once.
    """
    forward_s = FORWARD_SHARE * cost.step_s / batch_size  # one image through the backbone
    pretrain_s = (TEACHER_STEP * teacher_steps + MIM_STEP * mim_steps) * cost.step_s
    finetune_s = 3 * finetune_steps * cost.step_s  # (a), (c)'s share of it, (b)
    chain_fixed = 3 * cost.stage_s + num_train * forward_s  # teacher, MIM, (a) with its probe head
    probes = 2 * cost.stage_s + 2 * num_images * forward_s
    fixed = 2 * chain_fixed + cost.stage_s + probes  # chain, (c) as long as the chain, (b), probes
    if scale_finetune:
        return Plan(fixed_s=fixed, per_factor_s=2 * pretrain_s + finetune_s)
    return Plan(fixed_s=fixed + finetune_s, per_factor_s=2 * pretrain_s)


def fit_factor(plan: Plan, seconds_left: float, minutes: float) -> float:
    """The step factor that fills ``seconds_left``; a clear error when the fixed costs alone exceed it."""
    if seconds_left <= plan.fixed_s:
        need = (60 * minutes - seconds_left + plan.fixed_s + 0.1 * plan.per_factor_s) / 60
        raise ValueError(f"--minutes {minutes:g} leaves no time to train on this CPU: the stages' fixed costs "
                         f"(building, loading, scoring) come to about {plan.fixed_s / 60:.1f} min of the "
                         f"{seconds_left / 60:.1f} min left after preparing the data and timing the steps; give at "
                         f"least --minutes {math.ceil(need)}, or fewer images with --scale")
    return (seconds_left - plan.fixed_s) / plan.per_factor_s


def plan_steps(teacher_steps: int, mim_steps: int, finetune_steps: int, batch_size: int, num_images: int,
               num_train: int, cost: StepCost, seconds_left: float, minutes: float) -> tuple[float, int]:
    """-> (factor for the teacher and MIM steps, fine-tune steps) that fill ``seconds_left``.

    Every stage scales by one factor unless that cuts the fine-tune below :data:`MIN_FINETUNE_STEPS` (or its
    configured length, if shorter); then the fine-tune keeps that floor and the pretraining takes what is left.
    """
    sizes = (batch_size, num_images, num_train, cost)
    factor = fit_factor(chain_plan(teacher_steps, mim_steps, finetune_steps, *sizes), seconds_left, minutes)
    floor = min(finetune_steps, MIN_FINETUNE_STEPS)
    if round(finetune_steps * factor) >= floor:
        return factor, max(1, round(finetune_steps * factor))
    fixed_finetune = chain_plan(teacher_steps, mim_steps, floor, *sizes, scale_finetune=False)
    return fit_factor(fixed_finetune, seconds_left, minutes), floor


def builtin_plan(teacher_steps: int, mim_steps: int, clip_steps: int, batch_size: int, eval_images: int,
                 cost: StepCost) -> Plan:
    """The time model of the built-in chain, ``cost`` measured on CLIP steps: teacher, MIM (a step is
    ``MIM_STEP / TEACHER_STEP`` CLIP steps), EVA-CLIP and scratch scale with the factor; the four training
    stages' fixed costs and five evaluations (random init, teacher, student, EVA-CLIP, scratch), each encoding
    ``eval_images`` images, do not."""
    forward_s = FORWARD_SHARE * cost.step_s / batch_size
    fixed = 4 * cost.stage_s + 5 * eval_images * forward_s
    return Plan(fixed_s=fixed, per_factor_s=(teacher_steps + MIM_STEP / TEACHER_STEP * mim_steps + 2 * clip_steps)
                * cost.step_s)
