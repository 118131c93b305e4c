"""How many steps fit a ``--minutes`` budget in ``openeva quickstart --data``: a time model of the chain, fitted
on this CPU from two short timed fine-tunes.

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
from dataclasses import dataclass

# A stage's step in fine-tune steps (same batch): the CLIP step adds the text tower, the MIM step the teacher's
# forward pass.
TEACHER_STEP = 1.2
MIM_STEP = 1.5
MIN_FINETUNE_STEPS = 100
FORWARD_SHARE = 1 / 3  # a forward pass of one image ~ a third of its training step (forward + backward)


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
                         f"{seconds_left / 60:.1f} min left after preparing the data; give at least "
                         f"--minutes {math.ceil(need)}, or fewer images with --scale")
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
