"""``openeva train CONFIG [key=value ...]``: train from a Python config, writing to ``output_dir/name``.

One process: ``openeva train clip_tiny``. Several: ``torchrun --nproc_per_node 8 -m openeva train
clip_eva02_b16 data.train=/data/shards-{0000..2047}.tar``, or the same under ``srun`` (SLURM).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (EVA-CLIP, ...) from a Python config",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="a shipped recipe (clip_tiny, clip_eva02_b16, ...; see openeva.configs), a Python "
                                  "file defining `config = TrainConfig(...)`, or a run's config.json")
    p.add_argument("overrides", nargs=argparse.REMAINDER, metavar="key=value",
                   help="override config fields, dotted for sections: optim.lr=1e-4 data.batch_size=64 resume=latest")
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and data paths, print the resolved config, train nothing (may also "
                        "follow the overrides)")
    p.set_defaults(func=run)


def run(args) -> int:
    from openeva.train.config import load_config
    from openeva.train.runner import preflight, train

    overrides = [o for o in args.overrides if o != "--dry-run"]
    dry_run = args.dry_run or len(overrides) < len(args.overrides)
    flags = [o for o in overrides if o.startswith("-")]
    if flags:
        raise ValueError(f"unknown option {flags[0]!r}; overrides are key=value")
    cfg = load_config(args.config, overrides)
    if cfg.name is None:  # runs are named after their config file unless told otherwise
        cfg = cfg.replace(name=Path(args.config).stem if Path(args.config).suffix in (".py", "") else "run")
    if dry_run:
        preflight(cfg)
        print(cfg.to_json())
        return 0
    summary = train(cfg)
    if summary.get("rank", 0) == 0:
        print(json.dumps(summary, indent=1))
    return 0
