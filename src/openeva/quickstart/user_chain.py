"""``openeva quickstart --data PATH``: the EVA chain on a user's own labelled images, and whether it helped.

1. The data (:func:`prepare_user_data`, through :mod:`openeva.data`: its readers, stratified split, template
   loader and skip rule): a stratified subsample of the user's training images (and of ``--val``, or 20% held out
   when no validation set is given) is written as class folders, with one caption per training image made from
   its class name and a template (the user's templates, or :data:`DEFAULT_TEMPLATES`).
2. ``teacher``: a small CLIP trained contrastively on those captions; its zero-shot accuracy on the validation
   images is reported.
3. ``mim``: an EVA-02 student MIM-pretrained against the frozen teacher (EVA-02, Fang et al. 2023).
4. ``probes``: frozen features of the student and of the same backbone with random weights: linear probe and kNN.
5. Fine-tunes of the backbone: (a) from the student with the pretrained recipe, its head started from a linear
   probe of the student's features (LP-FT; ``probe_head=False`` starts it fresh), (b) from random weights with
   the from-scratch recipe, a fresh head and the same steps, (c) from random weights with as many steps as fit in
   the CPU time of the whole chain (teacher + MIM + fine-tune a).

The stages run on the one stage runner (:mod:`.stages`); the report (:mod:`.user_view`) compares (a) with (b)
(equal steps) and (a) with (c) (equal time) and says whether each difference is beyond noise.
"""

from __future__ import annotations

import csv
import dataclasses
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import ClassVar

import torch
from tqdm.auto import tqdm

from openeva.data.classnames import fill_template, load_templates
from openeva.data.image_lists import LabelledImages
from openeva.data.images import prepare_sample
from openeva.data.labelled import load_classification_dataset
from openeva.data.sources import source_exists
from openeva.data.split import stratified_holdout, stratified_subset
from openeva.data.transforms import PreprocessConfig, image_transform
from openeva.eval.features import encode_images
from openeva.eval.finetune import load_finetune_config, run_finetune
from openeva.eval.finetune_recipe import PRETRAINED_RECIPE, SCRATCH_RECIPE
from openeva.eval.knn import knn_classify
from openeva.eval.linear_probe import LinearProbeOptions, evaluate_linear_probe, fit_linear_head
from openeva.eval.zeroshot import build_zeroshot_classifier, classification_metrics, zeroshot_logits
from openeva.factory import create_model, get_tokenizer, preprocess_cfg
from openeva.models.registry import get_model_spec
from openeva.quickstart import budget
from openeva.quickstart.config import ChainConfig
from openeva.quickstart.noise import correctness
from openeva.quickstart.report import new_report
from openeva.quickstart.stages import ChainRun, Stage, open_out_dir
from openeva.quickstart.user_view import VIEW
from openeva.runtime import describe_precision, resolve_precision
from openeva.train.config import DataConfig, LossConfig, ModelConfig, OptimConfig, ScheduleConfig, TrainConfig
from openeva.train.mim_task import pretrain
from openeva.train.runner import train

DEFAULT_TEMPLATES = (
    "a photo of a {}.", "a picture of a {}.", "an image of a {}.", "a photo of the {}.", "a close-up photo of a {}.",
    "a product photo of a {}.", "a low resolution photo of a {}.",
)
OUTPUTS = ("data", "teacher", "mim", "finetune", "calibration", "plots", "report.json", "report.html")


@dataclass(frozen=True)
class UserChainConfig(ChainConfig):
    """Sizes of the chain on user data. ``preset("full" | "fast")``, then ``scaled(f)`` for more or less."""

    # The measured regime (benchmarks/results/user_chain.md, Fashion-MNIST): pretraining long, the fine-tune short.
    # At 300 / 300 / 300 steps of batch 64 on 6,000 images the teacher reached 77% zero-shot and the student's
    # fine-tune tied the from-scratch one (-0.6 points); at 800 / 800 / 150 of batch 128 on 60,000 it beat it by 5.8.
    train_samples: int = 60000  # training images used (stratified; all when the data has fewer)
    val_samples: int = 5000
    batch_size: int = 128
    teacher_steps: int = 800
    mim_steps: int = 800
    finetune_steps: int = 150
    max_equal_time_steps: int = 5000  # cap on fine-tune (c)
    # the student's fine-tune starts its head from a probe of its frozen features (LP-FT); the random-weight arms
    # start from a fresh head, their better start (Fashion-MNIST, 400 steps: 84.5% fresh vs 80.2% from a probe)
    probe_head: bool = True
    log_every: int = 20

    STEP_FIELDS: ClassVar[tuple[str, ...]] = ("teacher_steps", "mim_steps", "finetune_steps")
    COUNT_FLOORS: ClassVar[dict] = {"train_samples": "batch_size", "val_samples": 10}
    POSITIVE_INTS: ClassVar[tuple[str, ...]] = (*ChainConfig.POSITIVE_INTS, "val_samples", "finetune_steps",
                                                "max_equal_time_steps")
    PRESETS: ClassVar[dict] = {
        "full": {},
        # test models: a smoke run, numbers meaningless
        "fast": dict(clip_model="EVA02-test", student_model="eva02_test_patch8_32", train_samples=64,
                     val_samples=32, batch_size=16, teacher_steps=4, mim_steps=4, finetune_steps=4,
                     max_equal_time_steps=12, log_every=2),
    }


