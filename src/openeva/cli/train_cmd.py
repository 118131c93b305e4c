"""``openeva train CONFIG [key=value ...]``: train from a Python config, writing to ``output_dir/name``
(``--set key=value`` is the same override, the form every command that overrides a config takes).

One process: ``openeva train clip_tiny``. Several: ``torchrun --nproc_per_node 8 -m openeva train
clip_eva02_b16 data.train=/data/shards-{0000..2047}.tar``, or the same under ``srun`` (SLURM).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from openeva.cli.options import add_overrides, overrides


def register(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model (EVA-CLIP, ...) from a Python config",
                              description=__doc__.splitlines()[0])
    p.add_argument("config", help="a shipped recipe (clip_tiny, clip_eva02_b16, ...; see openeva.configs), a Python "
                                  "file defining `config = TrainConfig(...)`, or a run's config.json")
    add_overrides(p, positional=True)
    p.add_argument("--dry-run", action="store_true",
                   help="validate the config and data paths, print the resolved precision and config, train nothing "
                        "(may also follow the overrides)")
    p.set_defaults(func=run)


def run_config(args):
    """The run's config: CONFIG with the overrides, named after its file unless the config names it."""
    from openeva.configs import load_config

    cfg = load_config(args.config, overrides(args))
    if cfg.name is None:
        cfg = cfg.replace(name=Path(args.config).stem if Path(args.config).suffix in (".py", "") else "run")
    return cfg


def dry_run(cfg) -> int:
    """Every check that needs no compute, then the precision the run would use (and why) on stderr and the
    resolved config as JSON on stdout."""
    from openeva.runtime import describe_precision, resolve_device
    from openeva.train.runner import preflight

    preflight(cfg)
    device = resolve_device(cfg.device, int(os.environ.get("LOCAL_RANK", "0")))
    print(describe_precision(cfg.precision, device), file=sys.stderr)
    print(cfg.to_json())
    return 0


def run(args) -> int:
    from openeva.train.runner import train

    cfg = run_config(args)
    if args.dry_run:
        return dry_run(cfg)
    summary = train(cfg)
    if summary.get("rank", 0) == 0:
        print(json.dumps(summary, indent=1))
    return 0
