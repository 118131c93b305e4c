"""``openeva eval`` and ``openeva eval-merge`` subcommands.

    openeva eval --model EVA02-B-16 --pretrained ckpt.safetensors --task zeroshot,linear_probe,knn \\
        --dataset data/val --train-dataset data/train --classnames imagenet1k --output results/
    openeva eval --model eva02_base_patch14_224 --pretrained mim_in22k --task finetune \\
        --train-dataset data/train --dataset data/val --finetune-config finetune_eva02_B \\
        --finetune-set schedule.epochs=5
    openeva eval-merge results/ more/run.json --out table.csv
"""

from __future__ import annotations

import argparse
import sys

from openeva.data.labelled import DATASET_TYPES
from openeva.runtime import PRECISION_CHOICES, resolve_precision
from openeva.eval.knn import DEFAULT_KS


def register(subparsers) -> None:
    """Add ``eval`` and ``eval-merge`` to an ``argparse`` subparsers object."""
    p = subparsers.add_parser("eval", help="evaluate a model: zeroshot, retrieval, linear_probe, knn, finetune",
                              description="Evaluate a model; writes one result JSON per task (and plots).")
    p.add_argument("--model", required=True, help="model name (e.g. EVA02-B-16)")
    p.add_argument("--pretrained", default=None, help="pretrained tag or checkpoint path")
    p.add_argument("--task", action="append", required=True,
                   help="zeroshot, retrieval, linear_probe, knn, finetune, segmentation, zeroshot_video; "
                        "repeat or comma-separate")
    p.add_argument("--dataset", required=True, help="evaluation dataset path (folder, csv, jsonl, tar, IDX)")
    p.add_argument("--dataset-type", default="auto", choices=DATASET_TYPES)
    p.add_argument("--dataset-name", default=None, help="name in the results (default: from the path)")
    p.add_argument("--train-dataset", default=None, help="training split for linear_probe / knn / finetune")
    p.add_argument("--train-dataset-type", default=None, choices=DATASET_TYPES)
    p.add_argument("--classnames", default=None,
                   help="builtin (imagenet1k, cifar10, cifar100, mnist, fashion_mnist) or a JSON/text file")
    p.add_argument("--templates", default=None,
                   help="builtin (imagenet1k = 80 OpenAI templates, imagenet1k_short = 7, cifar10, ...) "
                        "or a JSON/text file; '{c}' marks the class name")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="auto (default): bf16 where the device has native bf16, else fp32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--tome-r", type=int, default=0, metavar="R",
                   help="token merging: merge R image tokens per block (faster, training-free; 0: off)")
    p.add_argument("--int8", action="store_true", help="dynamic int8 Linear layers (CPU inference)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--cache-dir", default=None, help="feature cache folder (reused across runs)")
    p.add_argument("--output", default="eval_results", help="folder for result JSONs and plots")
    p.add_argument("--few-shot", type=int, default=None, metavar="K", help="K training samples per class")
    p.add_argument("--knn-k", type=int, nargs="+", default=list(DEFAULT_KS))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--language", default="en")
    p.add_argument("--finetune-config", default=None, metavar="FILE",
                   help="finetune recipe: a training config (finetune_* recipes in openeva.configs); default: "
                        "finetune_pretrained_tiny for pretrained weights, finetune_scratch_tiny for random ones")
    p.add_argument("--finetune-set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a finetune config field, e.g. schedule.epochs=3 optim.lr=1e-4 "
                        "task_options.ema_decay=0.999 (repeatable)")
    p.add_argument("--masks", default=None, help="segmentation: mask folder (default: DATASET/masks beside DATASET/images)")
    p.add_argument("--bg-threshold", type=float, default=None, help="segmentation: background below this top probability")
    p.add_argument("--background", action="append", default=[], metavar="PROMPT",
                   help="segmentation: a background prompt (repeatable); pixels it wins are background")
    p.add_argument("--dense-method", default=None, choices=("maskclip", "value"), help="segmentation: dense feature path")
    p.add_argument("--dense-refine", default=None, choices=("none", "fusion", "smooth", "fusion+smooth"))
    p.add_argument("--num-frames", type=int, default=8, help="zeroshot_video: frames sampled per video")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)

    m = subparsers.add_parser("eval-merge", help="merge eval result JSONs into one CSV table",
                              description="Merge result JSON files (or folders of them) into a CSV.")
    m.add_argument("results", nargs="+", help="result JSON files or folders")
    m.add_argument("--out", required=True, help="CSV file to write")
    m.set_defaults(func=run_merge)


