"""``run_quickstart``: the EVA bootstrapping chain end to end on the built-in shapes data, on a CPU.

Stages (each a run directory under the output folder, written by the one training engine), run by the one stage
runner (:mod:`.stages`):

0. ``random``: the evaluation sets are rendered and a CLIP with random weights is scored (chance levels).
1. ``teacher``: a small EVA-CLIP trained contrastively from scratch (``openeva.train.train``).
2. ``mim``: an EVA-02 student MIM-pretrained against the frozen teacher's patch features
   (``openeva.train.mim_task.pretrain``; EVA-02, Fang et al. 2023).
3. ``evaclip``: an EVA-CLIP whose vision tower starts from the student (EVA-CLIP, Sun et al. 2023): projection
   head, ``text_projection`` and logit scale re-initialised; the text tower from the teacher's (EVA-CLIP takes
   it from a CLIP) or random (``text_init="random"``).
4. ``scratch``: the same CLIP from random weights with the same steps, batch size, data order and optimiser.

Every model is evaluated on (shape, color) pairs no training image showed (:mod:`.evaluation`); the report
(``report.json``, plots, ``report.html``) is shown by :mod:`.builtin_view`. ``minutes`` fits the steps to a time
budget (:mod:`.budget`, timed on two short CLIP trainings). A failing stage stops the chain with a
:class:`~openeva.quickstart.stages.QuickstartStageError` naming it, after writing the partial report.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from openeva.factory import create_model, get_tokenizer
from openeva.models.registry import get_model_spec
from openeva.quickstart import budget, evaluation
from openeva.quickstart.builtin_view import VIEW
from openeva.quickstart.config import ChainConfig
from openeva.quickstart.report import new_report
from openeva.quickstart.stages import ChainRun, Stage, open_out_dir
from openeva.runtime import describe_precision, resolve_precision
from openeva.train.config import DataConfig, LossConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from openeva.train.logging import read_metrics
from openeva.train.mim_task import pretrain
from openeva.train.runner import train

STAGES = ("teacher", "mim", "evaclip", "scratch")
TEXT_INITS = ("teacher", "random")
OUTPUTS = (*STAGES, "calibration", "report.json", "report.html", "plots")


@dataclass(frozen=True)
class QuickstartConfig(ChainConfig):
    """Sizes of the quickstart. ``QuickstartConfig.preset("full" | "fast")``, then ``.scaled(f)`` to shrink it.

    The defaults ("full") are tuned to finish in under 10 minutes on 2 CPU cores; "fast" is a smoke version for
    the test suite. EVA-CLIP and scratch always get the same ``clip_steps``, batch size, lr and data order.
    """

    train_samples: int = 8192  # synthetic training pairs (train split: held-out pairs never appear)
    clip_steps: int = 200  # EVA-CLIP and scratch alike
    clip_lr: float = 2e-3
    warmup_fraction: float = 0.1
    text_init: str = "teacher"  # EVA-CLIP's text tower: the teacher's ("teacher") or random
    mim_mask_ratio: float = 0.4  # EVA-02: 105 of 256 patches
    mim_min_block: int = 4  # smallest masking block in patches (EVA-02: 16 of 256)
    mim_crop_scale: tuple[float, float] = (0.5, 1.0)
    heldout_samples: int = 1000  # zero-shot, retrieval and probe-test images (held-out pairs)
    probe_train_samples: int = 1000  # linear-probe fitting images (all 30 pairs)
    retrieval_samples: int = 500

    STEP_FIELDS: ClassVar[tuple[str, ...]] = ("teacher_steps", "mim_steps", "clip_steps")
    COUNT_FLOORS: ClassVar[dict] = {"train_samples": "batch_size", "heldout_samples": 10, "probe_train_samples": 10,
                                    "retrieval_samples": 2}
    POSITIVE_INTS: ClassVar[tuple[str, ...]] = (*ChainConfig.POSITIVE_INTS, "clip_steps", "heldout_samples",
                                                "probe_train_samples", "retrieval_samples", "mim_min_block")
    PRESETS: ClassVar[dict] = {
        "full": {},
        "fast": dict(train_samples=256, batch_size=32, teacher_steps=12, mim_steps=8, clip_steps=8,
                     heldout_samples=120, probe_train_samples=120, retrieval_samples=60, log_every=2),
    }

    def __post_init__(self):
        super().__post_init__()
        if self.train_samples < self.batch_size:
            raise ValueError(f"QuickstartConfig.train_samples ({self.train_samples}) must be at least batch_size "
                             f"({self.batch_size})")
        if self.probe_train_samples < 10:
            raise ValueError("QuickstartConfig.probe_train_samples must be >= 10 (the probe holds some out)")
        if not self.clip_lr > 0:
            raise ValueError(f"QuickstartConfig.clip_lr must be > 0, got {self.clip_lr!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"QuickstartConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0 < self.mim_mask_ratio < 1:
            raise ValueError(f"QuickstartConfig.mim_mask_ratio must be in (0, 1), got {self.mim_mask_ratio!r}")
        if self.text_init not in TEXT_INITS:
            raise ValueError(f"QuickstartConfig.text_init must be one of {TEXT_INITS}, got {self.text_init!r}")


# --------------------------------------------------------------------------------------- training configs
def _clip_train_config(qc: QuickstartConfig, out: Path, name: str, steps: int, lr: float,
                       pretrained_image: Path | None = None, pretrained_text: Path | None = None,
                       progress: bool = True) -> TrainConfig:
    """The engine config of a CLIP stage: the same recipe for the teacher, the EVA-CLIP and the scratch CLIP."""
    return TrainConfig(
        task="clip", output_dir=str(out), name=name, seed=qc.seed, precision=qc.precision, device="cpu",
        save_every=steps, keep_last=1, log_every=qc.log_every, eval_every=0, progress=progress,
        tensorboard=False, plot=True,
        model=ModelConfig(name=qc.clip_model, pretrained_image=str(pretrained_image) if pretrained_image else None,
                          pretrained_text=str(pretrained_text) if pretrained_text else None),
        # validation is the quickstart's own (held-out pairs), after training
        data=DataConfig(train="synthetic", synthetic_num_samples=qc.train_samples, batch_size=qc.batch_size,
                        scale=(0.9, 1.0), val=None, zeroshot=None),
        optim=OptimConfig(optimizer="adamw", lr=lr, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6, grad_clip=5.0),
        schedule=ScheduleConfig(scheduler="cosine", warmup_steps=int(qc.warmup_fraction * steps),
                                total_steps=steps),
        loss=LossConfig(kind="clip"),
    )


def _mim_train_config(qc: QuickstartConfig, out: Path, teacher_dir: Path, progress: bool = True) -> TrainConfig:
    """EVA-02 MIM of the student against the frozen teacher's patch features (block masks, cosine loss)."""
    grid = get_model_spec(qc.student_model).config.grid_size
    num_masked = max(1, round(qc.mim_mask_ratio * grid[0] * grid[1]))
    return TrainConfig(
        task="mim", output_dir=str(out), name="mim", seed=qc.seed, precision=qc.precision, device="cpu",
        save_every=qc.mim_steps, keep_last=1, log_every=qc.log_every, eval_every=0, progress=progress,
        tensorboard=False, plot=True,
        model=ModelConfig(name=qc.student_model, drop_path_rate=0.0),
        # EVA-02 crops with scale (0.2, 1); a shape covers a small part of the image, so smaller crops would
        # often hold background only
        data=DataConfig(train="synthetic", synthetic_num_samples=qc.train_samples, batch_size=qc.batch_size,
                        scale=tuple(qc.mim_crop_scale), val=None, zeroshot=None),
        optim=OptimConfig(optimizer="adamw", lr=qc.mim_lr, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6,
                          grad_clip=3.0),
        schedule=ScheduleConfig(scheduler="cosine", warmup_steps=int(qc.warmup_fraction * qc.mim_steps),
                                total_steps=qc.mim_steps, min_lr_ratio=0.01),
        task_options=dict(teacher=str(teacher_dir), teacher_precision=qc.precision, target="clip",
                          num_masking_patches=num_masked, min_num_patches=min(qc.mim_min_block, num_masked),
                          min_aspect=0.3, hflip=0.5, patch_embed_grad_scale=0.1),
    )


