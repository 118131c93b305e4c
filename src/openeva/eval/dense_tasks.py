"""``openeva eval --task segmentation`` and ``--task zeroshot_video``: entries of the task table
(:data:`openeva.eval.tasks.EVAL_TASKS`) that read their own data source, an image + mask folder or a class
folder of videos, instead of the classification / retrieval datasets ``evaluate`` indexes.

Each has a ``check`` (run with the input checks, before the model is built: folders, class names, options)
and a ``run``; the protocols themselves (:func:`~openeva.eval.segmentation.evaluate_segmentation`,
:func:`~openeva.evaluators.video.evaluate_zeroshot_video`) take plain inputs. Their options are the typed
sections ``EvalConfig.segmentation`` and ``EvalConfig.video``.
"""

from __future__ import annotations

from pathlib import Path

from openeva.data.classnames import load_classnames, load_templates
from openeva.data.segmentation import SegmentationFolder, resolve_folders
from openeva.data.video import VideoFolder, require_av
from openeva.dense.segment import DEFAULT_TEMPLATES
from openeva.eval.context import EvalRun
from openeva.eval.results import make_result
from openeva.eval.segmentation import evaluate_segmentation
from openeva.evaluators.video import DEFAULT_VIDEO_TEMPLATES, evaluate_zeroshot_video
from openeva.factory import create_model_and_transforms, get_tokenizer, preprocess_cfg


def _templates(run: EvalRun, default) -> list[str]:
    c = run.config
    return load_templates(c.templates, c.dataset_name) if c.templates is not None else list(default)


def _model(run: EvalRun, task: str, needs_preprocess: bool):
    """(model, tokenizer, preprocess, mean, std): built from a name, or the model given with its tokenizer."""
    mean = std = None
    if isinstance(run.model, str):
        model, _, preprocess = create_model_and_transforms(run.model, pretrained=run.config.pretrained)
        tokenizer = run.tokenizer or get_tokenizer(run.model)
        pcfg = preprocess_cfg(model)
        mean, std = pcfg.get("mean"), pcfg.get("std")
    else:
        model, tokenizer, preprocess = run.model, run.tokenizer, run.preprocess
        if tokenizer is None:
            raise ValueError(f"task {task} needs tokenizer= when the model is passed built")
        if needs_preprocess and preprocess is None:
            raise ValueError("a built model needs preprocess= (its validation transform)")
    if not hasattr(model, "encode_text"):
        raise ValueError(f"task {task} needs a CLIP model with a text tower; {run.common['model']} has no encode_text")
    return model, tokenizer, run.preprocess or preprocess, mean, std


# ------------------------------------------------------------------------------------------ segmentation
def check_segmentation(run: EvalRun) -> None:
    c, opts = run.config, run.config.segmentation
    dataset = c.dataset
    resolve_folders(dataset, opts.masks)  # image / mask folders exist
    if c.classnames is not None:
        names = load_classnames(c.classnames, c.dataset_name)
    else:
        guess = Path(dataset) / "classnames.txt"
        if not guess.is_file():
            raise ValueError("segmentation needs --classnames: the names of mask values 1..C (0 = background); "
                             f"or put a classnames.txt in {dataset}")
        names = load_classnames(str(guess))
    data = SegmentationFolder(dataset, opts.masks, classnames=names, name=c.dataset_name)
    run.data_label = data.name
    run.extras["segmentation"] = {"data": data, "names": names, "templates": _templates(run, DEFAULT_TEMPLATES)}


def run_segmentation(run: EvalRun) -> dict:
    x = run.extras["segmentation"]
    model, tokenizer, _, mean, std = _model(run, "segmentation", needs_preprocess=False)
    opts = run.config.segmentation
    fields = evaluate_segmentation(model, tokenizer, x["data"], x["names"], x["templates"],
                                   options=opts.dense_options(), bg_threshold=opts.bg_threshold,
                                   background=opts.background, mean=mean, std=std, device=run.device,
                                   progress=run.config.progress)
    metrics = fields.pop("metrics")
    return make_result(x["data"].name, task="segmentation", metrics=metrics, **fields, **run.common)


# --------------------------------------------------------------------------------------- zero-shot video
def check_zeroshot_video(run: EvalRun) -> None:
    c = run.config
    require_av()  # PyAV missing: fail before the model is built
    names = load_classnames(c.classnames, c.dataset_name) if c.classnames is not None else None
    data = VideoFolder(c.dataset, num_frames=c.video.num_frames, classnames=names, name=c.dataset_name)
    run.data_label = data.name
    run.extras["zeroshot_video"] = {"data": data, "templates": _templates(run, DEFAULT_VIDEO_TEMPLATES)}


def run_zeroshot_video(run: EvalRun) -> dict:
    x = run.extras["zeroshot_video"]
    model, tokenizer, preprocess, _, _ = _model(run, "zeroshot_video", needs_preprocess=True)
    fields = evaluate_zeroshot_video(model, tokenizer, x["data"], x["data"].classes, x["templates"], preprocess,
                                     device=run.device, precision=run.precision, progress=run.config.progress)
    fields.pop("scores"), fields.pop("labels")
    metrics = fields.pop("metrics")
    return make_result(x["data"].name, task="zeroshot_video", metrics=metrics, **fields, **run.common)
