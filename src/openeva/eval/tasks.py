"""The evaluation tasks behind ``openeva eval``: one function per task, one table entry each.

A task function takes the :class:`EvalRun` that :func:`openeva.eval.runner.evaluate` prepared (datasets indexed,
model built, encoder ready, every input checked) and returns its result record (:func:`make_result`), with plots
when asked. What a task needs is declared in its :class:`EvalTask` entry, so ``evaluate`` loads only that and
checks it before any compute. Adding a task is a function plus :func:`register_eval_task` (or a line in
:data:`EVAL_TASKS`)::

    def _my_task(run: EvalRun) -> dict: ...
    register_eval_task("my_task", EvalTask(_my_task, needs={"classes", "features"}))
"""

from __future__ import annotations

from pathlib import Path

import torch

from openeva.data.classnames import BUILTIN_DATASETS, load_templates
from openeva.data.labelled import ClassificationData
from openeva.eval import finetune as finetune_mod
from openeva.eval import plots
from openeva.eval.context import EvalRun, EvalTask
from openeva.eval.dense_tasks import check_segmentation, check_zeroshot_video, run_segmentation, run_zeroshot_video
from openeva.eval.features import EncodedImages, encode_texts
from openeva.eval.finetune_recipe import auto_finetune_recipe
from openeva.eval.results import TASK_NAMES, make_result, result_filename
from openeva.evaluators.base import Batching
from openeva.evaluators.classification import (
    DEFAULT_TEMPLATES, ZeroShot, ZeroShotOptions, classification_counts, counts_metrics,
)
from openeva.evaluators.knn import KNN
from openeva.evaluators.knn import main_k as knn_main_k
from openeva.evaluators.linear_probe import LinearProbe
from openeva.evaluators.retrieval import evaluate_retrieval
from openeva.metrics import confusion_matrix, per_class_accuracy, zeroshot_logits

__all__ = ["EVAL_TASKS", "EvalRun", "EvalTask", "register_eval_task"]

MAX_LISTED_SKIPS = 20
NUM_RETRIEVAL_EXAMPLES = 8  # hits and misses each, in the retrieval plot


# ------------------------------------------------------------------------------------------- helpers
def skip_fields(data, encoded: EncodedImages, suffix: str = "") -> dict:
    names = list(data.skipped) + [data.images.ids[i] for i in encoded.skipped]
    return {f"num_skipped{suffix}": len(names), f"skipped_files{suffix}": names[:MAX_LISTED_SKIPS]}


def _plot_stem(result: dict, out_dir: Path) -> str:
    return str(out_dir / "plots" / result_filename(result).removesuffix(".json"))


def classification_plots(run: EvalRun, result: dict, scores: torch.Tensor, labels: torch.Tensor) -> None:
    if not run.make_plots or run.out_dir is None:
        return
    classnames = run.cls_data.classnames
    preds = scores.argmax(dim=1)
    stem = _plot_stem(result, run.out_dir)
    title = f"{result['dataset']} {TASK_NAMES.get(result['task'], result['task'])} ({result['model']})"
    result["plots"] = [
        str(plots.plot_confusion_matrix(confusion_matrix(preds, labels, len(classnames)), classnames,
                                        f"{stem}_confusion.png", title=title)),
        str(plots.plot_per_class_accuracy(per_class_accuracy(preds, labels, len(classnames)), classnames,
                                          f"{stem}_per_class.png", title=title)),
    ]


def _safe_load(data, index):
    try:
        return data.images.load(index)
    except Exception:  # a plot must not fail the run; the image decoded once already
        return None


def _encoded_labels(run: EvalRun, data: ClassificationData) -> tuple[EncodedImages, torch.Tensor]:
    enc = run.encoder.encode(data, f"encoding {data.name}")
    return enc, torch.tensor(data.labels)[enc.indices]


# --------------------------------------------------------------------------------------------- tasks
def _batching(run: EvalRun) -> Batching:
    c = run.config
    return Batching(c.batch_size, c.num_workers, c.progress)


def _zeroshot(run: EvalRun) -> dict:
    data = run.cls_data
    enc, labels = _encoded_labels(run, data)
    evaluator = ZeroShot(run.tokenizer, ZeroShotOptions(templates=tuple(run.templates)), _batching(run))
    classifier = evaluator.classifier(run.encoder.model, data.classnames, device=run.device,
                                      precision=run.precision)  # (E, C)
    scores = zeroshot_logits(enc.features, classifier)  # (N, C)
    metrics = counts_metrics(classification_counts(scores, labels, data.num_classes), data.num_classes)
    result = make_result(run.data_label, task="zeroshot", metrics=metrics, num_samples=len(labels),
                         num_classes=data.num_classes, num_templates=len(run.templates), **skip_fields(data, enc),
                         **run.common)
    classification_plots(run, result, scores, labels)
    return result


def _check_zeroshot(run: EvalRun) -> None:
    """The prompt templates: given, the builtin set of builtin class names, or one generic template."""
    c = run.config
    if c.templates is not None:
        run.templates = load_templates(c.templates, c.dataset_name)
    elif isinstance(c.classnames, str) and c.classnames.lower().replace("-", "_") in BUILTIN_DATASETS:
        run.templates = load_templates(c.classnames)
    else:
        run.templates = list(DEFAULT_TEMPLATES)


