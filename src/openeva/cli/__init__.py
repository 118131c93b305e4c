"""``openeva <command>``: one entry point, one module per command (each defines ``register(subparsers)``)."""

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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError) as e:  # bad input: a clear message
        print(f"openeva {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"openeva {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
