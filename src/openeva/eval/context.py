"""What the task table and its task functions share: the prepared run (:class:`EvalRun`) and a table entry
(:class:`EvalTask`). Both the frozen-feature tasks (:mod:`openeva.eval.tasks`) and the tasks that read their own
data (:mod:`openeva.eval.dense_tasks`) import them from here, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from openeva.data.labelled import ClassificationData, RetrievalData
from openeva.eval.config import EvalConfig

# What a task can need (EvalTask.needs): the labelled evaluation set, a labelled training set, the captioned
# evaluation set, the frozen model's image features, its text tower; "own_data": the task reads ``dataset``
# itself (in its check, into ``run.extras``), so it runs alone.
NEEDS = frozenset({"classes", "train", "captions", "features", "text", "own_data"})


@dataclass
class EvalRun:
    """Everything a task function reads: inputs checked and loaded once by ``evaluate`` for all its tasks."""

    model: Any  # the model as given (a name, or a built model)
    config: EvalConfig
    device: str  # resolved (openeva.runtime.resolve_device)
    precision: str  # resolved ("auto" decided by the hardware)
    common: dict[str, Any]  # result fields every record carries (model, pretrained, language, config)
    data_label: str = ""
    preprocess: Callable | None = None  # a built model's validation transform
    cls_data: ClassificationData | None = None
    train_data: ClassificationData | None = None
    ret_data: RetrievalData | None = None
    templates: list[str] | None = None
    encoder: Any = None  # runner._Encoder: encode(data, desc) -> EncodedImages, shared (and cached) by tasks
    tokenizer: Callable | None = None
    extras: dict[str, Any] = field(default_factory=dict)  # per-task prepared inputs (e.g. the finetune config)

    @property
    def out_dir(self) -> Path | None:
        return Path(self.config.output_dir) if self.config.output_dir is not None else None

    @property
    def make_plots(self) -> bool:
        return self.config.make_plots


@dataclass(frozen=True)
class EvalTask:
    """A table entry: ``run(EvalRun) -> result``, what it needs (:data:`NEEDS`), and an optional
    ``check(EvalRun)`` run with the input checks, before the model is built."""

    run: Callable[[EvalRun], dict]
    needs: frozenset[str] = frozenset()
    check: Callable[[EvalRun], None] | None = None

    def __post_init__(self):
        object.__setattr__(self, "needs", frozenset(self.needs))
        unknown = sorted(self.needs - NEEDS)
        if unknown:
            raise ValueError(f"unknown task needs {unknown}; known: {sorted(NEEDS)}")
