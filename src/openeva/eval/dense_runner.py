"""``openeva eval --task segmentation`` and ``--task zeroshot_video``: tasks that read their own data sources
(image + mask folders, class folders of videos) rather than the image classification / retrieval datasets.

Same contract as the other tasks: every input checked before the model is built, one CLIP_benchmark-shaped
result JSON per task under ``output_dir``. ``evaluate`` hands these tasks here; each protocol function
(:func:`openeva.eval.segmentation.evaluate_segmentation`, :func:`openeva.eval.video.evaluate_zeroshot_video`)
takes plain inputs so a task table can call it directly.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

from openeva.eval.results import format_table, make_result, save_result

DENSE_TASKS = frozenset({"segmentation", "zeroshot_video"})
DEFAULT_VIDEO_TEMPLATES = ("a video of a {c}.", "a photo of a {c}.", "a video of a person doing {c}.")


def evaluate_dense(
    model,
    task_list: Sequence[str],
    dataset,
    *,
    pretrained: str | None = None,
    classnames=None,
    templates=None,
    tokenizer: Callable | None = None,
    preprocess: Callable | None = None,
    precision: str = "fp32",
    device: str = "cpu",
    output_dir=None,
    dataset_name: str | None = None,
    model_name: str | None = None,
    language: str = "en",
    seed: int = 0,
    progress: bool = True,
    verbose: bool = False,
    dense: dict | None = None,
) -> list[dict]:
    """Run ``segmentation`` / ``zeroshot_video`` (``dense`` holds ``masks``, ``bg_threshold``, ``background``
    (prompts), ``num_frames``,
    ``method``, ``refine``)."""
    from openeva.dense.segment import DEFAULT_TEMPLATES, DenseOptions
    from openeva.eval.zeroshot import load_classnames, load_templates

    opts = dict(dense or {})
    unknown = set(opts) - {"masks", "bg_threshold", "background", "num_frames", "method", "refine"}
    if unknown:
        raise ValueError(f"unknown dense-task options {sorted(unknown)}")
    other = [t for t in task_list if t not in DENSE_TASKS]
    if other:
        raise ValueError(f"tasks {sorted(DENSE_TASKS & set(task_list))} read their own data; run {other} "
                         "in a separate openeva eval call")
    if len(task_list) > 1:
        raise ValueError("segmentation and zeroshot_video read different datasets; run them one at a time")
    task = task_list[0]

    # ---- 1. inputs
    names = load_classnames(classnames, dataset_name) if classnames is not None else None
    if task == "segmentation":
        from openeva.data.segmentation import SegmentationFolder, resolve_folders

        image_dir, _ = resolve_folders(dataset, opts.get("masks"))
        if names is None:
            guess = Path(dataset) / "classnames.txt"
            if not guess.is_file():
                raise ValueError("segmentation needs --classnames: the names of mask values 1..C (0 = background)"
                                 f"; or put a classnames.txt in {dataset}")
            names = load_classnames(str(guess))
        data = SegmentationFolder(dataset, opts.get("masks"), classnames=names, name=dataset_name)
        template_list = load_templates(templates, dataset_name) if templates is not None else list(DEFAULT_TEMPLATES)
        options = DenseOptions()
        for key in ("method", "refine"):
            if opts.get(key):
                options = replace(options, **{key: opts[key]})
        bg = opts.get("bg_threshold")
        if bg is not None and not 0.0 <= bg <= 1.0:
            raise ValueError(f"--bg-threshold must be in [0, 1], got {bg}")
    else:
        from openeva.data.video import VideoFolder, require_av

        require_av()  # PyAV missing: fail before the model is built
        num_frames = int(opts.get("num_frames") or 8)
        data = VideoFolder(dataset, num_frames=num_frames, classnames=names, name=dataset_name)
        names = data.classes
        template_list = (load_templates(templates, dataset_name) if templates is not None
                         else list(DEFAULT_VIDEO_TEMPLATES))

    # ---- 2. model
    model_label = model_name or (model if isinstance(model, str) else type(model).__name__)
    mean = std = None
    if isinstance(model, str):
        from openeva.factory import create_model_and_transforms, get_tokenizer, preprocess_cfg

        model_obj, _, default_preprocess = create_model_and_transforms(model, pretrained=pretrained)
        preprocess = preprocess or default_preprocess
        tokenizer = tokenizer or get_tokenizer(model)
        pcfg = preprocess_cfg(model_obj)
        mean, std = pcfg.get("mean"), pcfg.get("std")
    else:
        model_obj = model
        if tokenizer is None:
            raise ValueError(f"task {task} needs tokenizer= when the model is passed built")
        if task == "zeroshot_video" and preprocess is None:
            raise ValueError("a built model needs preprocess= (its validation transform)")
    if not hasattr(model_obj, "encode_text"):
        raise ValueError(f"task {task} needs a CLIP model with a text tower; {model_label} has no encode_text")

    # ---- 3. run
    if task == "segmentation":
        from openeva.eval.segmentation import evaluate_segmentation

        fields = evaluate_segmentation(model_obj, tokenizer, data, names, template_list, options=options,
                                       bg_threshold=bg, background=tuple(opts.get("background") or ()), mean=mean, std=std, device=device, progress=progress)
    else:
        from openeva.eval.video import evaluate_zeroshot_video

        fields = evaluate_zeroshot_video(model_obj, tokenizer, data, names, template_list, preprocess,
                                         device=device, precision=precision, progress=progress)
        fields.pop("scores"), fields.pop("labels")
    metrics = fields.pop("metrics")
    result = make_result(data.name, model=model_label, pretrained=pretrained, task=task, metrics=metrics,
                         language=language, config={"precision": precision, "device": str(device), "seed": seed},
                         **fields)
    if output_dir is not None:
        result["result_file"] = str(save_result(result, Path(output_dir)))
    if verbose:
        print(format_table([result]))
    return [result]
