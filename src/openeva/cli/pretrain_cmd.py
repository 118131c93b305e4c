"""``openeva pretrain CONFIG [key=value ...]``: EVA-02 masked image modelling against a frozen CLIP teacher.

The same engine, run directory, progress bar, metrics, plots, atomic checkpoints and exact resume as ``openeva
train``; the config's ``task`` must be MIM (the ``mim_*`` recipes (``openeva.configs``)). When the run completes, ``RUN/final`` is a
plain backbone checkpoint: ``openeva train CLIP_CONFIG model.pretrained_image=RUN/final`` starts an EVA-CLIP
from it, ``create_model(RUN/final, num_classes=K)`` a classifier.

    openeva pretrain mim_tiny
    torchrun --nproc_per_node 8 -m openeva pretrain mim_b data.train=/data/shards-{0000..9999}.tar \\
        task_options.teacher_pretrained=/ckpt/EVA01_CLIP_g_14_psz14_s11B.pt
"""

from __future__ import annotations

from openeva.cli.options import add_overrides
from openeva.cli.train_cmd import dry_run, run_config


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="EVA-02 MIM pretraining of a backbone against a CLIP teacher",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="a Python file defining `config = TrainConfig(task='mim', ...)` "
                                  "(see mim_* recipes in openeva.configs), or a MIM run's config.json")
    add_overrides(p, positional=True)
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config, teacher, student and data paths, print the resolved precision and "
                        "config, train nothing (may also follow the overrides)")
    p.set_defaults(func=run)


def run(args) -> int:
    from openeva.train.mim_task import pretrain
    from openeva.train.options import canonical_task

    cfg = run_config(args)
    if canonical_task(cfg.task) != "mim":
        raise ValueError(f"{args.config} configures task={cfg.task!r}, not MIM pretraining (task='mim'); "
                         "use `openeva train` for it")
    if args.dry_run:
        return dry_run(cfg)
    run_dir = pretrain(cfg)
    final = run_dir / "final"
    if final.is_dir():
        print(f"run: {run_dir}\nfinal backbone: {final}  (model.pretrained_image={final} for `openeva train`)")
    else:
        print(f"run: {run_dir} (stopped before the last step; continue with resume=latest)")
    return 0
