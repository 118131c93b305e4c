"""``openeva quickstart --data PATH``: the EVA chain on a user's own labelled images, and whether it helped.

1. The data: a stratified subsample of the user's training images (and of ``--val``, or 20% held out when no
   validation set is given) is written as class folders, with one caption per training image made from its
   class name and a template (the user's template file, or :data:`DEFAULT_TEMPLATES`).
2. ``teacher``: a small CLIP trained contrastively on those captions; its zero-shot accuracy on the validation
   images is reported.
3. ``mim``: an EVA-02 student MIM-pretrained against the frozen teacher (EVA-02, Fang et al. 2023).
4. Frozen features of the student and of the same backbone with random weights: linear probe and kNN.
5. Fine-tunes of the backbone: (a) from the student with the pretrained recipe, its head started from a linear
   probe of the student's features (LP-FT; ``probe_head=False`` starts it fresh), (b) from random weights with
   the from-scratch recipe, a fresh head and the same steps, (c) from random weights with as many steps as fit in the CPU
   time of the whole chain (teacher + MIM + fine-tune a).

The report (:mod:`.user_report`) compares (a) with (b) (equal steps) and (a) with (c) (equal time) and says,
from standard errors paired over the validation images, whether each difference is beyond noise.
"""

from __future__ import annotations

import csv
import dataclasses
import random
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from openeva.data.image_lists import LabelledImages
from openeva.data.labelled import load_classification_dataset
from openeva.data.transforms import PreprocessConfig, image_transform
from openeva.eval.features import encode_images
from openeva.eval.finetune import load_finetune_config, run_finetune
from openeva.eval.finetune_recipe import PRETRAINED_RECIPE, SCRATCH_RECIPE
from openeva.eval.knn import knn_classify
from openeva.eval.linear_probe import evaluate_linear_probe, fit_linear_head
from openeva.eval.zeroshot import build_zeroshot_classifier, classification_metrics, zeroshot_logits
from openeva.factory import create_model, get_model_spec, get_tokenizer, preprocess_cfg
from openeva.runtime import resolve_precision
from openeva.quickstart import budget, user_report
from openeva.quickstart.pipeline import QuickstartStageError
from openeva.train.config import DataConfig, LossConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from openeva.train.mim_task import pretrain
from openeva.train.runner import train

DEFAULT_TEMPLATES = (
    "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.", "a close-up photo of a {}.",
    "a product photo of a {}.", "a low resolution photo of a {}.",
)