def _trained_entry(model: str, init: str, run_dir: Path, steps: int, batch_size: int, wall_s: float,
                   loss_name: str) -> dict:
    curve = [[r["step"], r["loss"]] for r in read_metrics(run_dir / "metrics.jsonl")
             if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]
    return {"model": model, "init": init, "run_dir": run_dir.name, "trained": True, "steps": steps,
            "batch_size": batch_size, "wall_s": wall_s, "loss_name": loss_name,
            "final_loss": curve[-1][1] if curve else None, "loss_curve": curve, "metrics": {}}


def _notes(qc: QuickstartConfig) -> list[str]:
    text = ("the teacher's text tower (EVA-CLIP initialises its text tower from a CLIP; here the teacher is the "
            "only CLIP there is)" if qc.text_init == "teacher" else "random weights")
    return [
        f"EVA-CLIP init: vision tower from the MIM student (projection head re-initialised), text tower from {text}; "
        "text_projection and logit scale re-initialised, as EVA-CLIP does.",
        "Same compute means stage 3 (EVA-CLIP) and stage 4 (scratch) ran the same steps, batch size, lr schedule "
        "and data order. The chain as a whole (teacher + MIM + EVA-CLIP) used more compute than the scratch CLIP, "
        "as in EVA, where the question is whether a MIM-initialised tower trains better for the same CLIP budget.",
        "All metrics are measured on (shape, color) pairs that no training image showed; chance is 1/30 (pairs), "
        "1/5 (shapes), 1/6 (colors) and 1/N for retrieval among N images whose captions can repeat word for word.",
        "The linear probe fits a logistic regression for the shape on frozen features of fresh images of all 30 "
        "pairs (color independent of shape) and tests it on the held-out-pair images: how linearly decodable shape "
        "is from the features. The MIM student is probed on its mean-pooled features.",
        "These are tiny models on toy data, sized to run in minutes on a CPU: the numbers show the chain works "
        "and how its stages compare here, not how EVA models perform.",
        "Every stage directory holds the engine's config.json: `openeva train DIR/teacher/config.json name=again` "
        "(or `openeva pretrain DIR/mim/config.json name=again`) reruns a stage.",
    ]


