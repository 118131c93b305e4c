"""Training recipes shipped with the package, usable by name: ``openeva train clip_tiny``,
``openeva pretrain mim_b data.train=...``, ``openeva eval --task finetune --finetune-config finetune_eva02_B``.

Each module defines ``config = TrainConfig(...)``; copy one next to your data to make it your own.
"""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent


def builtin_configs() -> list[str]:
    """Names of the shipped recipes (``clip_tiny``, ``mim_b``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))
