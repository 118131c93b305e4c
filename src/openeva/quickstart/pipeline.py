"""``run_quickstart``: the EVA bootstrapping chain end to end on the built-in shapes data, on a CPU.

Stages (each a run directory under the output folder, written by the one training engine):

1. ``teacher``: a small EVA-CLIP trained contrastively from scratch (``openeva.train.train``).
2. ``mim``: an EVA-02 student MIM-pretrained against the frozen teacher's patch features
   (``openeva.train.mim_task.pretrain``; EVA-02, Fang et al. 2023).
3. ``evaclip``: an EVA-CLIP whose vision tower starts from the student (EVA-CLIP, Sun et al. 2023): projection
   head, ``text_projection`` and logit scale re-initialised; the text tower from the teacher's (EVA-CLIP takes
   it from a CLIP) or random (``text_init="random"``).
4. ``scratch``: the same CLIP from random weights with the same steps, batch size, data order and optimiser.

Then every model is evaluated on (shape, color) pairs no training image showed (:mod:`.evaluation`), and
``report.json``, plots, ``report.html`` are written (:mod:`.report`). A failing stage stops the chain with a
:class:`QuickstartStageError` naming it, after writing the partial report.
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch

import openeva
from openeva.runtime import cpu_capability, resolve_precision
from openeva.factory import create_model, get_model_spec, get_tokenizer
from openeva.quickstart import evaluation, report as report_mod
from openeva.train.config import DataConfig, LossConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from openeva.train.logging import read_metrics
from openeva.train.mim_task import pretrain
from openeva.train.runner import train

STAGES = ("teacher", "mim", "evaclip", "scratch")
TEXT_INITS = ("teacher", "random")
_REPORT_FILES = ("report.json", "report.html", "plots")


class QuickstartStageError(RuntimeError):
    """A quickstart stage failed; ``stage`` names it, the original error is the ``__cause__``."""

    def __init__(self, stage: str, error: BaseException, out_dir: Path | None = None):
        self.stage = stage
        where = f" (partial report in {out_dir / 'report.html'})" if out_dir is not None else ""
        super().__init__(f"quickstart stage {stage!r} failed: {type(error).__name__}: {error}{where}")


@dataclass(frozen=True)
class QuickstartConfig:
    """Sizes of the quickstart. ``QuickstartConfig.preset("full" | "fast")``, then ``.scaled(f)`` to shrink it.

    The defaults ("full") are tuned to finish in under 10 minutes on 2 CPU cores; "fast" is a smoke version for
    the test suite. EVA-CLIP and scratch always get the same ``clip_steps``, batch size, lr and data order.
    """

    seed: int = 0
    clip_model: str = "EVA02-quickstart"  # CLIP for the teacher, the EVA-CLIP and the scratch baseline
    student_model: str = "eva02_quickstart_patch8_64"  # MIM backbone = the CLIP's vision tower
    train_samples: int = 8192  # synthetic training pairs (train split: held-out pairs never appear)
    batch_size: int = 64
    teacher_steps: int = 450
    mim_steps: int = 250
    clip_steps: int = 200  # EVA-CLIP and scratch alike
    teacher_lr: float = 2e-3
    mim_lr: float = 3e-3
    clip_lr: float = 2e-3
    warmup_fraction: float = 0.1
    precision: str = "auto"  # auto: bf16 only on CPUs with native bf16 (openeva.runtime)
    text_init: str = "teacher"  # EVA-CLIP's text tower: the teacher's ("teacher") or random
    mim_mask_ratio: float = 0.4  # EVA-02: 105 of 256 patches
    mim_min_block: int = 4  # smallest masking block in patches (EVA-02: 16 of 256)
    mim_crop_scale: tuple[float, float] = (0.5, 1.0)
    heldout_samples: int = 1000  # zero-shot, retrieval and probe-test images (held-out pairs)
    probe_train_samples: int = 1000  # linear-probe fitting images (all 30 pairs)
    retrieval_samples: int = 500
    log_every: int = 10

    def __post_init__(self):
        for key in ("train_samples", "batch_size", "teacher_steps", "mim_steps", "clip_steps", "heldout_samples",
                    "probe_train_samples", "retrieval_samples", "log_every", "mim_min_block"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"QuickstartConfig.{key} must be an int >= 1, got {value!r}")
        if self.train_samples < self.batch_size:
            raise ValueError(f"QuickstartConfig.train_samples ({self.train_samples}) must be at least batch_size "
                             f"({self.batch_size})")
        if self.probe_train_samples < 10:
            raise ValueError("QuickstartConfig.probe_train_samples must be >= 10 (the probe holds some out)")
        for key in ("teacher_lr", "mim_lr", "clip_lr"):
            if not getattr(self, key) > 0:
                raise ValueError(f"QuickstartConfig.{key} must be > 0, got {getattr(self, key)!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"QuickstartConfig.warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if not 0 < self.mim_mask_ratio < 1:
            raise ValueError(f"QuickstartConfig.mim_mask_ratio must be in (0, 1), got {self.mim_mask_ratio!r}")
        if self.text_init not in TEXT_INITS:
            raise ValueError(f"QuickstartConfig.text_init must be one of {TEXT_INITS}, got {self.text_init!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"QuickstartConfig.precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"QuickstartConfig.seed must be an int >= 0, got {self.seed!r}")

    @classmethod
    def preset(cls, name: str = "full", **changes) -> "QuickstartConfig":
        """``full``: the real quickstart (< 10 min on 2 cores); ``fast``: a smoke run of well under a minute."""
        if name == "full":
            return cls(**changes)
        if name == "fast":
            small = dict(train_samples=256, batch_size=32, teacher_steps=12, mim_steps=8, clip_steps=8,
                         heldout_samples=120, probe_train_samples=120, retrieval_samples=60, log_every=2)
            return cls(**{**small, **changes})
        raise ValueError(f"unknown quickstart preset {name!r}; expected 'full' or 'fast'")

    def scaled(self, factor: float) -> "QuickstartConfig":
        """Steps and sample counts times ``factor`` (at least 1 step, one batch and 10 probe images)."""
        if not factor > 0:
            raise ValueError(f"scale must be > 0, got {factor!r}")
        if factor == 1:
            return self

        def s(v: int, least: int = 1) -> int:
            return max(least, int(round(v * factor)))

        return dataclasses.replace(
            self, train_samples=s(self.train_samples, self.batch_size), teacher_steps=s(self.teacher_steps),
            mim_steps=s(self.mim_steps), clip_steps=s(self.clip_steps), heldout_samples=s(self.heldout_samples, 10),
            probe_train_samples=s(self.probe_train_samples, 10), retrieval_samples=s(self.retrieval_samples, 2))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------- training configs
def _clip_train_config(qc: QuickstartConfig, out: Path, name: str, steps: int, lr: float,
                       pretrained_image: Path | None = None, pretrained_text: Path | None = None,
                       progress: bool = True):
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


def _mim_train_config(qc: QuickstartConfig, out: Path, teacher_dir: Path, progress: bool = True):
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


# ----------------------------------------------------------------------------------------------- stages
def _loss_curve(run_dir: Path) -> list[list[float]]:
    return [[r["step"], r["loss"]] for r in read_metrics(run_dir / "metrics.jsonl")
            if r.get("split") == "train" and isinstance(r.get("loss"), (int, float))]


def _trained_entry(name: str, title: str, model: str, init: str, run_dir: Path, steps: int, batch_size: int,
                   wall_s: float, loss_name: str) -> dict:
    curve = _loss_curve(run_dir)
    return {"name": name, "title": title, "model": model, "init": init, "run_dir": run_dir.name, "trained": True,
            "steps": steps, "batch_size": batch_size, "wall_s": wall_s, "loss_name": loss_name,
            "final_loss": curve[-1][1] if curve else None, "loss_curve": curve, "metrics": {}, "status": "ok"}


class _Chain:
    """Runs the stages in order, timing each and turning any failure into a QuickstartStageError."""

    def __init__(self, qc: QuickstartConfig, out: Path, log: Callable[[str], None], progress: bool):
        self.qc, self.out, self.log, self.progress = qc, out, log, progress
        self.report = _new_report(qc)
        self.t0 = time.perf_counter()

    def stage(self, name: str, title: str, fn: Callable[[], dict]) -> dict:
        self.log(f"[quickstart] {title} ...")
        start = time.perf_counter()
        try:
            entry = fn()
        except Exception as err:  # every failure is reported under the stage's name
            self.report["stages"].append({"name": name, "title": title, "status": "failed", "trained": False,
                                          "error": f"{type(err).__name__}: {err}", "metrics": {}})
            self.finish()
            raise QuickstartStageError(name, err, self.out) from err
        entry.setdefault("total_s", time.perf_counter() - start)
        self.report["stages"].append(entry)
        self.log(f"[quickstart] {title}: done in {time.perf_counter() - start:.0f} s")
        return entry

    def finish(self) -> dict[str, str]:
        self.report["wall_s"] = time.perf_counter() - self.t0
        return report_mod.write_report(self.report, self.out)


def _new_report(qc: QuickstartConfig) -> dict:
    return {
        "title": "openeva quickstart: the EVA chain on synthetic shapes",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"openeva": openeva.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
        "machine": {"cpu_threads": torch.get_num_threads(), "processor": platform.processor() or platform.machine(),
                    **cpu_capability()},
        "seed": qc.seed, "config": qc.to_dict(), "stages": [], "notes": _notes(qc),
    }


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


def _check_out_dir(out: Path, overwrite: bool) -> None:
    existing = [out / n for n in (*STAGES, *_REPORT_FILES) if (out / n).exists()]
    if not existing:
        return
    if not overwrite:
        raise ValueError(f"{out} already holds a quickstart ({', '.join(p.name for p in existing)}); "
                         "pass overwrite=True (--overwrite) or another output folder")
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_quickstart(out_dir="quickstart_out", config: QuickstartConfig | None = None, *, overwrite: bool = False,
                   progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the chain (teacher -> MIM student -> EVA-CLIP, plus the scratch baseline), evaluate, write the report.

    Returns the report dict (also in ``out_dir/report.json``; ``report["paths"]`` lists the written files).
    Raises :class:`QuickstartStageError` naming the stage that failed (the partial report is written first).
    """
    qc = config or QuickstartConfig()
    precision, reason = resolve_precision(qc.precision, "cpu")
    log(f"[quickstart] precision {qc.precision} -> {precision}: {reason}")
    qc = dataclasses.replace(qc, precision=precision)
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    chain = _Chain(qc, out, log, progress)
    spec = get_model_spec(qc.clip_model)
    student_spec = get_model_spec(qc.student_model)
    if spec.config.vision.img_size != student_spec.config.img_size:
        raise ValueError(f"{qc.student_model} ({student_spec.config.img_size} px) does not match the vision tower "
                         f"of {qc.clip_model} ({spec.config.vision.img_size} px)")
    tokenizer = get_tokenizer(qc.clip_model)
    image_size = spec.config.vision.img_size[0]

    def prepare() -> dict:
        sets = evaluation.prepare_eval_sets(qc.heldout_samples, qc.probe_train_samples, qc.retrieval_samples,
                                            image_size, spec.mean, spec.std, seed=qc.seed)
        chain.sets = sets
        chain.report["eval_counts"] = sets.counts()
        torch.manual_seed(qc.seed)
        model = create_model(qc.clip_model)
        start = time.perf_counter()
        metrics = evaluation.evaluate_clip(model, tokenizer, sets, seed=qc.seed, precision=qc.precision)
        return {"name": "random", "title": "random init", "model": qc.clip_model, "init": "random", "trained": False,
                "metrics": metrics, "eval_s": time.perf_counter() - start, "status": "ok",
                "note": "untrained weights: the chance level of every metric on this data"}

    def clip_stage(name: str, title: str, steps: int, lr: float, init: str, image=None, text=None) -> Callable:
        def run() -> dict:
            cfg = _clip_train_config(qc, out, name, steps, lr, image, text, progress)
            start = time.perf_counter()
            train(cfg)
            wall = time.perf_counter() - start
            entry = _trained_entry(name, title, qc.clip_model, init, out / name, steps, qc.batch_size, wall,
                                   "contrastive loss")
            start = time.perf_counter()
            model = create_model(str(out / name / "final"))
            entry["metrics"] = evaluation.evaluate_clip(model, tokenizer, chain.sets, seed=qc.seed, precision=qc.precision)
            entry["eval_s"] = time.perf_counter() - start
            return entry
        return run

    def mim_stage() -> dict:
        cfg = _mim_train_config(qc, out, out / "teacher" / "final", progress)
        start = time.perf_counter()
        pretrain(cfg)
        wall = time.perf_counter() - start
        entry = _trained_entry("mim", "EVA-02 MIM student", qc.student_model, "random; targets: teacher",
                               out / "mim", qc.mim_steps, qc.batch_size, wall, "MIM loss (-cosine)")
        start = time.perf_counter()
        student = create_model(str(out / "mim" / "final"))
        entry["metrics"] = evaluation.linear_probe_shape(student, chain.sets, seed=qc.seed, precision=qc.precision)
        entry["eval_s"] = time.perf_counter() - start
        entry["note"] = "MIM student: only the linear probe applies (no text tower)"
        return entry

    text_init = out / "teacher" / "final" if qc.text_init == "teacher" else None
    chain.stage("random", "random init", prepare)
    chain.stage("teacher", "CLIP teacher", clip_stage("teacher", "CLIP teacher", qc.teacher_steps, qc.teacher_lr,
                                                      "random"))
    chain.stage("mim", "EVA-02 MIM student", mim_stage)
    evaclip_init = "vision: MIM student; text: " + ("teacher" if text_init else "random")
    chain.stage("evaclip", "EVA-CLIP (student init)", clip_stage(
        "evaclip", "EVA-CLIP (student init)", qc.clip_steps, qc.clip_lr, evaclip_init,
        image=out / "mim" / "final", text=text_init))
    chain.stage("scratch", "CLIP from scratch", clip_stage("scratch", "CLIP from scratch", qc.clip_steps, qc.clip_lr,
                                                           "random"))
    paths = chain.finish()
    chain.report["paths"] = paths
    return chain.report

