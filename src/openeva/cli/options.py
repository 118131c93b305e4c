"""The option groups every command shares, declared once: a command's ``register`` calls the ``add_*`` functions
for the groups it takes, and its ``run`` reads them through the helpers below, so an option means the same thing,
has the same default and the same help in every command.

Groups (each ``add_*`` returns its argparse group, so a command may add its own options to it):

- model:      ``--model``, ``--pretrained``
- inference:  ``--device`` (auto | cpu | cuda | cuda:N; default auto everywhere), ``--precision`` (default auto,
              the resolved precision and why are printed), ``--tome-r``, ``--int8``
- data:       ``--batch-size``, ``--workers``, ``--image-key``, ``--caption-key``
- prompts:    ``--classnames``, ``--templates``
- output:     ``--out`` (``--output`` is an alias; both set ``args.out``), ``--no-progress``
- overrides:  ``--set KEY=VALUE`` (repeatable) everywhere a config is overridden; ``train`` and ``pretrain`` also
              take them as positional ``key=value`` words after the config (the older form, kept)
"""

from __future__ import annotations

import argparse
import os
import sys

from openeva.runtime import DEVICE_HELP, PRECISION_CHOICES, describe_precision, resolve_device

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


# ---------------------------------------------------------------------------------------------- value checks


def device_arg(value: str) -> str:
    """argparse ``type`` for ``--device``: the grammar of :func:`openeva.runtime.resolve_device` (availability of
    the device is checked when the command runs, where the message can name the machine's devices)."""
    index = value.removeprefix("cuda:")
    if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and index.isdigit()):
        return value
    raise argparse.ArgumentTypeError(f"must be {DEVICE_HELP}; got {value!r}")


def override_arg(value: str) -> str:
    """argparse ``type`` for ``--set``: a ``key=value`` pair with a non-empty key."""
    key, eq, _ = value.partition("=")
    if not eq or not key.strip():
        raise argparse.ArgumentTypeError(f"overrides are key=value (e.g. optim.lr=1e-4); got {value!r}")
    return value


def _non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {number}")
    return number


# ---------------------------------------------------------------------------------------------- the groups


def add_model_options(p, *, required: bool = True, model_help: str | None = None,
                      pretrained_help: str | None = None):
    """``--model`` and ``--pretrained``."""
    g = p.add_argument_group("model")
    g.add_argument("--model", required=required,
                   help=model_help or "a registered model name (e.g. EVA02-B-16; `openeva models` lists them) or an "
                                      "openeva checkpoint directory")
    g.add_argument("--pretrained", default=None,
                   help=pretrained_help or "a published tag or a checkpoint file (default: the model's own weights)")
    return g


def add_inference_options(p, *, tome: bool = True, int8: bool = True):
    """``--device``, ``--precision`` and, where the command can apply them, ``--tome-r`` and ``--int8``."""
    g = p.add_argument_group("inference")
    g.add_argument("--device", default="auto", type=device_arg,
                   help=f"{DEVICE_HELP}; --int8 and ONNX exports run on the CPU (default: auto)")
    g.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="auto: bf16 where the device runs it natively, else fp32 (the choice and why are printed)")
    if tome:
        g.add_argument("--tome-r", type=_non_negative_int, default=0, metavar="R",
                       help="token merging: merge R image tokens per block (fewer tokens, faster; 0: off)")
    if int8:
        g.add_argument("--int8", action="store_true", help="dynamic int8 Linear layers (CPU)")
    return g


def add_data_options(p, *, batch_size: int = 64, workers: int = DEFAULT_WORKERS, image_key: bool = False,
                     caption_key: bool = False):
    """``--batch-size``, ``--workers`` and, for CSV/JSONL indexes, ``--image-key`` / ``--caption-key``."""
    g = p.add_argument_group("data")
    g.add_argument("--batch-size", type=int, default=batch_size, help=f"images per batch (default: {batch_size})")
    g.add_argument("--workers", type=_non_negative_int, default=workers,
                   help=f"data-loading worker processes (default: {workers})")
    if image_key:
        g.add_argument("--image-key", help="image column of a CSV/JSONL index")
    if caption_key:
        g.add_argument("--caption-key", help="caption column of a CSV/JSONL index")
    return g


