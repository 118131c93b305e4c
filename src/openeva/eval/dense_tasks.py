"""``openeva eval --task segmentation`` and ``--task zeroshot_video``: entries of the task table
(:data:`openeva.eval.tasks.EVAL_TASKS`) that read their own data source, an image + mask folder or a class
folder of videos, instead of the classification / retrieval datasets ``evaluate`` indexes.

Each has a ``check`` (run with the input checks, before the model is built: folders, class names, options)
and a ``run``; the protocols themselves (:func:`~openeva.eval.segmentation.evaluate_segmentation`,
:func:`~openeva.eval.video.evaluate_zeroshot_video`) take plain inputs. ``evaluate(..., dense={...})`` carries
their options: ``masks``, ``bg_threshold``, ``background`` (prompts), ``method``, ``refine``, ``num_frames``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from openeva.data.classnames import load_classnames, load_templates
from openeva.data.segmentation import SegmentationFolder, resolve_folders
from openeva.data.video import VideoFolder, require_av
from openeva.dense.segment import DEFAULT_TEMPLATES, DenseOptions
from openeva.eval.results import make_result
from openeva.eval.segmentation import evaluate_segmentation
from openeva.eval.video import evaluate_zeroshot_video
from openeva.factory import create_model_and_transforms, get_tokenizer, preprocess_cfg

if TYPE_CHECKING:
    from openeva.eval.tasks import EvalRun

DENSE_OPTIONS = frozenset({"masks", "bg_threshold", "background", "num_frames", "method", "refine"})
DEFAULT_VIDEO_TEMPLATES = ("a video of a {c}.", "a photo of a {c}.", "a video of a person doing {c}.")


def _dense_options(run: EvalRun) -> dict:
    opts = dict(run.options.get("dense") or {})
    unknown = sorted(set(opts) - DENSE_OPTIONS)
    if unknown:
        raise ValueError(f"unknown dense-task options {unknown}; known: {sorted(DENSE_OPTIONS)}")
    return opts


def _templates(run: EvalRun, default) -> list[str]:
    o = run.options
    return load_templates(o["templates"], o["dataset_name"]) if o["templates"] is not None else list(default)


def _model(run: EvalRun, task: str, needs_preprocess: bool):
    """(model, tokenizer, preprocess, mean, std): built from a name, or the model given with its tokenizer."""
    o = run.options
    mean = std = None
    if isinstance(run.model, str):
        model, _, preprocess = create_model_and_transforms(run.model, pretrained=run.pretrained)
        tokenizer = run.tokenizer or get_tokenizer(run.model)
        pcfg = preprocess_cfg(model)
        mean, std = pcfg.get("mean"), pcfg.get("std")
    else:
        model, tokenizer, preprocess = run.model, run.tokenizer, o["preprocess"]
        if tokenizer is None:
            raise ValueError(f"task {task} needs tokenizer= when the model is passed built")
        if needs_preprocess and preprocess is None:
            raise ValueError("a built model needs preprocess= (its validation transform)")
    if not hasattr(model, "encode_text"):
        raise ValueError(f"task {task} needs a CLIP model with a text tower; {run.common['model']} has no encode_text")
    return model, tokenizer, o["preprocess"] or preprocess, mean, std


# ------------------------------------------------------------------------------------------ segmentation
def check_segmentation(run: EvalRun) -> None:
    o, opts = run.options, _dense_options(run)
    dataset = run.extras["dataset"]
    resolve_folders(dataset, opts.get("masks"))  # image / mask folders exist
    if o["classnames"] is not None:
        names = load_classnames(o["classnames"], o["dataset_name"])
    else:
        guess = Path(dataset) / "classnames.txt"
        if not guess.is_file():
            raise ValueError("segmentation needs --classnames: the names of mask values 1..C (0 = background); "
                             f"or put a classnames.txt in {dataset}")
        names = load_classnames(str(guess))
    data = SegmentationFolder(dataset, opts.get("masks"), classnames=names, name=o["dataset_name"])
    options = DenseOptions()
    for key in ("method", "refine"):
        if opts.get(key):
            options = replace(options, **{key: opts[key]})
    bg = opts.get("bg_threshold")
    if bg is not None and not 0.0 <= bg <= 1.0:
        raise ValueError(f"--bg-threshold must be in [0, 1], got {bg}")
    run.data_label = data.name
    run.extras["segmentation"] = {"data": data, "names": names, "options": options, "bg_threshold": bg,
                                  "background": tuple(opts.get("background") or ()),
                                  "templates": _templates(run, DEFAULT_TEMPLATES)}


def run_segmentation(run: EvalRun) -> dict:
    x = run.extras["segmentation"]
    model, tokenizer, _, mean, std = _model(run, "segmentation", needs_preprocess=False)
    fields = evaluate_segmentation(model, tokenizer, x["data"], x["names"], x["templates"], options=x["options"],
                                   bg_threshold=x["bg_threshold"], background=x["background"], mean=mean, std=std,
                                   device=run.options["device"], progress=run.options["progress"])
    metrics = fields.pop("metrics")
    return make_result(x["data"].name, task="segmentation", metrics=metrics, **fields, **run.common)


# --------------------------------------------------------------------------------------- zero-shot video
def check_zeroshot_video(run: EvalRun) -> None:
    o, opts = run.options, _dense_options(run)
    require_av()  # PyAV missing: fail before the model is built
    names = load_classnames(o["classnames"], o["dataset_name"]) if o["classnames"] is not None else None
    num_frames = int(opts.get("num_frames") or 8)
    data = VideoFolder(run.extras["dataset"], num_frames=num_frames, classnames=names, name=o["dataset_name"])
    run.data_label = data.name
    run.extras["zeroshot_video"] = {"data": data, "templates": _templates(run, DEFAULT_VIDEO_TEMPLATES)}


def run_zeroshot_video(run: EvalRun) -> dict:
    x = run.extras["zeroshot_video"]
    model, tokenizer, preprocess, _, _ = _model(run, "zeroshot_video", needs_preprocess=True)
    fields = evaluate_zeroshot_video(model, tokenizer, x["data"], x["data"].classes, x["templates"], preprocess,
                                     device=run.options["device"], precision=run.options["precision"],
                                     progress=run.options["progress"])
    fields.pop("scores"), fields.pop("labels")
    metrics = fields.pop("metrics")
    return make_result(x["data"].name, task="zeroshot_video", metrics=metrics, **fields, **run.common)