def _fit_budget(qc: QuickstartConfig, minutes: float, run: ChainRun) -> QuickstartConfig:
    """``qc`` with its steps scaled so that the whole run fills ``minutes``, timed on two short CLIP trainings."""
    run.say(f"timing CLIP steps on this CPU for the {minutes:g} min budget ...")
    calibration = run.out / "calibration"
    cost, walls = budget.calibrate(lambda steps: train(_clip_train_config(
        dataclasses.replace(qc, log_every=steps), calibration, f"steps{steps}", steps, qc.teacher_lr,
        progress=False)))
    left = 60.0 * minutes - (time.perf_counter() - run.t0)
    plan = budget.builtin_plan(qc.teacher_steps, qc.mim_steps, qc.clip_steps, qc.batch_size,
                               qc.heldout_samples + qc.probe_train_samples, cost)
    factor = budget.fit_factor(plan, left, minutes)
    fitted = qc.steps_scaled(factor)
    run.report["config"] = fitted.to_dict()
    run.report["budget"] = budget.budget_record(minutes, cost, walls, factor)
    run.say(f"{minutes:g} min budget ({cost.step_s:.3f} s a CLIP step, {cost.stage_s:.1f} s a stage on this CPU): "
            f"teacher {fitted.teacher_steps}, MIM {fitted.mim_steps}, EVA-CLIP and scratch {fitted.clip_steps} steps")
    return fitted