def _fail(message: str) -> int:
    print(f"openeva eval: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace, *, model=None, tokenizer=None, preprocess=None) -> int:
    """Run ``openeva eval``; ``model``/``tokenizer``/``preprocess`` let callers (tests) inject a built model."""
    from openeva.eval.runner import evaluate

    try:
        precision, reason = resolve_precision(args.precision, args.device, int8=args.int8)
        print(f"precision {args.precision} -> {precision}: {reason}")
        if model is None and (args.tome_r or args.int8):
            model, preprocess, tokenizer = _fast_model(args)
        evaluate(
            model if model is not None else args.model,
            args.task,
            args.dataset,
            pretrained=args.pretrained,
            dataset_type=args.dataset_type,
            train_dataset=args.train_dataset,
            train_dataset_type=args.train_dataset_type,
            classnames=args.classnames,
            templates=args.templates,
            tokenizer=tokenizer,
            preprocess=preprocess,
            batch_size=args.batch_size,
            precision=precision,
            device=args.device,
            num_workers=args.workers,
            cache_dir=None if (args.tome_r or args.int8) else args.cache_dir,  # cached features are unmerged
            output_dir=args.output,
            few_shot=args.few_shot,
            knn_ks=tuple(args.knn_k),
            finetune_config=args.finetune_config,
            finetune_overrides=tuple(args.finetune_set),
            seed=args.seed,
            dataset_name=args.dataset_name,
            model_name=args.model,
            language=args.language,
            make_plots=not args.no_plots,
            progress=not args.no_progress,
            verbose=True,
            dense={"masks": args.masks, "bg_threshold": args.bg_threshold,
                   "background": args.background, "num_frames": args.num_frames,
                   "method": args.dense_method, "refine": args.dense_refine},
        )
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    print(f"results written to {args.output}")
    return 0


def _fast_model(args):
    """The model with token merging / int8 applied, for the frozen-feature tasks."""
    from openeva.factory import create_model_and_transforms, get_tokenizer

    if args.tome_r < 0:
        raise ValueError(f"--tome-r must be >= 0, got {args.tome_r}")
    if any("finetune" in t for t in args.task):
        raise ValueError("--tome-r and --int8 apply to the frozen-feature tasks, not finetune")
    if args.int8 and args.device != "cpu":
        raise ValueError("--int8 runs on the CPU; drop --device or --int8")
    model, _, preprocess = create_model_and_transforms(args.model, pretrained=args.pretrained, tome_r=args.tome_r,
                                                       int8=args.int8)
    tokenizer = get_tokenizer(args.model) if hasattr(model, "encode_text") else None
    print(f"token merging r={args.tome_r}" * bool(args.tome_r) + " int8" * args.int8)
    return model, preprocess, tokenizer


def run_merge(args: argparse.Namespace) -> int:
    """Run ``openeva eval-merge``: validate every result file, write the CSV, print the table."""
    from openeva.eval.results import format_table, load_results, write_csv

    try:
        results = load_results(args.results)
    except (ValueError, FileNotFoundError) as e:
        return _fail(str(e))
    out = write_csv(results, args.out)
    print(format_table(results))
    print(f"{len(results)} results merged into {out}")
    return 0
