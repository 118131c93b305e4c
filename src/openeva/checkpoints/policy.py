"""One weight-loading policy: which keys of a tower may differ from its checkpoint, applied by one function.

A :class:`LoadPolicy` states, per tower, the keys that may be missing from the checkpoint (left as initialised:
a new classifier head, a CLIP projection a MIM backbone never had), unexpected (dropped), or present with another
shape (dropped, left as initialised: a head for another label set), and the keys never loaded (EVA-CLIP's skip
list). Every other key must be there with the model's shape. :func:`load_weights` checks a converted state dict
against the policy, loads it all or nothing, and reports in the same words everywhere: a refusal
(:class:`CheckpointMismatchError`) and a :class:`LoadReport` both speak of "missing keys", "unexpected keys" and
"mis-shaped keys". The policies themselves are stated once, in :mod:`openeva.factory.policies`.
"""

from __future__ import annotations

import fnmatch
import logging
from dataclasses import dataclass

import torch
from torch import nn

logger = logging.getLogger(__name__)


def _preview(items, n: int = 8) -> str:
    items = list(items)
    return ", ".join(items[:n]) + (f", ... (+{len(items) - n})" if len(items) > n else "")


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(key, p) for p in patterns)


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model under its policy; lists what is missing, unexpected and mis-shaped."""

    def __init__(self, path, missing, unexpected, mismatched, tower: str = "model"):
        self.missing, self.unexpected, self.mismatched, self.tower = missing, unexpected, mismatched, tower
        lines = [f"checkpoint {path} does not fit the {tower} (nothing was loaded):"]
        for title, items in (("missing", missing), ("unexpected", unexpected)):
            if items:
                lines.append(f"  {len(items)} {title} keys: {_preview(items)}")
        if mismatched:
            shown = [f"{k}: checkpoint {tuple(a)} vs model {tuple(b)}" for k, a, b in mismatched[:8]]
            lines.append(f"  {len(mismatched)} mis-shaped keys: " + "; ".join(shown))
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class LoadPolicy:
    """Which keys of one tower may differ from its checkpoint; every other key must fit exactly.

    Patterns are globs on the tower's own keys (``head.*``, ``blocks.*.attn.norm.*``). ``tower`` names it in
    reports and errors ("classifier", "CLIP vision tower").
    """

    tower: str
    may_be_missing: tuple[str, ...] = ()  # model keys the checkpoint may lack: left as initialised
    may_be_unexpected: tuple[str, ...] = ()  # checkpoint keys the model may lack: dropped
    may_be_reshaped: tuple[str, ...] = ()  # checkpoint tensors of another shape: dropped, left as initialised
    skip: tuple[str, ...] = ()  # keys never loaded, whether the checkpoint has them or not (EVA-CLIP's skip list)

    def __post_init__(self):
        if not isinstance(self.tower, str) or not self.tower:
            raise ValueError("a LoadPolicy names its tower (e.g. 'classifier')")
        for name in ("may_be_missing", "may_be_unexpected", "may_be_reshaped", "skip"):
            value = getattr(self, name)
            if isinstance(value, str) or not all(isinstance(p, str) for p in value):
                raise ValueError(f"LoadPolicy.{name} is a tuple of glob patterns, got {value!r}")
            object.__setattr__(self, name, tuple(value))

    @property
    def requires_every_key(self) -> bool:
        """Whether every model tensor comes from the checkpoint (so the model may be built without storage)."""
        return not (self.may_be_missing or self.may_be_reshaped or self.skip)

    def allowing(self, *, missing=(), unexpected=(), reshaped=(), skip=()) -> "LoadPolicy":
        """This policy with more keys allowed (e.g. a run's skip list, or a caller's ``ignore_missing``)."""
        return LoadPolicy(self.tower, self.may_be_missing + tuple(missing), self.may_be_unexpected + tuple(unexpected),
                          self.may_be_reshaped + tuple(reshaped), self.skip + tuple(skip))


@dataclass(frozen=True)
class LoadReport:
    """What a load did, key by key: loaded, and the allowed differences (``missing`` holds every model key left
    as initialised: missing from the checkpoint, skipped or mis-shaped)."""

    tower: str
    source: str
    format: str | None
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    reshaped: tuple[str, ...]
    skipped: tuple[str, ...]
    notes: tuple[str, ...]

    @property
    def complete(self) -> bool:
        """Whether every model key was loaded and every checkpoint key used."""
        return not (self.missing or self.unexpected or self.reshaped or self.skipped)

    def describe(self) -> str:
        """One line, in the words of :class:`CheckpointMismatchError`."""
        parts = [f"{self.tower} <- {self.source}: loaded {len(self.loaded)} of {len(self.loaded) + len(self.missing)}"
                 " keys"]
        for items, title in ((self.missing, "missing keys (left as initialised)"),
                             (self.unexpected, "unexpected keys (dropped)"),
                             (self.reshaped, "mis-shaped keys (dropped, left as initialised)"),
                             (self.skipped, "skipped keys (skip list)")):
            if items:
                parts.append(f"{len(items)} {title}: {_preview(items)}")
        if self.notes:
            parts.append("; ".join(self.notes))
        return "; ".join(parts)

    def as_dict(self) -> dict:
        """``{"format", "notes", "missing"}``: what :func:`openeva.checkpoints.load_checkpoint` returns."""
        return {"format": self.format, "notes": list(self.notes), "missing": list(self.missing)}


def _adoptable(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``t`` in ``like``'s dtype (and device, unless meta), in its own 64-byte aligned storage.

    safetensors hands out tensors at 32-byte offsets; matmul kernels round differently on those than on the
    aligned memory torch allocates, so such tensors are copied (one at a time) to give the same outputs as a
    copy-in load.
    """
    device = like.device if like.device.type != "meta" else t.device
    out = t.to(device=device, dtype=like.dtype if t.is_floating_point() else t.dtype)
    if out.data_ptr() % 64 or not out.is_contiguous():
        out = out.clone(memory_format=torch.contiguous_format)
    return out


