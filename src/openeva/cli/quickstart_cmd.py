"""``openeva quickstart [--out DIR]``: the EVA chain end to end on built-in shapes data, with a report.

Trains a CLIP teacher, MIM-pretrains an EVA-02 student against it, trains an EVA-CLIP from the student and a
CLIP from scratch with the same compute, evaluates all on held-out (shape, color) pairs and writes
``DIR/report.json``, ``DIR/report.html`` and ``DIR/plots/``. About 10 minutes on 2 CPU cores; no downloads.
"""

from __future__ import annotations

import sys

from openeva.cli import quickstart_data_cmd


def register(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="run the whole EVA chain on built-in data and write a report",
                              description=__doc__.splitlines()[0])
    p.add_argument("--out", default="quickstart_out", help="output folder (default: ./quickstart_out)")
    p.add_argument("--seed", type=int, default=0, help="seed of data order and initial weights (default: 0)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="multiply every stage's steps and the sample counts (e.g. 0.5: about half the time)")
    p.add_argument("--fast", action="store_true", help="a tiny smoke run (well under a minute; numbers meaningless)")
    p.add_argument("--text-init", choices=("teacher", "random"), default="teacher",
                   help="EVA-CLIP text tower: the teacher's (EVA-CLIP's recipe) or random (default: teacher)")
    p.add_argument("--overwrite", action="store_true", help="replace a quickstart already in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    quickstart_data_cmd.add_arguments(p)
    p.set_defaults(func=run)


def run(args) -> int:
    if args.data is not None:
        return quickstart_data_cmd.run(args)
    from openeva.quickstart import QuickstartConfig, QuickstartStageError, format_table, run_quickstart

    config = QuickstartConfig.preset("fast" if args.fast else "full", seed=args.seed, text_init=args.text_init)
    config = config.scaled(args.scale)
    try:
        report = run_quickstart(args.out, config, overwrite=args.overwrite, progress=not args.no_progress)
    except QuickstartStageError as e:
        print(f"openeva quickstart: error: {e}", file=sys.stderr)
        return 1
    print()
    print(format_table(report))
    print(f"\ntotal {report['wall_s']:.0f} s; report: {report['paths']['html']} (data: {report['paths']['json']})")
    return 0
