"""``evaluate(model, config)``: the one entry point behind ``openeva eval``.

Order of work: parse and check every input (tasks, options, datasets, class names, templates) before the
model is built or a single image is encoded, so a typo fails in a second, not after an hour of encoding.
Then build the model (or take a built one), encode each dataset once (memory + optional disk cache shared
by all tasks), run the tasks (one function each, :data:`openeva.eval.tasks.EVAL_TASKS`), write one result
JSON per task, plots, and return the records.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from openeva.data.classnames import load_classnames
from openeva.data.image_lists import LabelledImages
from openeva.data.labelled import (
    ClassificationData, RetrievalData, align_classes, load_classification_dataset, load_retrieval_dataset,
)
from openeva.eval.config import EvalConfig, split_tasks
from openeva.eval.context import EvalRun
from openeva.eval.features import (
    EncodedImages, FeatureCache, cache_key, checkpoint_fingerprint, encode_images, has_image_tower,
    has_text_tower, model_fingerprint,
)
from openeva.eval.results import format_table, save_result
from openeva.eval.tasks import EVAL_TASKS
from openeva.factory import create_model_and_transforms, get_tokenizer
from openeva.models.int8 import is_int8
from openeva.models.tome import tome_tokens
from openeva.runtime import resolve_device, resolve_precision


def parse_tasks(tasks: str | Sequence[str]) -> list[str]:
    """``"zeroshot,knn"`` or ``["zeroshot", "knn,linear_probe"]`` -> unique task names of the table, in order."""
    out = list(split_tasks(tasks))
    unknown = [t for t in out if t not in EVAL_TASKS]
    if unknown:
        raise ValueError(f"unknown task {unknown[0]!r}; expected one of {', '.join(EVAL_TASKS)}")
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


def evaluate(model, config: EvalConfig, *, tokenizer: Callable | None = None,
             preprocess: Callable | None = None) -> list[dict]:
    """Run ``config.tasks`` on ``config.dataset``; one result record per task (CLIP_benchmark shape).

    ``model`` is a model name for ``openeva.create_model_and_transforms`` (with ``config.pretrained`` a tag or a
    checkpoint path; a training run directory means its ``final/`` model), or an already built model, which
    comes with its ``preprocess`` (validation transform) and, for zeroshot / retrieval / the dense tasks, its
    ``tokenizer`` (or a ``config.model_name`` to get one by). Every input is checked before the model is built
    or an image encoded. Results (and plots) are written under ``config.output_dir`` when given.
    """
    if not isinstance(config, EvalConfig):
        raise ValueError(f"evaluate(model, config) takes an EvalConfig, got {type(config).__name__}")
    c = config
    # ---- 1. check every input before any compute
    task_list = parse_tasks(c.tasks)
    built = model if not isinstance(model, str) else None
    int8 = built is not None and is_int8(built)
    device = str(resolve_device(c.device))
    precision, _ = resolve_precision(c.precision, device, int8=int8)  # "auto": by the hardware; fp32 with int8
    needs = frozenset().union(*(EVAL_TASKS[t].needs for t in task_list))
    if "own_data" in needs and len(task_list) > 1:
        alone = [t for t in task_list if "own_data" in EVAL_TASKS[t].needs]
        raise ValueError(f"tasks {alone} read their own kind of dataset; run each in its own openeva eval call")
    if "train" in needs and c.train_dataset is None:
        wanting = [t for t in task_list if "train" in EVAL_TASKS[t].needs]
        raise ValueError(f"tasks {sorted(wanting)} need a training dataset (train_dataset=...)")
    model_label = c.model_name or (model if isinstance(model, str) else type(model).__name__)
    if not isinstance(model, str):
        if preprocess is None and "features" in needs:
            raise ValueError("a built model needs preprocess= (its validation transform)")
        if "text" in needs and tokenizer is None and c.model_name is None:
            wanting = [t for t in task_list if "text" in EVAL_TASKS[t].needs]
            raise ValueError(f"tasks {sorted(wanting)} need tokenizer= when the model is passed built")
    run = EvalRun(model=model, config=c, device=device, precision=precision, tokenizer=tokenizer,
                  preprocess=preprocess,
                  common={"model": model_label, "pretrained": c.pretrained, "language": c.language,
                          "config": {"batch_size": c.batch_size, "precision": precision, "device": device,
                                     "seed": c.seed, "tome_r": _merged_tokens(built), "int8": int8}})
    _load_datasets(run, needs)
    for task in task_list:
        if EVAL_TASKS[task].check is not None:
            EVAL_TASKS[task].check(run)

    # ---- 2. model, transform, tokenizer (fine-tuning builds its own classifier when it runs)
    if "features" in needs:
        run.encoder, run.tokenizer = _build_encoder(run, model_label, needs)

    # ---- 3. tasks
    results = []
    for task in task_list:
        result = EVAL_TASKS[task].run(run)
        if run.out_dir is not None:
            result["result_file"] = str(save_result(result, run.out_dir))
        results.append(result)
    if c.verbose:
        print(format_table(results))
    return results


def _load_datasets(run: EvalRun, needs) -> None:
    """Index the datasets the tasks need (labelled, training, captioned), class names aligned across them."""
    c = run.config
    names = load_classnames(c.classnames, c.dataset_name) if c.classnames is not None else None
    if "classes" in needs:
        run.cls_data = load_classification_dataset(c.dataset, c.dataset_type, names, split="test", name=c.dataset_name)
    if "train" in needs:
        train = load_classification_dataset(c.train_dataset, c.train_dataset_type or c.dataset_type, names,
                                            split="train")
        present = len(set(train.labels))
        if present < 2:
            raise ValueError(f"training dataset {train.name} has {present} class(es) with images; "
                             "classification needs at least 2")
        if names is None:
            run.cls_data = align_classes(run.cls_data, train.classnames, f"dataset {c.dataset}")
        elif train.classnames != run.cls_data.classnames:
            raise ValueError("training and evaluation datasets have different class names")
        run.train_data = train
    if "captions" in needs:
        run.ret_data = load_retrieval_dataset(c.dataset, c.dataset_type, name=c.dataset_name)
    if run.cls_data is not None or run.ret_data is not None:  # "own_data" tasks name their data in their check
        run.data_label = (run.cls_data or run.ret_data).name


def _build_encoder(run: EvalRun, model_label: str, needs):
    """(encoder, tokenizer) for the frozen-feature tasks: the model built (or taken) and checked."""
    model, c, preprocess, tokenizer = run.model, run.config, run.preprocess, run.tokenizer
    pretrained = c.pretrained
    if isinstance(model, str):
        model_obj, _, default_preprocess = create_model_and_transforms(model, pretrained=pretrained)
        preprocess = preprocess or default_preprocess
        tokenizer_name = model

        def model_id() -> str:
            if pretrained is None:  # randomly initialised weights: only their hash identifies them
                return f"{model}|{model_fingerprint(model_obj)}"
            return f"{model}|{checkpoint_fingerprint(pretrained)}"
    else:
        model_obj, tokenizer_name = model, c.model_name

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
        model_obj = model_obj.to(run.device)
    if hasattr(model_obj, "eval"):
        model_obj.eval()
    cache = FeatureCache(c.cache_dir) if c.cache_dir is not None else None
    encoder = _Encoder(model=model_obj, transform=preprocess, model_id=model_id, batch_size=c.batch_size,
                       device=run.device, precision=run.precision, num_workers=c.num_workers, progress=c.progress,
                       cache=cache)
    return encoder, tokenizer
