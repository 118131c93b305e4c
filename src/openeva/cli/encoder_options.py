"""The inference options every command that encodes with a CLIP shares (embed, classify, search, serve):
precision (auto by default: the hardware decides), token merging and int8; an ONNX export folder given as
``--model`` runs on ONNX Runtime instead."""

from __future__ import annotations

import sys

from openeva.runtime import PRECISION_CHOICES


def add_encoder_arguments(p) -> None:
    g = p.add_argument_group("inference")
    g.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                   help="auto: bf16 where the device runs it natively, else fp32 (the choice is printed)")
    g.add_argument("--tome-r", type=int, default=0, metavar="R",
                   help="token merging: merge R image tokens per block (fewer tokens, faster; 0: off)")
    g.add_argument("--int8", action="store_true", help="dynamic int8 Linear layers (CPU)")
    g.add_argument("--device", default="auto",
                   help="auto: the CUDA GPU when there is one (the CPU for --int8 and ONNX exports), else cpu; "
                        "or cpu, cuda, cuda:N")


def encoder_options(args) -> dict:
    """Keyword arguments of :func:`openeva.serve.encoder.load_encoder` from the parsed options."""
    if args.tome_r < 0:
        raise ValueError(f"--tome-r must be >= 0, got {args.tome_r}")
    return {"precision": args.precision, "tome_r": args.tome_r or None, "int8": args.int8, "device": args.device,
            "log": lambda line: print(line, file=sys.stderr)}
