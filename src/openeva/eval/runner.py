"""``evaluate(...)``: the one entry point behind ``openeva eval``.

Order of work: parse and check every input (tasks, options, datasets, class names, templates) before the
model is built or a single image is encoded, so a typo fails in a second, not after an hour of encoding.
Then build the model (or take a built one), encode each dataset once (memory + optional disk cache shared
by all tasks), run the tasks, write one result JSON per task, plots, and return the records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from openeva.eval import finetune as finetune_mod
from openeva.eval import knn as knn_mod
from openeva.eval import linear_probe as probe_mod
from openeva.eval import plots, retrieval
from openeva.eval.datasets import (
    ClassificationData,
    ImageDataset,
    RetrievalData,
    load_classification_dataset,
    load_retrieval_dataset,
)
from openeva.eval.dense_runner import DENSE_TASKS, evaluate_dense
from openeva.eval.features import (
    EncodedImages,
    FeatureCache,
    cache_key,
    check_precision,
    checkpoint_fingerprint,
    encode_images,
    encode_texts,
    has_image_tower,
    has_text_tower,
    model_fingerprint,
)
from openeva.eval.results import TASK_NAMES, format_table, make_result, result_filename, save_result
from openeva.eval.zeroshot import (
    BUILTIN_DATASETS,
    build_zeroshot_classifier,
    classification_metrics,
    confusion_matrix,
    load_classnames,
    load_templates,
    per_class_accuracy,
    zeroshot_logits,
)

TASKS = ("zeroshot", "retrieval", "linear_probe", "knn", "finetune", "segmentation", "zeroshot_video")
CLASSIFICATION_TASKS = frozenset({"zeroshot", "linear_probe", "knn", "finetune"})
TRAIN_TASKS = frozenset({"linear_probe", "knn", "finetune"})
FROZEN_TASKS = frozenset({"zeroshot", "retrieval", "linear_probe", "knn"})  # tasks on the frozen model's features
TEXT_TASKS = frozenset({"zeroshot", "retrieval"})
DEFAULT_TEMPLATES = ("a photo of a {c}.",)
MAX_LISTED_SKIPS = 20
NUM_RETRIEVAL_EXAMPLES = 8  # hits and misses each, in the retrieval plot


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """``"zeroshot,knn"`` or ``["zeroshot", "knn,linear_probe"]`` -> unique task names in order."""
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for item in items:
        for t in str(item).split(","):
            t = t.strip().replace("-", "_")
            if not t:
                continue
            if t not in TASKS:
                raise ValueError(f"unknown task {t!r}; expected one of {', '.join(TASKS)}")
            if t not in out:
                out.append(t)
    if not out:
        raise ValueError("no task given; expected one or more of " + ", ".join(TASKS))
    return out


@dataclass
class _Encoder:
    """Encodes datasets once per run (memory) and across runs (``FeatureCache``), keyed by a content hash."""

    model: object
    transform: Callable
    model_id: Callable[[], str]
    batch_size: int
    device: str
    precision: str
    num_workers: int
    progress: bool
    cache: FeatureCache | None

    def __post_init__(self):
        self._memo: dict[str, EncodedImages] = {}

    def encode(self, data: ClassificationData | RetrievalData, desc: str) -> EncodedImages:
        data_id = data.fingerprint()
        if data_id in self._memo:
            return self._memo[data_id]
        key = None
        if self.cache is not None:
            key = cache_key(model=self.model_id(), dataset=data_id, transform=repr(self.transform),
                            precision=self.precision)
            cached = self.cache.load(key)
            if cached is not None:
                self._memo[data_id] = cached
                return cached
        encoded = encode_images(self.model, ImageDataset(data.images, self.transform), batch_size=self.batch_size,
                                device=self.device, precision=self.precision, num_workers=self.num_workers,
                                progress=self.progress, desc=desc)
        if key is not None:
            self.cache.save(key, encoded, meta={"dataset": data.name, "num_images": len(data.images)})
        self._memo[data_id] = encoded
        return encoded


def _skip_fields(data, encoded: EncodedImages, prefix: str = "") -> dict:
    names = list(data.skipped) + [data.images.ids[i] for i in encoded.skipped]
    return {f"num_skipped{prefix}": len(names), f"skipped_files{prefix}": names[:MAX_LISTED_SKIPS]}


def _remap_classes(data: ClassificationData, classnames: list[str], what: str) -> ClassificationData:
    """Re-index ``data`` labels onto ``classnames`` by name (train split defines the class set)."""
    if data.classnames == classnames:
        return data
    index = {n: i for i, n in enumerate(classnames)}
    unknown = sorted({data.classnames[label] for label in data.labels} - set(index))
    if unknown:
        raise ValueError(f"{what} has classes {unknown[:10]} that the training dataset does not have")
    labels = [index[data.classnames[label]] for label in data.labels]
    return ClassificationData(data.name, data.images, labels, list(classnames), data.skipped)


def evaluate(
    model,
    tasks: str | Sequence[str],
    dataset,
    *,
    pretrained: str | None = None,
    dataset_type: str = "auto",
    train_dataset=None,
    train_dataset_type: str | None = None,
    classnames: str | Sequence[str] | None = None,
    templates: str | Sequence[str] | None = None,
    tokenizer: Callable | None = None,
    preprocess: Callable | None = None,
    batch_size: int = 64,
    precision: str = "fp32",
    device: str = "cpu",
    num_workers: int = 0,
    cache_dir=None,
    output_dir=None,
    few_shot: int | None = None,
    seed: int = 0,
    knn_ks: Sequence[int] = knn_mod.DEFAULT_KS,
    knn_temperature: float = knn_mod.DEFAULT_TEMPERATURE,
    weight_decays: Sequence[float] = probe_mod.DEFAULT_WEIGHT_DECAYS,
    val_fraction: float = 0.2,
    probe_max_iter: int = 500,
    finetune_config=None,
    finetune_overrides: Sequence[str] = (),
    dataset_name: str | None = None,
    model_name: str | None = None,
    language: str = "en",
    make_plots: bool = True,
    progress: bool = True,
    verbose: bool = False,
    dense: dict | None = None,
) -> list[dict]:
    """Run ``tasks`` on ``dataset`` and return one result record per task (CLIP_benchmark shape).

    ``model`` is a model name for ``openeva.create_model_and_transforms`` (with ``pretrained`` a tag or a
    checkpoint path), or an already built model; a built model needs ``preprocess`` (and ``tokenizer`` for
    zeroshot / retrieval). ``classnames`` / ``templates`` take a builtin name (``imagenet1k``, ``cifar10``,
    ``imagenet1k_short`` for templates), a JSON/text file or a list. Linear probe and kNN train on
    ``train_dataset``. Results (and plots) are written under ``output_dir`` when given.
    ``finetune`` trains a classifier on ``train_dataset`` with the training engine, using the recipe
    ``finetune_config`` (a the ``finetune_*`` recipes (``openeva.configs``) file or ``TrainConfig``; None: a short default) with
    ``finetune_overrides`` (``key=value``), and reports the fine-tuned model's accuracy on ``dataset``.
    """
    # ---- 1. check every input before any compute
    task_list = parse_tasks(tasks)
    check_precision(precision)
    if DENSE_TASKS & set(task_list):  # segmentation / zeroshot_video read their own sources (eval/dense_runner.py)
        return evaluate_dense(model, task_list, dataset, pretrained=pretrained, classnames=classnames,
                              templates=templates, tokenizer=tokenizer, preprocess=preprocess, precision=precision,
                              device=device, output_dir=output_dir, dataset_name=dataset_name, model_name=model_name,
                              language=language, seed=seed, progress=progress, verbose=verbose, dense=dense)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if few_shot is not None and few_shot < 1:
        raise ValueError(f"few_shot must be >= 1, got {few_shot}")
    wants = set(task_list)
    if "knn" in wants:
        if not knn_ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in knn_ks):
            raise ValueError(f"knn_ks (--knn-k) must be integers >= 1, got {list(knn_ks)}")
        if not knn_temperature > 0:
            raise ValueError(f"knn_temperature must be > 0, got {knn_temperature}")
    if wants & TRAIN_TASKS and train_dataset is None:
        raise ValueError(f"tasks {sorted(wants & TRAIN_TASKS)} need a training dataset (train_dataset=...)")
    if isinstance(model, str):
        model_label = model_name or model
    else:
        model_label = model_name or type(model).__name__
        if preprocess is None and wants & FROZEN_TASKS:
            raise ValueError("a built model needs preprocess= (its validation transform)")
        if wants & TEXT_TASKS and tokenizer is None and model_name is None:
            raise ValueError(f"tasks {sorted(wants & TEXT_TASKS)} need tokenizer= when the model is passed built")

    names = load_classnames(classnames, dataset_name) if classnames is not None else None
    cls_data = train_data = ret_data = None
    if wants & CLASSIFICATION_TASKS:
        cls_data = load_classification_dataset(dataset, dataset_type, names, split="test", name=dataset_name)
    if wants & TRAIN_TASKS:
        train_data = load_classification_dataset(train_dataset, train_dataset_type or dataset_type, names,
                                                 split="train")
        present = len(set(train_data.labels))
        if present < 2:
            raise ValueError(f"training dataset {train_data.name} has {present} class(es) with images; "
                             "classification needs at least 2")
        if names is None:
            cls_data = _remap_classes(cls_data, train_data.classnames, f"dataset {dataset}")
        elif train_data.classnames != cls_data.classnames:
            raise ValueError("training and evaluation datasets have different class names")
    if "retrieval" in wants:
        ret_data = load_retrieval_dataset(dataset, dataset_type, name=dataset_name)
    if "zeroshot" in wants:
        if templates is not None:
            template_list = load_templates(templates, dataset_name)
        elif isinstance(classnames, str) and classnames.lower().replace("-", "_") in BUILTIN_DATASETS:
            template_list = load_templates(classnames)
        else:
            template_list = list(DEFAULT_TEMPLATES)
    data_label = (cls_data or ret_data).name
    if "finetune" in wants:
        finetune_mod.check_finetune_model(model)
        finetune_cfg = finetune_mod.load_finetune_config(finetune_config, finetune_overrides)
        finetune_mod.check_finetune_inputs(finetune_cfg, train_data, cls_data)

    # ---- 2. model, transform, tokenizer (fine-tuning builds its own classifier in step 3)
    model_obj = encoder = None
    if wants & FROZEN_TASKS:
        if isinstance(model, str):
            from openeva.factory import create_model_and_transforms

            model_obj, _, default_preprocess = create_model_and_transforms(model, pretrained=pretrained)
            preprocess = preprocess or default_preprocess
            if wants & TEXT_TASKS and tokenizer is None:
                from openeva.factory import get_tokenizer

                tokenizer = get_tokenizer(model)

            def model_id() -> str:
                if pretrained is None:  # randomly initialised weights: only their hash identifies them
                    return f"{model}|{model_fingerprint(model_obj)}"
                return f"{model}|{checkpoint_fingerprint(pretrained)}"
        else:
            model_obj = model
            if wants & TEXT_TASKS and tokenizer is None:
                from openeva.factory import get_tokenizer

                tokenizer = get_tokenizer(model_name)

            def model_id() -> str:
                return f"object|{model_fingerprint(model_obj)}|{checkpoint_fingerprint(pretrained)}"

        if wants & TEXT_TASKS and not has_text_tower(model_obj):
            raise ValueError(f"tasks {sorted(wants & TEXT_TASKS)} need a CLIP model with a text tower; "
                             f"{model_label} has no encode_text")
        if not has_image_tower(model_obj):
            raise ValueError(f"{model_label} has neither encode_image nor forward_features/forward_head")
        if hasattr(model_obj, "to"):
            model_obj = model_obj.to(device)
        if hasattr(model_obj, "eval"):
            model_obj.eval()

        encoder = _Encoder(model_obj, preprocess, model_id, batch_size, device, precision, num_workers, progress,
                           FeatureCache(cache_dir) if cache_dir is not None else None)

    common = {"model": model_label, "pretrained": pretrained, "language": language,
              "config": {"batch_size": batch_size, "precision": precision, "device": str(device), "seed": seed}}
    out_dir = Path(output_dir) if output_dir is not None else None

    # ---- 3. tasks
    results = []
    for task in task_list:
        if task == "zeroshot":
            enc = encoder.encode(cls_data, f"encoding {cls_data.name}")
            labels = torch.tensor(cls_data.labels)[enc.indices]
            classifier = build_zeroshot_classifier(model_obj, tokenizer, cls_data.classnames, template_list,
                                                   device=device, precision=precision, progress=progress)
            scores = zeroshot_logits(enc.features, classifier)  # (N, C)
            result = make_result(data_label, task=task, metrics=classification_metrics(scores, labels,
                                 cls_data.num_classes), num_samples=len(labels), num_classes=cls_data.num_classes,
                                 num_templates=len(template_list), **_skip_fields(cls_data, enc), **common)
            _classification_plots(result, scores, labels, cls_data.classnames, out_dir, make_plots)
        elif task == "retrieval":
            result = _run_retrieval(ret_data, encoder, tokenizer, data_label, common, out_dir, make_plots)
        elif task == "finetune":
            metrics, scores, labels, extra = finetune_mod.run_finetune(
                model, train_data, cls_data, cfg=finetune_cfg, pretrained=pretrained, device=device,
                precision=precision, batch_size=batch_size, num_workers=num_workers, seed=seed,
                output_dir=out_dir, progress=progress, warmup_fraction=0.1 if finetune_config is None else None)
            result = make_result(data_label, task=task, metrics=metrics, num_samples=len(labels),
                                 num_classes=cls_data.num_classes, train_dataset=train_data.name, **extra, **common)
            _classification_plots(result, scores, labels, cls_data.classnames, out_dir, make_plots)
        else:
            enc = encoder.encode(cls_data, f"encoding {cls_data.name}")
            train_enc = encoder.encode(train_data, f"encoding {train_data.name}")
            labels = torch.tensor(cls_data.labels)[enc.indices]
            train_x, train_y = train_enc.features, torch.tensor(train_data.labels)[train_enc.indices]
            extra = {**_skip_fields(cls_data, enc), **_skip_fields(train_data, train_enc, "_train"),
                     "num_samples": len(labels), "num_classes": cls_data.num_classes,
                     "train_dataset": train_data.name, "few_shot": few_shot}
            if task == "linear_probe":
                probe = probe_mod.evaluate_linear_probe(train_x, train_y, enc.features, labels, cls_data.num_classes,
                                               weight_decays=weight_decays, val_fraction=val_fraction,
                                               few_shot=few_shot, seed=seed, max_iter=probe_max_iter,
                                               device=device)
                metrics, scores = probe.metrics, probe.scores
                extra.update(weight_decay=probe.weight_decay, num_train=probe.num_train,
                             val_acc1={f"{wd:g}": acc for wd, acc in probe.val_acc1.items()})
            else:
                if few_shot is not None:
                    keep = probe_mod.few_shot_indices(train_y, few_shot, seed)
                    train_x, train_y = train_x[keep], train_y[keep]
                metrics, all_scores = knn_mod.knn_classify(train_x, train_y, enc.features, labels,
                                                           cls_data.num_classes, knn_ks,
                                                           temperature=knn_temperature, device=device)
                main = knn_mod.main_k(knn_ks)
                scores = all_scores[main]
                extra.update(ks=list(knn_ks), main_k=main, temperature=knn_temperature, num_train=len(train_y))
            result = make_result(data_label, task=task, metrics=metrics, **extra, **common)
            _classification_plots(result, scores, labels, cls_data.classnames, out_dir, make_plots)
        if out_dir is not None:
            result["result_file"] = str(save_result(result, out_dir))
        results.append(result)
    if verbose:
        print(format_table(results))
    return results


def _run_retrieval(data: RetrievalData, encoder: _Encoder, tokenizer, data_label, common, out_dir, make_plots):
    enc = encoder.encode(data, f"encoding {data.name}")
    texts, text_to_image = [], []
    for row, image_index in enumerate(enc.indices.tolist()):
        texts += data.captions[image_index]
        text_to_image += [row] * len(data.captions[image_index])
    text_features = encode_texts(encoder.model, tokenizer, texts, batch_size=encoder.batch_size,
                                 device=encoder.device, precision=encoder.precision, progress=encoder.progress,
                                 desc="encoding captions")  # (T, E)
    metrics, ranks = retrieval.evaluate_retrieval(enc.features, text_features, torch.tensor(text_to_image))
    result = make_result(data_label, task="retrieval", metrics=metrics, num_samples=len(enc.indices),
                         num_texts=len(texts), **_skip_fields(data, enc), **common)
    if make_plots and out_dir is not None:
        hits = (ranks.image_to_text == 0).tolist()
        rows = [r for r, h in enumerate(hits) if h][:NUM_RETRIEVAL_EXAMPLES]
        rows += [r for r, h in enumerate(hits) if not h][:NUM_RETRIEVAL_EXAMPLES]
        positions = [int(enc.indices[r]) for r in rows]
        stem = _plot_stem(result, out_dir)
        result["plots"] = [str(plots.plot_retrieval_examples(
            lambda i: _safe_load(data, i), positions, [data.captions[p] for p in positions],
            [texts[int(ranks.image_top1_text[r])] for r in rows], [hits[r] for r in rows],
            f"{stem}_retrieval_examples.png", title=f"{data_label}: image -> text top-1"))]
    return result


def _safe_load(data, index):
    try:
        return data.images.load(index)
    except Exception:  # a plot must not fail the run; the image decoded once already
        return None


def _plot_stem(result: dict, out_dir: Path) -> str:
    return str(out_dir / "plots" / result_filename(result).removesuffix(".json"))


def _classification_plots(result, scores, labels, classnames, out_dir, make_plots) -> None:
    if not make_plots or out_dir is None:
        return
    preds = scores.argmax(dim=1)
    stem = _plot_stem(result, out_dir)
    title = f"{result['dataset']} {TASK_NAMES.get(result['task'], result['task'])} ({result['model']})"
    result["plots"] = [
        str(plots.plot_confusion_matrix(confusion_matrix(preds, labels, len(classnames)), classnames,
                                        f"{stem}_confusion.png", title=title)),
        str(plots.plot_per_class_accuracy(per_class_accuracy(preds, labels, len(classnames)), classnames,
                                          f"{stem}_per_class.png", title=title)),
    ]
