"""The one config base of the quickstart chains: validation, presets and scaling, written once.

A chain's config (:class:`~openeva.quickstart.builtin.QuickstartConfig`,
:class:`~openeva.quickstart.user_chain.UserChainConfig`) is a frozen dataclass on :class:`ChainConfig` that
declares its own sizes and, as class data, which fields are steps (:attr:`STEP_FIELDS`), which are sample counts
with their floors (:attr:`COUNT_FLOORS`) and its presets (:attr:`PRESETS`). ``--scale`` multiplies both
(:meth:`ChainConfig.scaled`); ``--minutes`` multiplies the steps alone (:meth:`ChainConfig.steps_scaled`), because
the data is ready before the CPU is timed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

CPU_PRECISIONS = ("auto", "fp32", "bf16")  # the chains run on a CPU: no fp16 autocast there


@dataclass(frozen=True)
class ChainConfig:
    """Fields every chain has; subclasses add their own sizes and set the class data below."""

    seed: int = 0
    clip_model: str = "EVA02-quickstart"  # the teacher CLIP (and, in the built-in chain, EVA-CLIP and scratch)
    student_model: str = "eva02_quickstart_patch8_64"  # the MIM backbone = the CLIP's vision tower
    train_samples: int = 8192
    batch_size: int = 64
    teacher_steps: int = 450
    mim_steps: int = 250
    teacher_lr: float = 2e-3
    mim_lr: float = 3e-3
    precision: str = "auto"  # resolved by the CPU at run start (openeva.runtime.resolve_precision)
    log_every: int = 10

    STEP_FIELDS: ClassVar[tuple[str, ...]] = ("teacher_steps", "mim_steps")
    # sample count -> its least value after scaling: an int, or the name of the field that bounds it
    COUNT_FLOORS: ClassVar[dict[str, int | str]] = {"train_samples": "batch_size"}
    POSITIVE_INTS: ClassVar[tuple[str, ...]] = ("train_samples", "batch_size", "teacher_steps", "mim_steps",
                                                "log_every")
    PRESETS: ClassVar[dict[str, dict]] = {"full": {}}

    def __post_init__(self):
        name = type(self).__name__
        for key in self.POSITIVE_INTS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}.{key} must be an int >= 1, got {value!r}")
        for key in ("teacher_lr", "mim_lr"):
            if not getattr(self, key) > 0:
                raise ValueError(f"{name}.{key} must be > 0, got {getattr(self, key)!r}")
        if self.precision not in CPU_PRECISIONS:
            raise ValueError(f"{name}.precision must be one of {CPU_PRECISIONS}, got {self.precision!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"{name}.seed must be an int >= 0, got {self.seed!r}")

    @classmethod
    def preset(cls, name: str = "full", **changes):
        """The named preset (``full``: the real run; ``fast``: a smoke run, numbers meaningless) with ``changes``."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown {cls.__name__} preset {name!r}; expected one of {sorted(cls.PRESETS)}")
        return cls(**{**cls.PRESETS[name], **changes})

    def scaled(self, factor: float):
        """Steps and sample counts times ``factor`` (at least 1 step and each count's floor)."""
        _check_factor(factor, "scale")
        if factor == 1:
            return self

        def floor(least: int | str) -> int:
            return getattr(self, least) if isinstance(least, str) else least

        counts = {k: max(floor(least), int(round(getattr(self, k) * factor))) for k, least in self.COUNT_FLOORS.items()}
        return dataclasses.replace(self.steps_scaled(factor), **counts)

    def steps_scaled(self, factor: float):
        """Every stage's steps times ``factor`` (at least 1), the sample counts as they are (``--minutes``)."""
        _check_factor(factor, "step factor")
        return dataclasses.replace(self, **{k: max(1, int(round(getattr(self, k) * factor))) for k in self.STEP_FIELDS})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _check_factor(factor: float, what: str) -> None:
    if not factor > 0:
        raise ValueError(f"{what} must be > 0, got {factor!r}")
