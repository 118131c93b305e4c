"""``openeva eval`` and ``openeva eval-merge`` subcommands.

    openeva eval --model EVA02-B-16 --pretrained ckpt.safetensors --task zeroshot,linear_probe,knn \\
        --dataset data/val --train-dataset data/train --classnames imagenet1k --out results/
    openeva eval --model eva02_base_patch14_224 --pretrained mim_in22k --task finetune \\
        --train-dataset data/train --dataset data/val --finetune-config finetune_eva02_B \\
        --set schedule.epochs=5
    openeva eval-merge results/ more/run.json --out table.csv
"""

from __future__ import annotations

import argparse

from openeva.cli.options import (add_data_options, add_inference_options, add_model_options, add_output_options,
                                 add_overrides, add_prompt_options, inference_device, overrides, precision_line)
from openeva.data.labelled import DATASET_TYPES
from openeva.runtime import resolve_precision
from openeva.eval.knn import DEFAULT_KS


def register(subparsers) -> None:
    """Add ``eval`` and ``eval-merge`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("eval", help="evaluate a model: zeroshot, retrieval, linear_probe, knn, finetune",
                              description="Evaluate a model; writes one result JSON per task (and plots).")
    add_model_options(p)
    p.add_argument("--task", action="append", required=True,
                   help="zeroshot, retrieval, linear_probe, knn, finetune, segmentation, zeroshot_video; "
                        "repeat or comma-separate")
    p.add_argument("--dataset", required=True, help="evaluation dataset path (folder, csv, jsonl, tar, IDX)")
    p.add_argument("--dataset-type", default="auto", choices=DATASET_TYPES)
    p.add_argument("--dataset-name", default=None, help="name in the results (default: from the path)")
    p.add_argument("--train-dataset", default=None, help="training split for linear_probe / knn / finetune")
    p.add_argument("--train-dataset-type", default=None, choices=DATASET_TYPES)
    add_prompt_options(p)
    add_data_options(p, workers=0)
    add_inference_options(p)
    p.add_argument("--cache-dir", default=None, help="feature cache folder (reused across runs)")
    g = add_output_options(p, default="eval_results", help="folder for result JSONs and plots", progress=True)
    g.add_argument("--no-plots", action="store_true")
    p.add_argument("--few-shot", type=int, default=None, metavar="K", help="K training samples per class")
    p.add_argument("--knn-k", type=int, nargs="+", default=list(DEFAULT_KS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--language", default="en")
    p.add_argument("--finetune-config", default=None, metavar="FILE",
                   help="finetune recipe: a training config (finetune_* recipes in openeva.configs); default: "
                        "finetune_pretrained_tiny for pretrained weights, finetune_scratch_tiny for random ones")
    add_overrides(p, aliases=("--finetune-set",))  # finetune config fields: schedule.epochs=3 optim.lr=1e-4
    p.add_argument("--masks", default=None, help="segmentation: mask folder (default: DATASET/masks beside DATASET/images)")
    p.add_argument("--bg-threshold", type=float, default=None, help="segmentation: background below this top probability")
    p.add_argument("--background", action="append", default=[], metavar="PROMPT",
                   help="segmentation: a background prompt (repeatable); pixels it wins are background")
    p.add_argument("--dense-method", default=None, choices=("maskclip", "value"), help="segmentation: dense feature path")
    p.add_argument("--dense-refine", default=None, choices=("none", "fusion", "smooth", "fusion+smooth"))
    p.add_argument("--num-frames", type=int, default=8, help="zeroshot_video: frames sampled per video")
    p.set_defaults(func=run)

    m = subparsers.add_parser("eval-merge", help="merge eval result JSONs into one CSV table",
                              description="Merge result JSON files (or folders of them) into a CSV.")
    m.add_argument("results", nargs="+", help="result JSON files or folders")
    add_output_options(m, required=True, help="CSV file to write")
    m.set_defaults(func=run_merge)


def run(args: argparse.Namespace, *, model=None, tokenizer=None, preprocess=None) -> int:
    """Run ``openeva eval``; ``model``/``tokenizer``/``preprocess`` let callers (tests) inject a built model."""
    from openeva.eval.runner import evaluate

    device = inference_device(args)
    precision, _ = resolve_precision(args.precision, device, int8=args.int8)
    print(precision_line(args, device))
    if model is None and (args.tome_r or args.int8):
        model, preprocess, tokenizer = _fast_model(args, device)
    evaluate(model if model is not None else args.model, eval_config(args, precision, device), tokenizer=tokenizer,
             preprocess=preprocess)
    print(f"results written to {args.out}")
    return 0


def eval_config(args: argparse.Namespace, precision: str, device: str):
    """The typed :class:`~openeva.eval.EvalConfig` of parsed ``openeva eval`` arguments."""
    from openeva.eval.config import EvalConfig, FinetuneEvalOptions, SegmentationEvalOptions, VideoEvalOptions
    from openeva.evaluators import KNNOptions, LinearProbeOptions

    fast = bool(args.tome_r or args.int8)
    return EvalConfig(
        tasks=tuple(args.task), dataset=args.dataset, dataset_type=args.dataset_type, dataset_name=args.dataset_name,
        train_dataset=args.train_dataset, train_dataset_type=args.train_dataset_type, classnames=args.classnames,
        templates=args.templates, pretrained=args.pretrained, model_name=args.model, batch_size=args.batch_size,
        precision=precision, device=device, num_workers=args.workers,
        cache_dir=None if fast else args.cache_dir,  # cached features are unmerged
        output_dir=args.out, seed=args.seed, language=args.language, make_plots=not args.no_plots,
        progress=not args.no_progress, verbose=True,
        knn=KNNOptions(ks=tuple(args.knn_k), few_shot=args.few_shot, seed=args.seed),
        linear_probe=LinearProbeOptions(few_shot=args.few_shot, seed=args.seed),
        finetune=FinetuneEvalOptions(config=args.finetune_config, overrides=tuple(overrides(args))),
        segmentation=SegmentationEvalOptions(masks=args.masks, bg_threshold=args.bg_threshold,
                                             background=tuple(args.background), method=args.dense_method,
                                             refine=args.dense_refine),
        video=VideoEvalOptions(num_frames=args.num_frames),
    )


def _fast_model(args, device: str):
    """The model with token merging / int8 applied, for the frozen-feature tasks."""
    from openeva.factory import create_model_and_transforms, get_tokenizer

    if any("finetune" in t for t in args.task):
        raise ValueError("--tome-r and --int8 apply to the frozen-feature tasks, not finetune")
    if args.int8 and device != "cpu":
        raise ValueError("--int8 runs on the CPU; drop --device or --int8")
    model, _, preprocess = create_model_and_transforms(args.model, pretrained=args.pretrained, tome_r=args.tome_r,
                                                       int8=args.int8)
    tokenizer = get_tokenizer(args.model) if hasattr(model, "encode_text") else None
    print(f"token merging r={args.tome_r}" * bool(args.tome_r) + " int8" * args.int8)
    return model, preprocess, tokenizer


def run_merge(args: argparse.Namespace) -> int:
    """Run ``openeva eval-merge``: validate every result file, write the CSV, print the table."""
    from openeva.eval.results import format_table, load_results, write_csv

    results = load_results(args.results)
    out = write_csv(results, args.out)
    print(format_table(results))
    print(f"{len(results)} results merged into {out}")
    return 0
