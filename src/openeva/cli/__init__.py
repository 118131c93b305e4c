"""``openeva <command>``: one entry point, one module per command (each defines ``register(subparsers)`` over the
shared option groups of :mod:`openeva.cli.options`).

:func:`main` is the one error boundary: a command raises on bad input (a ValueError or a missing / misplaced
file, whose message names the fix) and ``main`` prints it as one line, ``openeva CMD: error: ...``, and returns 2
(argparse's code for a usage error); an interrupt returns 130. Commands do not catch these themselves.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Command modules, in the order `openeva --help` lists them.
COMMAND_MODULES = [
    "openeva.cli.models_cmd",
    "openeva.cli.convert_cmd",
    "openeva.cli.quickstart_cmd",
    "openeva.cli.train_cmd",
    "openeva.cli.pretrain_cmd",
    "openeva.cli.eval_cmd",
    "openeva.cli.export_cmd",
    "openeva.cli.embed_cmd",
    "openeva.cli.index_cmd",
    "openeva.cli.search_cmd",
    "openeva.cli.dedup_cmd",
    "openeva.cli.classify_cmd",
    "openeva.cli.serve_cmd",
    "openeva.cli.segment_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="openeva", description="EVA-02 / EVA-CLIP: models, training, evaluation.")
    parser.add_argument("--version", action="version", version=f"openeva {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _version() -> str:
    from openeva import __version__

    return __version__


# what a command raises for bad input: the user can fix these, so they get one line instead of a traceback
BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError, PermissionError)


def main(argv: list[str] | None = None) -> int:
    """Run ``openeva ARGV``; returns the exit code (argparse itself exits 2 on an unknown option or value)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except BAD_INPUT as e:
        message = " ".join(str(e).split()) or type(e).__name__  # one line, whatever the message holds
        print(f"openeva {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"openeva {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
