"""``evaluate(...)``: the one entry point behind ``openeva eval``.

Order of work: parse and check every input (tasks, options, datasets, class names, templates) before the
model is built or a single image is encoded, so a typo fails in a second, not after an hour of encoding.
Then build the model (or take a built one), encode each dataset once (memory + optional disk cache shared
by all tasks), run the tasks (one function each, :data:`openeva.eval.tasks.EVAL_TASKS`), write one result
JSON per task, plots, and return the records.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from openeva.data.classnames import load_classnames
from openeva.data.image_lists import LabelledImages
from openeva.data.labelled import (
    ClassificationData, RetrievalData, align_classes, load_classification_dataset, load_retrieval_dataset,
)
from openeva.eval import knn as knn_mod
from openeva.eval import linear_probe as probe_mod
from openeva.eval.features import (
    EncodedImages, FeatureCache, cache_key, checkpoint_fingerprint, encode_images, has_image_tower,
    has_text_tower, model_fingerprint,
)
from openeva.eval.results import format_table, save_result
from openeva.eval.tasks import EVAL_TASKS, EvalRun
from openeva.factory import create_model_and_transforms, get_tokenizer
from openeva.runtime import dtype_of, resolve_precision
from openeva.models.int8 import is_int8
from openeva.models.tome import tome_tokens

def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """``"zeroshot,knn"`` or ``["zeroshot", "knn,linear_probe"]`` -> unique task names in order."""
    items = [tasks] if isinstance(tasks, str) else list(tasks)
    out: list[str] = []
    for item in items:
        for t in str(item).split(","):
            t = t.strip().replace("-", "_")
            if not t:
                continue
            if t not in EVAL_TASKS:
                raise ValueError(f"unknown task {t!r}; expected one of {', '.join(EVAL_TASKS)}")
            if t not in out:
                out.append(t)
    if not out:
        raise ValueError("no task given; expected one or more of " + ", ".join(EVAL_TASKS))
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
        encoded = encode_images(self.model, LabelledImages(data.images, self.transform), batch_size=self.batch_size,
                                device=self.device, precision=self.precision, num_workers=self.num_workers,
                                progress=self.progress, desc=desc)
        if key is not None:
            self.cache.save(key, encoded, meta={"dataset": data.name, "num_images": len(data.images)})
        self._memo[data_id] = encoded
        return encoded


def _merged_tokens(model) -> list[int] | None:
    """Tokens merged per block of a built model's image tower (None: no merging, or not an EVA tower)."""
    if model is None:
        return None
    try:
        return tome_tokens(model)
    except TypeError:
        return None


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
    precision: str = "auto",
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
    checkpoint path; a training run directory means its ``final/`` model), or an already built model; a built
    model needs ``preprocess`` (and ``tokenizer`` for zeroshot / retrieval). ``classnames`` / ``templates`` take
    a builtin name (``imagenet1k``, ``cifar10``, ``imagenet1k_short`` for templates), a JSON/text file or a list;
    class names given for a class-folder dataset are matched to its folder names. Linear probe and kNN train
    on ``train_dataset``. ``finetune`` trains a classifier on ``train_dataset`` with the training engine, using
    the recipe ``finetune_config`` (a ``finetune_*`` recipe of ``openeva.configs``, a config file or a
    ``TrainConfig``; None: a short default) with ``finetune_overrides`` (``key=value``), and reports the
    fine-tuned model's accuracy on ``dataset``. ``segmentation`` (an image + mask folder) and ``zeroshot_video``
    (class folders of videos) read ``dataset`` themselves and run alone; ``dense`` holds their options (see
    :mod:`openeva.eval.dense_tasks`). Results (and plots) are written under ``output_dir`` when given.
    """
    options = {k: v for k, v in locals().items() if k not in ("model", "tasks", "dataset")}
    # ---- 1. check every input before any compute
    task_list = parse_tasks(tasks)
    built = model if not isinstance(model, str) else None
    int8 = built is not None and is_int8(built)
    precision, _ = resolve_precision(precision, device, int8=int8)  # "auto": by the hardware; fp32 with int8
    options["precision"] = precision
    dtype_of(precision)  # refuses an unknown name
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if few_shot is not None and few_shot < 1:
        raise ValueError(f"few_shot must be >= 1, got {few_shot}")
    needs = frozenset().union(*(EVAL_TASKS[t].needs for t in task_list))
    if "own_data" in needs and len(task_list) > 1:
        alone = [t for t in task_list if "own_data" in EVAL_TASKS[t].needs]
        raise ValueError(f"tasks {alone} read their own kind of dataset; run each in its own openeva eval call")
    if "train" in needs and train_dataset is None:
        wanting = [t for t in task_list if "train" in EVAL_TASKS[t].needs]
        raise ValueError(f"tasks {sorted(wanting)} need a training dataset (train_dataset=...)")
    model_label = model_name or (model if isinstance(model, str) else type(model).__name__)
    if not isinstance(model, str):
        if preprocess is None and "features" in needs:
            raise ValueError("a built model needs preprocess= (its validation transform)")
        if "text" in needs and tokenizer is None and model_name is None:
            wanting = [t for t in task_list if "text" in EVAL_TASKS[t].needs]
            raise ValueError(f"tasks {sorted(wanting)} need tokenizer= when the model is passed built")
    run = EvalRun(model=model, pretrained=pretrained, options=options, out_dir=Path(output_dir) if output_dir
                  is not None else None, make_plots=make_plots, data_label="", tokenizer=tokenizer,
                  common={"model": model_label, "pretrained": pretrained, "language": language,
                          "config": {"batch_size": batch_size, "precision": precision, "device": str(device),
                                     "seed": seed, "tome_r": _merged_tokens(built), "int8": int8}})
    run.extras["dataset"] = dataset
    _load_datasets(run, needs, dataset, dataset_type, train_dataset, train_dataset_type, classnames, dataset_name)
    for task in task_list:
        if EVAL_TASKS[task].check is not None:
            EVAL_TASKS[task].check(run)

    # ---- 2. model, transform, tokenizer (fine-tuning builds its own classifier when it runs)
    if "features" in needs:
        run.encoder, run.tokenizer = _build_encoder(model, pretrained, preprocess, run.tokenizer, model_name,
                                                    model_label, needs, options)

    # ---- 3. tasks
    results = []
    for task in task_list:
        result = EVAL_TASKS[task].run(run)
        if run.out_dir is not None:
            result["result_file"] = str(save_result(result, run.out_dir))
        results.append(result)
    if verbose:
        print(format_table(results))
    return results


def _load_datasets(run: EvalRun, needs, dataset, dataset_type, train_dataset, train_dataset_type, classnames,
                   dataset_name) -> None:
    """Index the datasets the tasks need (labelled, training, captioned), class names aligned across them."""
    names = load_classnames(classnames, dataset_name) if classnames is not None else None
    if "classes" in needs:
        run.cls_data = load_classification_dataset(dataset, dataset_type, names, split="test", name=dataset_name)
    if "train" in needs:
        train = load_classification_dataset(train_dataset, train_dataset_type or dataset_type, names, split="train")
        present = len(set(train.labels))
        if present < 2:
            raise ValueError(f"training dataset {train.name} has {present} class(es) with images; "
                             "classification needs at least 2")
        if names is None:
            run.cls_data = align_classes(run.cls_data, train.classnames, f"dataset {dataset}")
        elif train.classnames != run.cls_data.classnames:
            raise ValueError("training and evaluation datasets have different class names")
        run.train_data = train
    if "captions" in needs:
        run.ret_data = load_retrieval_dataset(dataset, dataset_type, name=dataset_name)
    if run.cls_data is not None or run.ret_data is not None:  # "own_data" tasks name their data in their check
        run.data_label = (run.cls_data or run.ret_data).name


def _build_encoder(model, pretrained, preprocess, tokenizer, model_name, model_label, needs, o):
    """(encoder, tokenizer) for the frozen-feature tasks: the model built (or taken) and checked."""
    if isinstance(model, str):
        model_obj, _, default_preprocess = create_model_and_transforms(model, pretrained=pretrained)
        preprocess = preprocess or default_preprocess
        tokenizer_name = model

        def model_id() -> str:
            if pretrained is None:  # randomly initialised weights: only their hash identifies them
                return f"{model}|{model_fingerprint(model_obj)}"
            return f"{model}|{checkpoint_fingerprint(pretrained)}"
    else:
        model_obj, tokenizer_name = model, model_name

        def model_id() -> str:
            return f"object|{model_fingerprint(model_obj)}|{checkpoint_fingerprint(pretrained)}"

    if "text" in needs:
        if not has_text_tower(model_obj):
            raise ValueError(f"tasks that score text need a CLIP model with a text tower; {model_label} has no "
                             "encode_text")
        tokenizer = tokenizer or get_tokenizer(tokenizer_name)
    if not has_image_tower(model_obj):
        raise ValueError(f"{model_label} has neither encode_image nor forward_features/forward_head")
    if hasattr(model_obj, "to"):
        model_obj = model_obj.to(o["device"])
    if hasattr(model_obj, "eval"):
        model_obj.eval()
    cache = FeatureCache(o["cache_dir"]) if o["cache_dir"] is not None else None
    encoder = _Encoder(model=model_obj, transform=preprocess, model_id=model_id, batch_size=o["batch_size"],
                       device=o["device"], precision=o["precision"], num_workers=o["num_workers"],
                       progress=o["progress"], cache=cache)
    return encoder, tokenizer
