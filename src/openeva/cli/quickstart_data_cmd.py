"""``openeva quickstart --data PATH``: the options and the run of the EVA chain on the user's labelled images
(:mod:`openeva.quickstart.user_chain`); ``quickstart_cmd`` hands over to :func:`run` when ``--data`` is given."""

from __future__ import annotations

import sys

from openeva.cli.options import add_prompt_options


def add_arguments(p) -> None:
    g = p.add_argument_group("your own images (--data)")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="labelled training images: class folders, a CSV/JSONL index, tar shards or IDX files")
    g.add_argument("--val", default=None, metavar="PATH", help="labelled validation images (default: 20%% of --data)")
    add_prompt_options(p, classnames_help="class names for data whose labels are indices (IDX, numeric CSV labels): "
                                          "a file, one a line, or a builtin list (fashion_mnist, mnist, cifar10, "
                                          "cifar100, imagenet1k)",
                       templates_help="caption templates: a file, one a line with {} or {c} where the class name goes, "
                                      "or a builtin set such as imagenet1k (default: 7 photo templates)")
    g.add_argument("--minutes", type=float, default=None,
                   help="scale every stage's steps so that the whole run takes about this long on this CPU "
                        "(timed from short runs of the chain's own steps: fine-tunes with --data, CLIP "
                        "training for the built-in chain)")


def run(args) -> int:
    """The chain on ``--data``; ``--text-init`` is refused (this chain trains no EVA-CLIP whose text tower it sets)."""
    from openeva.data.classnames import load_classnames
    from openeva.quickstart import QuickstartStageError, UserChainConfig, format_table, run_user_quickstart

    if getattr(args, "text_init", None) is not None:
        raise ValueError(f"--text-init {args.text_init} applies to the built-in chain's EVA-CLIP stage; the --data "
                         "chain (teacher -> MIM -> fine-tunes) trains no EVA-CLIP: drop --text-init or --data")
    config = UserChainConfig.preset("fast" if args.fast else "full", seed=args.seed).scaled(args.scale)
    classnames = load_classnames(args.classnames) if args.classnames else None
    try:
        report = run_user_quickstart(args.data, args.out, config, val=args.val, templates=args.templates,
                                     classnames=classnames, minutes=args.minutes, overwrite=args.overwrite,
                                     progress=not args.no_progress)
    except QuickstartStageError as e:
        print(f"openeva quickstart: error: {e}", file=sys.stderr)
        return 1
    print()
    print(format_table(report))  # the verdict sentence closes the table
    print(f"\ntotal {report['wall_s']:.0f} s; report: {report['paths']['html']} (data: {report['paths']['json']})")
    return 0
