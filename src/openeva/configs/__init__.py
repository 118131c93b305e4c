"""Training recipes shipped with the package, usable by name: ``openeva train clip_tiny``,
``openeva pretrain mim_b data.train=...``, ``openeva eval --task finetune --finetune-config finetune_eva02_B``.

Each module defines ``config = TrainConfig(...)``; copy one next to your data to make it your own.
:func:`load_config` takes a recipe's name or any config file; the recipes sit above ``openeva.train`` (they are
``TrainConfig`` values), so the lookup by name lives here, not in the training package.
"""

from pathlib import Path

from openeva.train.config import TrainConfig
from openeva.train.config import load_config as load_config_file

CONFIG_DIR = Path(__file__).resolve().parent


def builtin_configs() -> list[str]:
    """Names of the shipped recipes (``clip_tiny``, ``mim_b``, ...)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_"))


def resolve_config_path(path: str | Path) -> Path:
    """An existing file as given, else a recipe shipped here by name (``mim_b`` or ``mim_b.py``)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.parent == Path(".") and path.stem in builtin_configs() and path.suffix in ("", ".py"):
        return CONFIG_DIR / f"{path.stem}.py"
    raise FileNotFoundError(f"config file not found: {path} (nor a shipped recipe: {', '.join(builtin_configs())})")


def load_config(path: str | Path, overrides=()) -> TrainConfig:
    """A shipped recipe by name (``clip_tiny``) or a config file (``.py`` or a run's ``config.json``), with
    ``key=value`` overrides applied (:func:`openeva.train.config.load_config`)."""
    return load_config_file(resolve_config_path(path), overrides)