def _retrieval(run: EvalRun) -> dict:
    data = run.ret_data
    enc = run.encoder.encode(data, f"encoding {data.name}")
    texts, text_to_image = [], []
    for row, image_index in enumerate(enc.indices.tolist()):
        texts += data.captions[image_index]
        text_to_image += [row] * len(data.captions[image_index])
    c = run.config
    text_features = encode_texts(run.encoder.model, run.tokenizer, texts, batch_size=c.batch_size, device=run.device,
                                 precision=run.precision, progress=c.progress, desc="encoding captions")  # (T, E)
    metrics, ranks = evaluate_retrieval(enc.features, text_features, torch.tensor(text_to_image))
    result = make_result(run.data_label, task="retrieval", metrics=metrics, num_samples=len(enc.indices),
                         num_texts=len(texts), **skip_fields(data, enc), **run.common)
    if run.make_plots and run.out_dir is not None:
        hits = (ranks.image_to_text == 0).tolist()
        rows = [r for r, h in enumerate(hits) if h][:NUM_RETRIEVAL_EXAMPLES]
        rows += [r for r, h in enumerate(hits) if not h][:NUM_RETRIEVAL_EXAMPLES]
        positions = [int(enc.indices[r]) for r in rows]
        result["plots"] = [str(plots.plot_retrieval_examples(
            lambda i: _safe_load(data, i), positions, [data.captions[p] for p in positions],
            [texts[int(ranks.image_top1_text[r])] for r in rows], [hits[r] for r in rows],
            f"{_plot_stem(result, run.out_dir)}_retrieval_examples.png",
            title=f"{run.data_label}: image -> text top-1"))]
    return result


def _train_features(run: EvalRun, few_shot: int | None):
    """Evaluation features + labels, training features + labels, and the record fields both frozen tasks share."""
    enc, labels = _encoded_labels(run, run.cls_data)
    train_enc, train_y = _encoded_labels(run, run.train_data)
    extra = {**skip_fields(run.cls_data, enc), **skip_fields(run.train_data, train_enc, "_train"),
             "num_samples": len(labels), "num_classes": run.cls_data.num_classes,
             "train_dataset": run.train_data.name, "few_shot": few_shot}
    return enc, labels, train_enc.features, train_y, extra


def _linear_probe(run: EvalRun) -> dict:
    evaluator = LinearProbe(run.config.linear_probe, _batching(run))
    enc, labels, train_x, train_y, extra = _train_features(run, evaluator.options.few_shot)
    probe = evaluator.score(train_x, train_y, enc.features, labels, run.cls_data.num_classes, device=run.device)
    extra.update(weight_decay=probe.weight_decay, num_train=probe.num_train,
                 val_acc1={f"{wd:g}": acc for wd, acc in probe.val_acc1.items()})
    result = make_result(run.data_label, task="linear_probe", metrics=probe.metrics, **extra, **run.common)
    classification_plots(run, result, probe.scores, labels)
    return result


def _knn(run: EvalRun) -> dict:
    evaluator = KNN(run.config.knn, _batching(run))
    o = evaluator.options
    enc, labels, train_x, train_y, extra = _train_features(run, o.few_shot)
    metrics, all_scores, num_train = evaluator.score(train_x, train_y, enc.features, labels,
                                                     run.cls_data.num_classes, device=run.device)
    main = knn_main_k(o.ks)
    extra.update(ks=list(o.ks), main_k=main, temperature=o.temperature, num_train=num_train)
    result = make_result(run.data_label, task="knn", metrics=metrics, **extra, **run.common)
    classification_plots(run, result, all_scores[main], labels)
    return result


def _check_finetune(run: EvalRun) -> None:
    options = run.config.finetune
    finetune_mod.check_finetune_model(run.model)
    recipe = options.config
    if recipe is None:  # chosen by the backbone's weights, and said
        recipe = auto_finetune_recipe(run.model, run.config.pretrained)
    cfg = finetune_mod.load_finetune_config(recipe, options.overrides)
    finetune_mod.check_finetune_inputs(cfg, run.train_data, run.cls_data)
    run.extras["finetune_config"] = cfg


def _finetune(run: EvalRun) -> dict:
    c = run.config
    metrics, scores, labels, extra = finetune_mod.run_finetune(
        run.model, run.train_data, run.cls_data, cfg=run.extras["finetune_config"], pretrained=c.pretrained,
        device=run.device, precision=run.precision, batch_size=c.batch_size, num_workers=c.num_workers,
        seed=c.seed, output_dir=run.out_dir, progress=c.progress,
        warmup_fraction=0.1 if c.finetune.config is None else None)
    result = make_result(run.data_label, task="finetune", metrics=metrics, num_samples=len(labels),
                         num_classes=run.cls_data.num_classes, train_dataset=run.train_data.name, **extra,
                         **run.common)
    classification_plots(run, result, scores, labels)
    return result


# --------------------------------------------------------------------------------------------- the table
EVAL_TASKS: dict[str, EvalTask] = {
    "zeroshot": EvalTask(_zeroshot, {"classes", "features", "text"}, check=_check_zeroshot),
    "retrieval": EvalTask(_retrieval, {"captions", "features", "text"}),
    "linear_probe": EvalTask(_linear_probe, {"classes", "train", "features"}),
    "knn": EvalTask(_knn, {"classes", "train", "features"}),
    "finetune": EvalTask(_finetune, {"classes", "train"}, check=_check_finetune),
    "segmentation": EvalTask(run_segmentation, {"own_data", "text"}, check=check_segmentation),
    "zeroshot_video": EvalTask(run_zeroshot_video, {"own_data", "text"}, check=check_zeroshot_video),
}


def register_eval_task(name: str, task: EvalTask, record_name: str | None = None) -> None:
    """Make ``openeva eval --task name`` (and ``evaluate(..., tasks=name)``) run ``task``; its result records
    carry ``task=record_name`` (default: ``name``)."""
    if not isinstance(task, EvalTask):
        raise ValueError(f"task {name!r} must be an EvalTask, got {type(task).__name__}")
    EVAL_TASKS[name] = task
    TASK_NAMES[name] = record_name or name
