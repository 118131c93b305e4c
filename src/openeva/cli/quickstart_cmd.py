"""``openeva quickstart [--out DIR]``: the EVA chain end to end on built-in shapes data, with a report.

Trains a CLIP teacher, MIM-pretrains an EVA-02 student against it, trains an EVA-CLIP from the student and a
CLIP from scratch with the same compute, evaluates all on held-out (shape, color) pairs and writes
``DIR/report.json``, ``DIR/report.html`` and ``DIR/plots/``. About 10 minutes on 2 CPU cores; no downloads.
"""

from __future__ import annotations

import sys

from openeva.cli import quickstart_data_cmd
from openeva.cli.options import add_output_options


def register(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="run the whole EVA chain on built-in data and write a report",
                              description=__doc__.splitlines()[0])
    add_output_options(p, default="quickstart_out", help="output folder", progress=True)
    p.add_argument("--seed", type=int, default=0, help="seed of data order and initial weights (default: 0)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every stage's steps and the sample counts (e.g. 0.5: about half the time)")
    p.add_argument("--fast", action="store_true", help="a tiny smoke run (well under a minute; numbers meaningless)")
    p.add_argument("--text-init", choices=("teacher", "random"), default=None,
                   help="EVA-CLIP text tower of the built-in chain: the teacher's (EVA-CLIP's recipe) or random "
                        "(default: teacher); refused with --data, whose chain trains no EVA-CLIP")
    p.add_argument("--overwrite", action="store_true", help="replace a quickstart already in --out")
    quickstart_data_cmd.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """The built-in chain, or ``--data``'s (:func:`quickstart_data_cmd.run`); ``--minutes`` plans either."""
    if args.data is not None:
        return quickstart_data_cmd.run(args)
    from openeva.quickstart import QuickstartConfig, QuickstartStageError, format_table, run_quickstart

    data_only = [flag for flag, value in (("--val", args.val), ("--templates", args.templates),
                                          ("--classnames", args.classnames)) if value is not None]
    if data_only:
        raise ValueError(f"{', '.join(data_only)} only apply with --data PATH (the built-in chain makes its own "
                         "data); add --data or drop them")
    config = QuickstartConfig.preset("fast" if args.fast else "full", seed=args.seed,
                                     text_init=args.text_init or "teacher").scaled(args.scale)
    try:
        report = run_quickstart(args.out, config, minutes=args.minutes, overwrite=args.overwrite,
                                progress=not args.no_progress)
    except QuickstartStageError as e:
        print(f"openeva quickstart: error: {e}", file=sys.stderr)
        return 1
    print()
    print(format_table(report))
    print(f"\ntotal {report['wall_s']:.0f} s; report: {report['paths']['html']} (data: {report['paths']['json']})")
    return 0