@dataclass(frozen=True)
class UserChainConfig:
    """Sizes of the chain on user data. ``preset("full" | "fast")``, then ``scaled(f)`` for more or less."""

    seed: int = 0
    clip_model: str = "EVA02-quickstart"
    student_model: str = "eva02_quickstart_patch8_64"  # = the CLIP's vision tower
    # The measured regime (benchmarks/results/user_chain.md, Fashion-MNIST): pretraining long, the fine-tune short.
    # At 300 / 300 / 300 steps of batch 64 on 6,000 images the teacher reached 77% zero-shot and the student's
    # fine-tune tied the from-scratch one (-0.6 points); at 800 / 800 / 150 of batch 128 on 60,000 it beat it by 5.8.
    train_samples: int = 60000  # training images used (stratified; all when the data has fewer)
    val_samples: int = 5000
    batch_size: int = 128
    teacher_steps: int = 800
    mim_steps: int = 800
    finetune_steps: int = 150
    teacher_lr: float = 2e-3
    mim_lr: float = 3e-3
    max_equal_time_steps: int = 5000  # cap on fine-tune (c)
    # the student's fine-tune starts its head from a probe of its frozen features (LP-FT); the random-weight arms
    # start from a fresh head, their better start (Fashion-MNIST, 400 steps: 84.5% fresh vs 80.2% from a probe)
    probe_head: bool = True
    precision: str = "auto"  # resolved by the CPU at run start (bf16 only where oneDNN has it natively)
    log_every: int = 20

    def __post_init__(self):
        for key in ("train_samples", "val_samples", "batch_size", "teacher_steps", "mim_steps", "finetune_steps",
                    "max_equal_time_steps", "log_every"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"UserChainConfig.{key} must be an int >= 1, got {value!r}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"UserChainConfig.precision must be 'auto', 'fp32' or 'bf16', got {self.precision!r}")

    @classmethod
    def preset(cls, name: str = "full", **changes) -> "UserChainConfig":
        if name == "full":
            return cls(**changes)
        if name == "fast":
            small = dict(clip_model="EVA02-test", student_model="eva02_test_patch8_32", train_samples=64,
                         val_samples=32, batch_size=16, teacher_steps=4, mim_steps=4, finetune_steps=4,
                         max_equal_time_steps=12, log_every=2)  # test models: a smoke run, numbers meaningless
            return cls(**{**small, **changes})
        raise ValueError(f"unknown preset {name!r}; expected 'full' or 'fast'")

    def scaled(self, factor: float) -> "UserChainConfig":
        """Steps and sample counts times ``factor``."""
        if not factor > 0:
            raise ValueError(f"scale must be > 0, got {factor!r}")

        def s(v: int, least: int) -> int:
            return max(least, int(round(v * factor)))

        return dataclasses.replace(self.steps_scaled(factor), train_samples=s(self.train_samples, self.batch_size),
                                   val_samples=s(self.val_samples, 10))

    def steps_scaled(self, factor: float) -> "UserChainConfig":
        """Every stage's steps times ``factor`` (at least 1), the sample counts as they are (``--minutes``: the
        data is prepared before the CPU is timed)."""
        if not factor > 0:
            raise ValueError(f"step factor must be > 0, got {factor!r}")

        def s(v: int) -> int:
            return max(1, int(round(v * factor)))

        return dataclasses.replace(self, teacher_steps=s(self.teacher_steps), mim_steps=s(self.mim_steps),
                                   finetune_steps=s(self.finetune_steps))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# -------------------------------------------------------------------------------------------------- data
def load_templates_file(path) -> list[str]:
    """Templates, one a line, each with ``{}`` or ``{c}`` where the class name goes."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"templates file not found: {p}")
    lines = [line.strip() for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    bad = [t for t in lines if "{}" not in t and "{c}" not in t]
    if not lines or bad:
        raise ValueError(f"templates file {p}: every line needs '{{}}' or '{{c}}' for the class name"
                         + (f" (not: {bad[0]!r})" if bad else " (the file is empty)"))
    return [t.replace("{c}", "{}") for t in lines]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def _stratified(labels: list[int], n: int, seed: int) -> list[int]:
    """At most ``n`` positions, the same fraction of each class, in a seeded order."""
    if n >= len(labels):
        return list(range(len(labels)))
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    picked = []
    for y, pos in sorted(by_class.items()):
        rng.shuffle(pos)
        picked += pos[:max(1, round(n * len(pos) / len(labels)))]
    return sorted(picked[:n] if len(picked) > n else picked)


@dataclass
class PreparedData:
    train_dir: Path
    val_dir: Path
    captions_csv: Path
    classnames: list[str]  # human class names (captions, zero-shot)
    num_train: int
    num_val: int
    skipped: int


def prepare_user_data(data, val, out: Path, cfg: UserChainConfig, templates=DEFAULT_TEMPLATES,
                      classnames=None) -> PreparedData:
    """Write the training / validation subsample as class folders plus a caption index; see module doc."""
    train_src = load_classification_dataset(data, classnames=classnames, split="train")
    names = list(train_src.classnames)
    if len(set(train_src.labels)) < 2:
        raise ValueError(f"{data}: the chain needs at least 2 classes with images, found {len(set(train_src.labels))}")
    if val is not None:
        val_src = load_classification_dataset(val, classnames=classnames, split="test")
        if list(val_src.classnames) != names:
            raise ValueError(f"--val {val} has classes {val_src.classnames[:5]}... but --data has {names[:5]}...")
        train_pos = _stratified(train_src.labels, cfg.train_samples, cfg.seed)
        val_pos = _stratified(val_src.labels, cfg.val_samples, cfg.seed + 1)
    else:
        val_src = train_src
        held = set(_stratified(train_src.labels, max(len(names), len(train_src.labels) // 5), cfg.seed + 1))
        val_pos = _stratified([train_src.labels[i] for i in sorted(held)], cfg.val_samples, cfg.seed + 2)
        val_pos = [sorted(held)[i] for i in val_pos]
        rest = [i for i in range(len(train_src.labels)) if i not in held]
        train_pos = [rest[i] for i in _stratified([train_src.labels[i] for i in rest], cfg.train_samples, cfg.seed)]
    folders = [f"{k:03d}_{_slug(n)}" for k, n in enumerate(names)]  # index prefix keeps the class order
    skipped = 0

    def write(src, positions, root: Path) -> list[tuple[Path, int]]:
        nonlocal skipped
        written = []
        for f in folders:
            (root / f).mkdir(parents=True, exist_ok=True)
        for j, i in enumerate(positions):
            try:
                img = src.images.load(i)
            except Exception:  # a corrupt image is skipped and counted, never the end of the run
                skipped += 1
                continue
            y = src.labels[i]
            path = root / folders[y] / f"{j:06d}.png"
            img.save(path)
            written.append((path, y))
        return written

    train_files = write(train_src, train_pos, out / "data" / "train")
    val_files = write(val_src, val_pos, out / "data" / "val")
    if not train_files or not val_files:
        raise ValueError(f"no image of {data} could be read ({skipped} failed)")
    captions = out / "data" / "train_captions.csv"
    write_captions(train_files, names, list(templates), captions, cfg.seed)
    return PreparedData(out / "data" / "train", out / "data" / "val", captions, names, len(train_files),
                        len(val_files), skipped)


def write_captions(files: list[tuple[Path, int]], names: list[str], templates: list[str], path: Path, seed: int) -> None:
    """One caption per image: a seeded choice of template, filled with the image's class name."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        for p, y in files:
            w.writerow([str(p.resolve()), rng.choice(templates).format(names[y])])


# ---------------------------------------------------------------------------------------------- configs
def _teacher_config(cfg: UserChainConfig, out: Path, captions: Path, progress: bool):

    return TrainConfig(
        task="clip", output_dir=str(out), name="teacher", seed=cfg.seed, precision=cfg.precision, device="cpu",
        save_every=cfg.teacher_steps, keep_last=1, log_every=cfg.log_every, eval_every=0, progress=progress,
        tensorboard=False, plot=True, model=ModelConfig(name=cfg.clip_model),
        data=DataConfig(train=str(captions), batch_size=cfg.batch_size, scale=(0.8, 1.0), val=None, zeroshot=None),
        optim=OptimConfig(optimizer="adamw", lr=cfg.teacher_lr, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6,
                          grad_clip=5.0),
        schedule=ScheduleConfig(scheduler="cosine", warmup_steps=cfg.teacher_steps // 10,
                                total_steps=cfg.teacher_steps),
        loss=LossConfig(kind="clip"),
    )


def _mim_config(cfg: UserChainConfig, out: Path, images: Path, teacher: Path, progress: bool):

    grid = get_model_spec(cfg.student_model).config.grid_size
    num_masked = max(1, round(0.4 * grid[0] * grid[1]))
    return TrainConfig(
        task="mim", output_dir=str(out), name="mim", seed=cfg.seed, precision=cfg.precision, device="cpu",
        save_every=cfg.mim_steps, keep_last=1, log_every=cfg.log_every, eval_every=0, progress=progress,
        tensorboard=False, plot=True, model=ModelConfig(name=cfg.student_model, drop_path_rate=0.0),
        data=DataConfig(train=str(images), batch_size=cfg.batch_size, scale=(0.5, 1.0), val=None, zeroshot=None),
        optim=OptimConfig(optimizer="adamw", lr=cfg.mim_lr, weight_decay=0.05, betas=(0.9, 0.98), eps=1e-6,
                          grad_clip=3.0),
        schedule=ScheduleConfig(scheduler="cosine", warmup_steps=cfg.mim_steps // 10, total_steps=cfg.mim_steps,
                                min_lr_ratio=0.01),
        task_options=dict(teacher=str(teacher), teacher_precision=cfg.precision, target="clip",
                          num_masking_patches=num_masked, min_num_patches=min(4, num_masked), min_aspect=0.3,
                          hflip=0.5, patch_embed_grad_scale=0.1),
    )


def finetune_recipe(name: str, steps: int, cfg: UserChainConfig, overrides=()):
    """A shipped fine-tune recipe set to ``steps`` optimizer steps at the chain's batch size, in fp32."""

    rc = load_finetune_config(name, list(overrides))
    return rc.replace(precision=cfg.precision, log_every=cfg.log_every,
                      data=dataclasses.replace(rc.data, batch_size=cfg.batch_size, train_num_samples=None),
                      schedule=ScheduleConfig(scheduler=rc.schedule.scheduler, warmup_steps=0, total_steps=steps,
                                              min_lr_ratio=rc.schedule.min_lr_ratio))


# ----------------------------------------------------------------------------------------------- stages
_OUTPUTS = ("data", "teacher", "mim", "finetune", "calibration", "plots", "report.json", "report.html")


def _clear_out_dir(out: Path, overwrite: bool) -> None:

    existing = [out / n for n in _OUTPUTS if (out / n).exists()]
    if existing and not overwrite:
        raise ValueError(f"{out} already holds a quickstart ({', '.join(p.name for p in existing)}); pass "
                         "--overwrite or another --out folder")
    for p in existing:
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def _features(model, folder: Path, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen (N, D) features of a class folder, with the model's evaluation transform, and (N,) labels."""

    data = load_classification_dataset(folder)
    tf = image_transform(PreprocessConfig.from_dict(preprocess_cfg(model)), is_train=False)
    enc = encode_images(model.eval(), LabelledImages(data.images, tf), batch_size=256, precision=precision,
                        progress=False)
    return enc.features, torch.tensor(data.labels)[enc.indices]


def frozen_probes(model, prepared: PreparedData, precision: str, seed: int) -> dict[str, float]:
    """Linear probe and kNN (k = 10, 20) of frozen features, fitted on the training images, scored on val."""

    train_x, train_y = _features(model, prepared.train_dir, precision)
    val_x, val_y = _features(model, prepared.val_dir, precision)
    c = len(prepared.classnames)
    probe = evaluate_linear_probe(train_x, train_y, val_x, val_y, c, seed=seed)
    knn, _ = knn_classify(train_x, train_y, val_x, val_y, c, ks=(10, 20))
    return {"linear_probe_acc1": probe.metrics["acc1"], "knn10_acc1": knn["knn10_acc1"],
            "knn20_acc1": knn["knn20_acc1"], "probe_weight_decay": probe.weight_decay,
            "linear_probe_val_correct": user_report.correctness(probe.scores, val_y)}


def teacher_zeroshot(teacher_dir: Path, prepared: PreparedData, templates, cfg: UserChainConfig) -> dict[str, float]:

    model = create_model(str(teacher_dir)).eval()
    weights = build_zeroshot_classifier(model, get_tokenizer(cfg.clip_model), prepared.classnames, list(templates),
                                        precision=cfg.precision)  # (E, C)
    feats, labels = _features(model, prepared.val_dir, cfg.precision)
    m = classification_metrics(zeroshot_logits(feats, weights), labels, len(prepared.classnames))
    return {"zeroshot_acc1": m["acc1"], "zeroshot_acc5": m["acc5"]}


def head_from_probe(model_name: str, prepared: PreparedData, cfg: UserChainConfig):
    """The backbone with its classification head set to a linear probe of its own frozen features.

    Linear probing then fine-tuning (LP-FT, Kumar et al. 2022): a random head's first gradients distort the
    pretrained features before the head is any good; starting from the probe, fine-tuning starts where the
    frozen probe ends. The probe is the reported one's search and fit (:func:`fit_linear_head`: standardised
    features, weight decay chosen on held-out images), folded into a head on the pooled, ``fc_norm``-ed
    features the head receives.
    """

    torch.manual_seed(cfg.seed)
    backbone = create_model(model_name)
    x, y = _features(backbone, prepared.train_dir, cfg.precision)  # (N, D) head inputs, (N,)
    c = len(prepared.classnames)
    w, b, _ = fit_linear_head(x, y, c, seed=cfg.seed)  # (C, D), (C,)
    backbone.reset_classifier(c)
    with torch.no_grad():
        backbone.head.weight.copy_(w)
        backbone.head.bias.copy_(b)
    return backbone


def run_finetune_arm(model: str, recipe: str, steps: int, prepared: PreparedData, out: Path, cfg: UserChainConfig,
                     progress: bool, probe_head: bool = False) -> dict:
    """One fine-tune (a, b or c): ``steps`` steps of ``recipe`` from ``model``, scored on the validation images.

    ``probe_head``: start the head from a linear probe of the initial features (:func:`head_from_probe`).
    """

    train = load_classification_dataset(prepared.train_dir)
    val = load_classification_dataset(prepared.val_dir)
    rc = finetune_recipe(recipe, steps, cfg)
    start = time.perf_counter()
    if probe_head:
        model = head_from_probe(model, prepared, cfg)
    torch.manual_seed(cfg.seed)
    metrics, scores, labels, extra = run_finetune(model, train, val, cfg=rc, seed=cfg.seed, output_dir=out,
                                                  progress=progress, warmup_fraction=0.1, precision=cfg.precision)
    wall = time.perf_counter() - start
    return {"acc1": metrics["acc1"], "acc5": metrics.get("acc5"), "steps": extra["steps"], "recipe": recipe,
            "wall_s": wall, "probe_head": probe_head, "run_dir": extra["run_dir"], "recipe_values": extra["recipe"],
            "val_correct": user_report.correctness(scores, labels)}  # per image, for the paired noise


# Two timed fine-tunes: their difference is the per-step cost (see .budget). A first untimed 1-step run pays the
# process's one-time warm-up (oneDNN primitives, allocator), which otherwise lands in whichever run is first:
# without it two runs on the same machine measured 0.30 and 0.16 s a step.
CALIBRATION_STEPS = (2, 12)


def _fit_budget(cfg: UserChainConfig, minutes: float, prepared: PreparedData, out: Path, report: dict,
                elapsed_s: float, log: Callable[[str], None]) -> UserChainConfig:
    """``cfg`` with its steps scaled so that the rest of the run fills ``minutes`` (after ``elapsed_s``)."""
    start = time.perf_counter()
    run_finetune_arm(cfg.student_model, SCRATCH_RECIPE, 1, prepared, out / "calibration", cfg, progress=False)
    walls = [run_finetune_arm(cfg.student_model, SCRATCH_RECIPE, n, prepared, out / "calibration", cfg,
                              progress=False)["wall_s"] for n in CALIBRATION_STEPS]
    cost = budget.StepCost.from_runs(CALIBRATION_STEPS[0], walls[0], CALIBRATION_STEPS[1], walls[1])
    left = 60.0 * minutes - elapsed_s - (time.perf_counter() - start)
    factor, finetune_steps = budget.plan_steps(cfg.teacher_steps, cfg.mim_steps, cfg.finetune_steps, cfg.batch_size,
                                               prepared.num_train + prepared.num_val, prepared.num_train, cost,
                                               left, minutes)
    fitted = dataclasses.replace(cfg.steps_scaled(factor), finetune_steps=finetune_steps)
    report["config"] = fitted.to_dict()
    report["budget"] = {"minutes": minutes, "step_s": cost.step_s, "stage_s": cost.stage_s,
                        "calibration_s": [round(w, 3) for w in walls], "step_factor": factor}
    log(f"[quickstart --data] {minutes:g} min budget ({cost.step_s:.3f} s a fine-tune step, {cost.stage_s:.1f} s "
        f"a stage on this CPU): teacher {fitted.teacher_steps}, MIM {fitted.mim_steps}, fine-tune "
        f"{fitted.finetune_steps} steps")
    return fitted


def run_user_quickstart(data, out_dir, config: UserChainConfig | None = None, *, val=None, templates=None,
                        classnames=None, minutes: float | None = None, overwrite: bool = False,
                        progress: bool = True,
                        log: Callable[[str], None] = print) -> dict:
    """Run the chain on the user's images and write ``report.json`` / ``report.html`` / plots; returns the report.

    ``minutes``: scale the steps so that the whole run takes about that long on this CPU (a time model fitted
    from two short timed fine-tunes, :mod:`.budget`), else ``config``'s steps as given.
    """
    if minutes is not None and not minutes > 0:  # before any work, so a typo costs nothing
        raise ValueError(f"--minutes must be > 0, got {minutes!r}")

    cfg = config or UserChainConfig()
    precision, reason = resolve_precision(cfg.precision, "cpu")
    log(f"[quickstart --data] precision {cfg.precision} -> {precision}: {reason}")
    cfg = dataclasses.replace(cfg, precision=precision)
    out = Path(out_dir)
    template_list = load_templates_file(templates) if templates else list(DEFAULT_TEMPLATES)
    for path, flag in ((data, "--data"), (val, "--val")):
        if path is not None and not Path(path).exists():
            raise FileNotFoundError(f"{flag} {path} does not exist")
    _clear_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = user_report.new_report(cfg, str(data), None if val is None else str(val), template_list)

    def stage(name: str, fn: Callable[[], dict]) -> dict:
        log(f"[quickstart --data] {name} ...")
        start = time.perf_counter()
        try:
            entry = fn()
        except Exception as err:  # named after its stage, with the partial report written first
            report["stages"][name] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
            user_report.write_report(report, out)
            raise QuickstartStageError(name, err, out) from err
        entry.setdefault("total_s", time.perf_counter() - start)
        report["stages"][name] = entry
        log(f"[quickstart --data] {name}: done in {entry['total_s']:.0f} s")
        user_report.write_report(report, out)  # a partial report survives a later failure
        return entry

    prepared = prepare_user_data(data, val, out, cfg, template_list, classnames)
    report["data_counts"] = {"train": prepared.num_train, "val": prepared.num_val, "skipped": prepared.skipped,
                             "classes": len(prepared.classnames)}
    if minutes is not None:
        cfg = _fit_budget(cfg, minutes, prepared, out, report, time.perf_counter() - t0, log)

    def teacher() -> dict:
        start = time.perf_counter()
        train(_teacher_config(cfg, out, prepared.captions_csv, progress))
        wall = time.perf_counter() - start
        return {"train_s": wall, "steps": cfg.teacher_steps,
                "metrics": teacher_zeroshot(out / "teacher" / "final", prepared, template_list, cfg)}

    def mim() -> dict:
        start = time.perf_counter()
        pretrain(_mim_config(cfg, out, prepared.train_dir, out / "teacher" / "final", progress))
        return {"train_s": time.perf_counter() - start, "steps": cfg.mim_steps}

    def probes() -> dict:
        student = create_model(str(out / "mim" / "final"))
        torch.manual_seed(cfg.seed)
        random_backbone = create_model(cfg.student_model)
        return {"student": frozen_probes(student, prepared, cfg.precision, cfg.seed),
                "random": frozen_probes(random_backbone, prepared, cfg.precision, cfg.seed)}

    stage("teacher", teacher)
    stage("mim", mim)
    stage("probes", probes)
    ft = out / "finetune"
    stage("finetune_student", lambda: run_finetune_arm(str(out / "mim" / "final"), PRETRAINED_RECIPE,
                                                       cfg.finetune_steps, prepared, ft, cfg, progress,
                                                       cfg.probe_head))
    stage("finetune_random_equal_steps", lambda: run_finetune_arm(cfg.student_model, SCRATCH_RECIPE,
                                                                  cfg.finetune_steps, prepared, ft, cfg, progress))
    chain_s = sum(report["stages"][k]["total_s"] for k in ("teacher", "mim", "finetune_student"))
    per_step = report["stages"]["finetune_random_equal_steps"]["wall_s"] / cfg.finetune_steps
    equal_time_steps = max(1, min(cfg.max_equal_time_steps, int(chain_s / per_step)))
    report["equal_time"] = {"chain_s": chain_s, "scratch_s_per_step": per_step, "steps": equal_time_steps,
                            "capped": equal_time_steps == cfg.max_equal_time_steps}
    stage("finetune_random_equal_time", lambda: run_finetune_arm(cfg.student_model, SCRATCH_RECIPE,
                                                                 equal_time_steps, prepared, ft, cfg, progress))
    report["wall_s"] = time.perf_counter() - t0
    if "budget" in report:
        report["budget"]["actual_s"] = report["wall_s"]
        log(f"[quickstart --data] took {report['wall_s'] / 60:.1f} min of the {minutes:g} min budget")
    report["verdict"] = user_report.verdict(report)
    report["paths"] = user_report.write_report(report, out)
    log(report["verdict"]["sentence"])
    return report
