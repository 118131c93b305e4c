"""``openeva quickstart --data PATH``: the options and the run of the EVA chain on the user's labelled images
(:mod:`openeva.quickstart.user_data`); ``quickstart_cmd`` hands over to :func:`run` when ``--data`` is given."""

from __future__ import annotations

import sys


def add_arguments(p) -> None:
    g = p.add_argument_group("your own images (--data)")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="labelled training images: class folders, a CSV/JSONL index, tar shards or IDX files")
    g.add_argument("--val", default=None, metavar="PATH", help="labelled validation images (default: 20%% of --data)")
    g.add_argument("--templates", default=None, metavar="FILE",
                   help="caption templates, one a line with {} for the class name (default: 7 photo templates)")
    g.add_argument("--classnames", default=None, metavar="FILE|NAME",
                   help="class names for data whose labels are indices (IDX, numeric CSV labels): a file, one a "
                        "line, or a builtin list (fashion_mnist, mnist, cifar10, cifar100, imagenet1k)")
    g.add_argument("--minutes", type=float, default=None,
                   help="scale every stage's steps so that the whole run takes about this long on this CPU "
                        "(timed from two short fine-tunes after the data is prepared)")


def run(args) -> int:
    from openeva.quickstart.pipeline import QuickstartStageError
    from openeva.quickstart.user_data import UserChainConfig, run_user_quickstart
    from openeva.quickstart.user_report import format_table

    try:
        config = UserChainConfig.preset("fast" if args.fast else "full", seed=args.seed).scaled(args.scale)
        classnames = None
        if args.classnames:
            from openeva.data.classnames import load_classnames

            classnames = load_classnames(args.classnames)
        report = run_user_quickstart(args.data, args.out, config, val=args.val, templates=args.templates,
                                     classnames=classnames, minutes=args.minutes, overwrite=args.overwrite,
                                     progress=not args.no_progress)
    except QuickstartStageError as e:
        print(f"openeva quickstart: error: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, ValueError) as e:
        print(f"openeva quickstart: error: {e}", file=sys.stderr)
        return 2
    print()
    print(format_table(report))
    print(f"\n{report['verdict']['sentence']}")
    print(f"\ntotal {report['wall_s']:.0f} s; report: {report['paths']['html']} (data: {report['paths']['json']})")
    return 0