# -------------------------------------------------------------------------------------------------- data
@dataclass
class PreparedData:
    train_dir: Path
    val_dir: Path
    captions_csv: Path
    classnames: list[str]  # human class names (captions, zero-shot)
    num_train: int
    num_val: int
    skipped: int


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_") or "class"


def prepare_user_data(data, val, out: Path, cfg: UserChainConfig, templates=DEFAULT_TEMPLATES, classnames=None,
                      progress: bool = False) -> PreparedData:
    """Write the training / validation subsample as class folders plus a caption index; see the module doc.

    An image that cannot be read is skipped and counted by the data layer's rule (:func:`prepare_sample`).
    """
    train_src = load_classification_dataset(data, classnames=classnames, split="train")
    names = list(train_src.classnames)
    if len(set(train_src.labels)) < 2:
        raise ValueError(f"{data}: the chain needs at least 2 classes with images, found {len(set(train_src.labels))}")
    if val is not None:
        val_src = load_classification_dataset(val, classnames=classnames, split="test")
        if list(val_src.classnames) != names:
            raise ValueError(f"--val {val} has classes {val_src.classnames[:5]}... but --data has {names[:5]}...")
        train_pos = stratified_subset(train_src.labels, cfg.train_samples, cfg.seed)
        val_pos = stratified_subset(val_src.labels, cfg.val_samples, cfg.seed + 1)
    else:  # hold out 20% (at least one image a class), then subsample both sides
        val_src, labels = train_src, train_src.labels
        rest, held = stratified_holdout(labels, max(len(names), len(labels) // 5), cfg.seed + 1)
        val_pos = [held[i] for i in stratified_subset([labels[i] for i in held], cfg.val_samples, cfg.seed + 2)]
        train_pos = [rest[i] for i in stratified_subset([labels[i] for i in rest], cfg.train_samples, cfg.seed)]
    folders = [f"{k:03d}_{_slug(n)}" for k, n in enumerate(names)]  # index prefix keeps the class order
    skipped: Counter = Counter()

    def write(src, positions, root: Path, what: str) -> list[tuple[Path, int]]:
        for f in folders:
            (root / f).mkdir(parents=True, exist_ok=True)
        written = []
        for j, i in enumerate(tqdm(positions, desc=f"writing {what} images", unit="img", disable=not progress)):
            img = prepare_sample(partial(src.images.load, i), None, skipped, src.images.ids[i])
            if img is not None:
                path = root / folders[src.labels[i]] / f"{j:06d}.png"
                img.save(path)
                written.append((path, src.labels[i]))
        return written

    train_files = write(train_src, train_pos, out / "data" / "train", "training")
    val_files = write(val_src, val_pos, out / "data" / "val", "validation")
    if not train_files or not val_files:
        raise ValueError(f"no image of {data} could be read ({sum(skipped.values())} failed: {dict(skipped)})")
    captions = out / "data" / "train_captions.csv"
    write_captions(train_files, names, list(templates), captions, cfg.seed)
    return PreparedData(out / "data" / "train", out / "data" / "val", captions, names, len(train_files),
                        len(val_files), sum(skipped.values()))


def write_captions(files: list[tuple[Path, int]], names: list[str], templates: list[str], path: Path,
                   seed: int) -> None:
    """One caption per image: a seeded choice of template, filled with the image's class name."""
    rng = random.Random(seed)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        for p, y in files:
            w.writerow([str(p.resolve()), fill_template(rng.choice(templates), names[y])])


# ---------------------------------------------------------------------------------------------- configs
def _teacher_config(cfg: UserChainConfig, out: Path, captions: Path, progress: bool) -> TrainConfig:
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


def _mim_config(cfg: UserChainConfig, out: Path, images: Path, teacher: Path, progress: bool) -> TrainConfig:
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
    """A shipped fine-tune recipe set to ``steps`` optimizer steps at the chain's batch size and precision."""
    rc = load_finetune_config(name, list(overrides))
    return rc.replace(precision=cfg.precision, log_every=cfg.log_every,
                      data=dataclasses.replace(rc.data, batch_size=cfg.batch_size, train_num_samples=None),
                      schedule=ScheduleConfig(scheduler=rc.schedule.scheduler, warmup_steps=0, total_steps=steps,
                                              min_lr_ratio=rc.schedule.min_lr_ratio))


# ---------------------------------------------------------------------------------------- measurements
def _features(model, folder: Path, precision: str, progress: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen (N, D) features of a class folder, with the model's evaluation transform, and (N,) labels."""
    data = load_classification_dataset(folder)
    tf = image_transform(PreprocessConfig.from_dict(preprocess_cfg(model)), is_train=False)
    enc = encode_images(model.eval(), LabelledImages(data.images, tf), batch_size=256, precision=precision,
                        progress=progress, desc=f"encoding {folder.name} images")
    return enc.features, torch.tensor(data.labels)[enc.indices]


def frozen_probes(model, prepared: PreparedData, precision: str, seed: int, progress: bool = False,
                  say: Callable[[str], None] = lambda message: None) -> dict[str, float]:
    """Linear probe and kNN (k = 10, 20) of frozen features, fitted on the training images, scored on val."""
    train_x, train_y = _features(model, prepared.train_dir, precision, progress)  # (N, D), (N,)
    val_x, val_y = _features(model, prepared.val_dir, precision, progress)
    c = len(prepared.classnames)
    say(f"fitting a linear probe on {len(train_y)} x {train_x.shape[1]} features (weight decay search) ...")
    probe = evaluate_linear_probe(train_x, train_y, val_x, val_y, c, LinearProbeOptions(seed=seed))
    knn, _ = knn_classify(train_x, train_y, val_x, val_y, c, ks=(10, 20))
    return {"linear_probe_acc1": probe.metrics["acc1"], "knn10_acc1": knn["knn10_acc1"],
            "knn20_acc1": knn["knn20_acc1"], "probe_weight_decay": probe.weight_decay,
            "linear_probe_val_correct": correctness(probe.scores, val_y)}


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
    train_data = load_classification_dataset(prepared.train_dir)
    val = load_classification_dataset(prepared.val_dir)
    rc = finetune_recipe(recipe, steps, cfg)
    start = time.perf_counter()
    if probe_head:
        model = head_from_probe(model, prepared, cfg)
    torch.manual_seed(cfg.seed)
    metrics, scores, labels, extra = run_finetune(model, train_data, val, cfg=rc, seed=cfg.seed, output_dir=out,
                                                  progress=progress, warmup_fraction=0.1, precision=cfg.precision)
    return {"acc1": metrics["acc1"], "acc5": metrics.get("acc5"), "steps": extra["steps"], "recipe": recipe,
            "wall_s": time.perf_counter() - start, "probe_head": probe_head, "run_dir": extra["run_dir"],
            "recipe_values": extra["recipe"],
            "val_correct": correctness(scores, labels)}  # per image, for the paired noise


def _fit_budget(cfg: UserChainConfig, minutes: float, prepared: PreparedData, run: ChainRun) -> UserChainConfig:
    """``cfg`` with its steps scaled so that the rest of the run fills ``minutes``, timed on two short fine-tunes."""
    run.say(f"timing fine-tune steps on this CPU for the {minutes:g} min budget ...")
    cost, walls = budget.calibrate(lambda steps: run_finetune_arm(
        cfg.student_model, SCRATCH_RECIPE, steps, prepared, run.out / "calibration", cfg, progress=False))
    left = 60.0 * minutes - (time.perf_counter() - run.t0)
    factor, finetune_steps = budget.plan_steps(cfg.teacher_steps, cfg.mim_steps, cfg.finetune_steps, cfg.batch_size,
                                               prepared.num_train + prepared.num_val, prepared.num_train, cost,
                                               left, minutes)
    fitted = dataclasses.replace(cfg.steps_scaled(factor), finetune_steps=finetune_steps)
    run.report["config"] = fitted.to_dict()
    run.report["budget"] = budget.budget_record(minutes, cost, walls, factor)
    run.say(f"{minutes:g} min budget ({cost.step_s:.3f} s a fine-tune step, {cost.stage_s:.1f} s a stage on this "
            f"CPU): teacher {fitted.teacher_steps}, MIM {fitted.mim_steps}, fine-tune {fitted.finetune_steps} steps")
    return fitted


def run_user_quickstart(data, out_dir, config: UserChainConfig | None = None, *, val=None, templates=None,
                        classnames=None, minutes: float | None = None, overwrite: bool = False,
                        progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Run the chain on the user's images and write ``report.json`` / ``report.html`` / plots; returns the report.

    ``templates``: a file (one a line, ``{}`` or ``{c}`` for the class name), a builtin set (``imagenet1k_short``)
    or a list (:func:`openeva.data.classnames.load_templates`). ``minutes``: scale the steps so that the whole run
    takes about that long on this CPU (a time model fitted from two short timed fine-tunes, :mod:`.budget`), else
    ``config``'s steps as given.
    """
    budget.check_minutes(minutes)
    cfg = config or UserChainConfig()
    # one placeholder spelling in the report; captions are filled by the data layer's fill_template
    template_list = list(DEFAULT_TEMPLATES) if templates is None else [t.replace("{c}", "{}")
                                                                       for t in load_templates(templates)]
    for path, flag in ((data, "--data"), (val, "--val")):
        if path is not None and not source_exists(path):  # a path or a URL (tar shards in a store)
            raise FileNotFoundError(f"{flag} {path} does not exist")
    out = Path(out_dir)
    open_out_dir(out, OUTPUTS, overwrite)
    log(f"[quickstart --data] {describe_precision(cfg.precision, 'cpu')}")
    cfg = dataclasses.replace(cfg, precision=resolve_precision(cfg.precision, "cpu")[0])
    report = new_report("data", "openeva quickstart --data: the EVA chain on your images", cfg.to_dict(), {},
                        data=str(data), val=None if val is None else str(val), templates=template_list)
    run = ChainRun(out, report, VIEW, log, "[quickstart --data]")
    run.say(f"preparing the data from {data} ...")
    prepared = prepare_user_data(data, val, out, cfg, template_list, classnames, progress)
    report["data_counts"] = {"train": prepared.num_train, "val": prepared.num_val, "skipped": prepared.skipped,
                             "classes": len(prepared.classnames)}
    if minutes is not None:
        cfg = _fit_budget(cfg, minutes, prepared, run)
    ft = out / "finetune"

    def teacher() -> dict:
        start = time.perf_counter()
        train(_teacher_config(cfg, out, prepared.captions_csv, progress))
        wall = time.perf_counter() - start
        run.say("teacher: zero-shot on the validation images ...")
        return {"train_s": wall, "steps": cfg.teacher_steps,
                "metrics": teacher_zeroshot(out / "teacher" / "final", prepared, template_list, cfg)}

    def mim() -> dict:
        start = time.perf_counter()
        pretrain(_mim_config(cfg, out, prepared.train_dir, out / "teacher" / "final", progress))
        return {"train_s": time.perf_counter() - start, "steps": cfg.mim_steps}

    def probes() -> dict:
        results = {}
        for who, model in (("student", str(out / "mim" / "final")), ("random", cfg.student_model)):
            run.say(f"probes: frozen {who} features ...")
            torch.manual_seed(cfg.seed)
            results[who] = frozen_probes(create_model(model), prepared, cfg.precision, cfg.seed, progress,
                                         lambda message, who=who: run.say(f"probes ({who}): {message}"))
        return results

    def equal_time() -> dict:
        """(c): as many scratch steps as the chain's CPU time buys, at (b)'s measured cost per step."""
        chain_s = sum(run.entry(k)["total_s"] for k in ("teacher", "mim", "finetune_student"))
        per_step = run.entry("finetune_random_equal_steps")["wall_s"] / cfg.finetune_steps
        steps = max(1, min(cfg.max_equal_time_steps, int(chain_s / per_step)))
        report["equal_time"] = {"chain_s": chain_s, "scratch_s_per_step": per_step, "steps": steps,
                                "capped": steps == cfg.max_equal_time_steps}
        run.say(f"equal time: {steps} steps of fine-tune (c) in the chain's {chain_s:.0f} s")
        return run_finetune_arm(cfg.student_model, SCRATCH_RECIPE, steps, prepared, ft, cfg, progress)

    run.run([
        Stage("teacher", "CLIP teacher", teacher),
        Stage("mim", "EVA-02 MIM student", mim),
        Stage("probes", "frozen probes (student and random weights)", probes),
        Stage("finetune_student", "(a) fine-tune from the MIM student", lambda: run_finetune_arm(
            str(out / "mim" / "final"), PRETRAINED_RECIPE, cfg.finetune_steps, prepared, ft, cfg, progress,
            cfg.probe_head)),
        Stage("finetune_random_equal_steps", "(b) fine-tune from random weights, same steps", lambda: run_finetune_arm(
            cfg.student_model, SCRATCH_RECIPE, cfg.finetune_steps, prepared, ft, cfg, progress)),
        Stage("finetune_random_equal_time", "(c) fine-tune from random weights, same CPU time", equal_time),
    ])
    run.finish()
    if "budget" in report:
        log(f"[quickstart --data] took {report['wall_s'] / 60:.1f} min of the {minutes:g} min budget")
    return report