def load_weights(model: nn.Module, sd: dict[str, torch.Tensor], policy: LoadPolicy, source, *,
                 notes=(), fmt: str | None = None, assign: bool = False) -> LoadReport:
    """Checks ``sd`` (already in ``model``'s keys and layout) against ``policy``, loads it, and reports.

    Refuses with :class:`CheckpointMismatchError` naming every key the policy does not allow; then nothing is
    loaded. ``assign``: the checkpoint's tensors become the model's parameters (cast to each one's dtype and
    device) instead of being copied, so a model built on the meta device holds one copy; it needs a policy
    under which every key is loaded. Partial loads are logged (INFO) with :meth:`LoadReport.describe`.
    """
    if assign and not policy.requires_every_key:
        raise ValueError(f"assign=True needs every key from the checkpoint; the {policy.tower} policy leaves some "
                         "as initialised (build the model with storage instead)")
    target = model.state_dict()
    skipped = tuple(k for k in sd if _matches(k, policy.skip))
    reshaped = tuple(k for k in sd if k in target and sd[k].shape != target[k].shape
                     and _matches(k, policy.may_be_reshaped))
    unexpected = tuple(k for k in sd if k not in target and k not in skipped)
    sd = {k: v for k, v in sd.items() if k in target and k not in skipped and k not in reshaped}
    missing = tuple(k for k in target if k not in sd)
    refused_missing = [k for k in missing if k not in reshaped and not _matches(k, policy.may_be_missing + policy.skip)]
    refused_unexpected = [k for k in unexpected if not _matches(k, policy.may_be_unexpected)]
    mismatched = [(k, sd[k].shape, target[k].shape) for k in sd if sd[k].shape != target[k].shape]
    if refused_missing or refused_unexpected or mismatched:
        raise CheckpointMismatchError(source, refused_missing, refused_unexpected, mismatched, policy.tower)
    if assign:
        for k in list(sd):  # one tensor at a time, so at most one extra tensor is alive
            sd[k] = _adoptable(sd.pop(k), target[k])
    model.load_state_dict(sd, strict=False, assign=assign)  # checked above, under the policy
    report = LoadReport(policy.tower, str(source), fmt, tuple(sd), missing, unexpected, reshaped, skipped,
                        tuple(notes))
    logger.log(logging.DEBUG if report.complete else logging.INFO, "%s", report.describe())
    return report