def run_quickstart(out_dir="quickstart_out", config: QuickstartConfig | None = None, *, minutes: float | None = None,
                   overwrite: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the chain (teacher -> MIM student -> EVA-CLIP, plus the scratch baseline), evaluate, write the report.

    ``minutes``: scale the steps so that the whole run takes about that long on this CPU. Returns the report dict
    (also in ``out_dir/report.json``; ``report["paths"]`` lists the written files). Raises
    :class:`~openeva.quickstart.stages.QuickstartStageError` naming the stage that failed (the partial report is
    written first).
    """
    budget.check_minutes(minutes)
    qc = config or QuickstartConfig()
    spec, student_spec = get_model_spec(qc.clip_model), get_model_spec(qc.student_model)
    if spec.config.vision.img_size != student_spec.config.img_size:
        raise ValueError(f"{qc.student_model} ({student_spec.config.img_size} px) does not match the vision tower "
                         f"of {qc.clip_model} ({spec.config.vision.img_size} px)")
    out = Path(out_dir)
    open_out_dir(out, OUTPUTS, overwrite)
    log(f"[quickstart] {describe_precision(qc.precision, 'cpu')}")
    qc = dataclasses.replace(qc, precision=resolve_precision(qc.precision, "cpu")[0])
    report = new_report("builtin", "openeva quickstart: the EVA chain on synthetic shapes", qc.to_dict(), [],
                        seed=qc.seed, notes=_notes(qc))
    run = ChainRun(out, report, VIEW, log, "[quickstart]")
    if minutes is not None:
        qc = _fit_budget(qc, minutes, run)
    tokenizer = get_tokenizer(qc.clip_model)
    sets: list[evaluation.EvalSets] = []  # filled by the first stage, read by the others

    def scored(model, what: str) -> dict:
        run.say(f"{what}: evaluating on {qc.heldout_samples} held-out images ...")
        start = time.perf_counter()
        metrics = evaluation.evaluate_clip(model, tokenizer, sets[0], seed=qc.seed, precision=qc.precision)
        return {"metrics": metrics, "eval_s": time.perf_counter() - start}

    def random_init() -> dict:
        run.say(f"rendering {qc.heldout_samples + qc.probe_train_samples} evaluation images ...")
        sets.append(evaluation.prepare_eval_sets(qc.heldout_samples, qc.probe_train_samples, qc.retrieval_samples,
                                                 spec.config.vision.img_size[0], spec.mean, spec.std, seed=qc.seed))
        report["eval_counts"] = sets[0].counts()
        torch.manual_seed(qc.seed)
        return {"model": qc.clip_model, "init": "random", "trained": False, **scored(create_model(qc.clip_model),
                                                                                     "random init"),
                "note": "untrained weights: the chance level of every metric on this data"}

    def clip_stage(name: str, steps: int, lr: float, init: str, image=None, text=None) -> Callable[[], dict]:
        def stage() -> dict:
            start = time.perf_counter()
            train(_clip_train_config(qc, out, name, steps, lr, image, text, progress))
            entry = _trained_entry(qc.clip_model, init, out / name, steps, qc.batch_size,
                                   time.perf_counter() - start, "contrastive loss")
            return {**entry, **scored(create_model(str(out / name / "final")), name)}
        return stage

    def mim_stage() -> dict:
        start = time.perf_counter()
        pretrain(_mim_train_config(qc, out, out / "teacher" / "final", progress))
        entry = _trained_entry(qc.student_model, "random; targets: teacher", out / "mim", qc.mim_steps,
                               qc.batch_size, time.perf_counter() - start, "MIM loss (-cosine)")
        run.say("mim: linear probe of the student's features ...")
        start = time.perf_counter()
        student = create_model(str(out / "mim" / "final"))
        entry["metrics"] = evaluation.linear_probe_shape(student, sets[0], seed=qc.seed, precision=qc.precision)
        return {**entry, "eval_s": time.perf_counter() - start,
                "note": "MIM student: only the linear probe applies (no text tower)"}

    text_init = out / "teacher" / "final" if qc.text_init == "teacher" else None
    evaclip_init = "vision: MIM student; text: " + ("teacher" if text_init else "random")
    run.run([
        Stage("random", "random init", random_init),
        Stage("teacher", "CLIP teacher", clip_stage("teacher", qc.teacher_steps, qc.teacher_lr, "random")),
        Stage("mim", "EVA-02 MIM student", mim_stage),
        Stage("evaclip", "EVA-CLIP (student init)", clip_stage("evaclip", qc.clip_steps, qc.clip_lr, evaclip_init,
                                                               image=out / "mim" / "final", text=text_init)),
        Stage("scratch", "CLIP from scratch", clip_stage("scratch", qc.clip_steps, qc.clip_lr, "random")),
    ])
    run.finish()
    if "budget" in report:
        log(f"[quickstart] took {report['wall_s'] / 60:.1f} min of the {minutes:g} min budget")
    return report
