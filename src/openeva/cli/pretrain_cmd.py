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

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("pretrain", help="EVA-02 MIM pretraining of a backbone against a CLIP teacher",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="a Python file defining `config = TrainConfig(task='mim', ...)` "
                                  "(see mim_* recipes in openeva.configs), or a MIM run's config.json")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                   help="override config fields: optim.lr=1e-3 task_options.teacher=EVA01-g-14 resume=latest")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config, teacher, student and data paths, print the resolved config, train "
                        "nothing (may also follow the overrides)")
    p.set_defaults(func=run)


def run(args) -> int:
    from openeva.train.config import load_config
    from openeva.train.mim_task import pretrain
    from openeva.train.options import canonical_task
    from openeva.train.runner import preflight

    overrides = [o for o in args.overrides if o != "--dry-run"]
    dry_run = args.dry_run or len(overrides) < len(args.overrides)
    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        raise ValueError(f"unknown option {flags[0]!r}; overrides are key=value")
    cfg = load_config(args.config, overrides)
    if canonical_task(cfg.task) != "mim":
        raise ValueError(f"{args.config} configures task={cfg.task!r}, not MIM pretraining (task='mim'); "
                         "use `openeva train` for it")
    if cfg.name is None:  # runs are named after their config file unless told otherwise
        cfg = cfg.replace(name=Path(args.config).stem if Path(args.config).suffix in (".py", "") else "run")
    if dry_run:
        preflight(cfg)
        print(cfg.to_json())
        return 0
    run_dir = pretrain(cfg)
    final = run_dir / "final"
    if final.is_dir():
        print(f"run: {run_dir}\nfinal backbone: {final}  (model.pretrained_image={final} for `openeva train`)")
    else:
        print(f"run: {run_dir} (stopped before the last step; continue with resume=latest)")
    return 0