def add_prompt_options(p, *, classnames: bool = True, classnames_in=None, classnames_help: str | None = None,
                       templates_help: str | None = None):
    """``--classnames`` and ``--templates`` (the text side of zero-shot classification and segmentation);
    ``classnames_in`` is the group that takes ``--classnames`` where it is one of exclusive choices."""
    g = p.add_argument_group("prompts")
    if classnames:
        (classnames_in or g).add_argument("--classnames", default=None, metavar="NAME|FILE",
                                          help=classnames_help or "builtin list (imagenet1k, cifar10, cifar100, "
                                                                  "mnist, fashion_mnist) or a file (JSON, or one name "
                                                                  "a line)")
    g.add_argument("--templates", default=None,
                   help=templates_help or "builtin name (imagenet1k = 80 OpenAI templates, imagenet1k_short, ...) or "
                                          "a JSON/text file; '{c}' marks the class name")
    return g


def add_output_options(p, *, required: bool = False, default: str | None = None, help: str = "output folder",
                       progress: bool = False):
    """``--out`` (alias ``--output``; both set ``args.out``) and, with ``progress``, ``--no-progress``."""
    g = p.add_argument_group("output")
    shown = f" (default: {default})" if default is not None else ""
    g.add_argument("--out", "--output", dest="out", required=required, default=default, metavar="PATH",
                   help=help + shown)
    if progress:
        g.add_argument("--no-progress", action="store_true", help="no progress bars")
    return g


def add_overrides(p, *, positional: bool = False, aliases: tuple[str, ...] = ()):
    """``--set KEY=VALUE`` (repeatable; dotted keys for sections: ``optim.lr=1e-4``). With ``positional`` the
    command also takes ``key=value`` words after its positional arguments (``openeva train CONFIG optim.lr=1e-4``).
    Read them with :func:`overrides`."""
    g = p.add_argument_group("overrides")
    g.add_argument("--set", *aliases, dest="set", action="append", default=[], type=override_arg,
                   metavar="KEY=VALUE", help="override a config field, dotted for sections, e.g. optim.lr=1e-4 "
                                             "schedule.epochs=3 (repeatable)")
    if positional:
        p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                       help="config overrides, the same as --set: optim.lr=1e-4 data.batch_size=64 resume=latest")
    return g


# ---------------------------------------------------------------------------------------------- reading them


def overrides(args) -> list[str]:
    """The ``key=value`` overrides in command-line order: ``--set`` values, then the positional words.

    argparse hands everything after the first positional word over unparsed, so ``--dry-run`` and ``--set K=V``
    written after an override are taken here (``--dry-run`` sets ``args.dry_run``); any other option there is an
    error naming the form."""
    out = list(getattr(args, "set", []) or [])
    words = iter(getattr(args, "overrides", []) or [])
    for word in words:
        if word == "--dry-run" and hasattr(args, "dry_run"):
            args.dry_run = True
        elif word == "--set":
            out.append(_override(next(words, "")))
        elif word.startswith("--set="):
            out.append(_override(word.removeprefix("--set=")))
        elif word.startswith("-"):
            raise ValueError(f"unknown option {word!r} among the overrides; overrides are key=value")
        else:
            out.append(_override(word))
    return out


def _override(word: str) -> str:
    try:
        return override_arg(word)
    except argparse.ArgumentTypeError as e:
        raise ValueError(str(e)) from None


def inference_device(args) -> str:
    """``--device`` resolved by the one rule (:func:`openeva.runtime.resolve_device`); "auto" is the CPU for
    ``--int8``, which only has CPU kernels."""
    if args.device == "auto" and getattr(args, "int8", False):
        return "cpu"
    return str(resolve_device(args.device, int(os.environ.get("LOCAL_RANK", "0"))))


def precision_line(args, device: str) -> str:
    """``precision auto -> fp32: <reason>``, the line every command that runs a model prints at start."""
    return describe_precision(args.precision, device, int8=getattr(args, "int8", False))


def encoder_options(args) -> dict:
    """Keyword arguments of :func:`openeva.serve.encoder.load_encoder` from the model/inference groups; the
    encoder prints its runtime, device and precision (with the reason) to stderr."""
    return {"precision": args.precision, "tome_r": args.tome_r or None, "int8": args.int8, "device": args.device,
            "log": lambda line: print(line, file=sys.stderr)}
