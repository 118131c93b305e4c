"""Any timm backbone as the vision tower of a CLIP model (ConvNeXt, Swin, ViTamin, SigLIP's ViT, ...).

The tower is timm's model (``trunk``) plus an optional pooling / projection ``head``, with the choices and the
parameter names of open_clip's ``TimmModel`` (``visual.trunk.*``, ``visual.head.proj.weight``), so an open_clip
checkpoint of a ``timm_model_name`` tower loads without renaming and gives the same outputs:

- ``pool``: timm's global pool of the trunk (``avg``, ``token``, ``map``, ``max``, ...); ``""`` keeps the trunk's
  default pool when a projection follows (ConvNeXt CLIPs) and removes pooling otherwise; ``default`` always
  keeps the architecture's own pool (a bare ``timm:`` backbone); ``abs_attn`` /
  ``rot_attn`` put an attention pool (timm's ``AttentionPool2d`` / ``RotAttentionPool2d``) in the head.
- ``proj``: ``linear`` (dropout + Linear), ``mlp`` (timm ``Mlp``, hidden 2 x embed_dim), ``none`` (the trunk's
  pooled features as they are), ``""`` (the trunk's own classifier, sized ``embed_dim``, is the projection).

The hooks the trainer and the dense code use are the EVA ViT's: ``num_layers`` / ``layer_id`` from timm's
``group_matcher`` (layer decay, ``lock_image_tower``), ``no_weight_decay()``, ``set_grad_checkpointing``,
``forward_intermediates`` (B, C, H, W) maps, and ``forward_dense`` (B, E, h, w) text-space features where the
trunk ends in a feature map that the head average-pools.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

logger = logging.getLogger(__name__)

POOLS = ("default", "", "avg", "max", "avgmax", "catavgmax", "token", "map", "avgmaxc", "abs_attn", "rot_attn")
PROJS = ("linear", "mlp", "none", "")
# ViTConfig field names the factory's overrides use, and what they mean for a timm tower.
_ALIASES = {"num_classes": "embed_dim", "drop_rate": "drop"}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


def import_timm():
    try:
        import timm
    except ImportError as e:  # timm is a core dependency; a broken install still gets a clear message
        raise ImportError("timm towers need timm (`pip install timm>=1.0`)") from e
    return timm


@dataclass(frozen=True)
class TimmTowerConfig:
    """A timm backbone as a vision tower; the open_clip ``vision_cfg`` keys ``timm_*`` in one frozen row.

    ``embed_dim``: output size (the CLIP embedding dim; for a bare backbone its classes, 0 = pooled features).
    ``img_size``: the input resolution (passed to timm where the model is built for a fixed size, e.g. ViTs).
    ``pretrained``: timm's own ImageNet weights (downloaded by timm; open_clip's ``timm_model_pretrained``).
    """

    timm_name: str
    embed_dim: int
    img_size: tuple[int, int] = (224, 224)
    pool: str = "avg"
    proj: str = "linear"
    proj_bias: bool = False
    drop: float = 0.0  # head dropout (before the projection)
    drop_path_rate: float | None = None  # timm's stochastic depth; None = the model's default
    patch_drop_rate: float | None = None  # FLIP token dropping where timm supports it (ViTs)
    pretrained: bool = False

    def __post_init__(self):
        object.__setattr__(self, "img_size", _pair(self.img_size))
        if not isinstance(self.timm_name, str) or not self.timm_name:
            raise ValueError(f"TimmTowerConfig.timm_name must be a timm model name, got {self.timm_name!r}")
        if self.pool not in POOLS:
            raise ValueError(f"TimmTowerConfig.pool must be one of {POOLS}, got {self.pool!r}")
        if self.proj not in PROJS:
            raise ValueError(f"TimmTowerConfig.proj must be one of {PROJS}, got {self.proj!r}")
        if isinstance(self.embed_dim, bool) or not isinstance(self.embed_dim, int) or self.embed_dim < 0:
            raise ValueError(f"TimmTowerConfig.embed_dim must be an int >= 0, got {self.embed_dim!r}")
        if self.embed_dim == 0 and (self.proj in ("linear", "mlp") or self.pool in ("abs_attn", "rot_attn")):
            raise ValueError(f"TimmTowerConfig: proj={self.proj!r} / pool={self.pool!r} need embed_dim > 0")
        if min(self.img_size) <= 0:
            raise ValueError(f"TimmTowerConfig.img_size must be positive, got {self.img_size}")
        for name in ("drop", "drop_path_rate", "patch_drop_rate"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"TimmTowerConfig.{name} must be in [0, 1), got {value}")

    @property
    def output_dim(self) -> int:
        return self.embed_dim

    @property
    def num_classes(self) -> int:  # the name ViTConfig and the CLIP config check use for a tower's output
        return self.embed_dim

    def replace(self, **changes) -> TimmTowerConfig:
        """A copy with ``changes``; the ViT override names that mean something here are accepted
        (``num_classes`` -> ``embed_dim``, ``drop_rate`` -> ``drop``), others are refused by name."""
        mapped = {_ALIASES.get(k, k): v for k, v in changes.items()}
        unknown = sorted(set(mapped) - set(self.__dataclass_fields__))
        if unknown:
            raise ValueError(f"a timm tower ({self.timm_name}) has no option {', '.join(unknown)}; its options are "
                             f"{', '.join(self.__dataclass_fields__)}")
        return replace(self, **mapped)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TimmTowerConfig:
        d = {k: v for k, v in d.items() if k != "kind"}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def _fixed_input_size(name: str) -> bool:
    """Whether timm builds this model for one input size (ViTs, Swin, MaxViT: then ``img_size`` is passed)."""
    from timm.models import get_pretrained_cfg

    try:
        cfg = get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown tag: then timm's create_model names the problem
        cfg = None
    return bool(getattr(cfg, "fixed_input_size", False))


class TimmTower(nn.Module):
    """Images (B, 3, H, W) -> (B, embed_dim): timm ``trunk`` then open_clip's ``head`` (pool / projection)."""

    num_prefix_tokens = 0

    def __init__(self, cfg: TimmTowerConfig):
        super().__init__()
        timm = import_timm()
        if not timm.is_model(cfg.timm_name.split(".")[0]):
            close = timm.list_models(f"*{cfg.timm_name.split('.')[0][:8]}*")[:5]
            hint = f" Close timm names: {', '.join(close)}." if close else ""
            raise ValueError(f"{cfg.timm_name!r} is not a timm model.{hint}")
        self.cfg = cfg
        self.embed_dim = self.output_dim = cfg.embed_dim
        kwargs = {}
        if cfg.drop_path_rate is not None:
            kwargs["drop_path_rate"] = cfg.drop_path_rate
        if cfg.patch_drop_rate:
            kwargs["patch_drop_rate"] = cfg.patch_drop_rate
        if _fixed_input_size(cfg.timm_name):
            kwargs["img_size"] = cfg.img_size
        custom_pool = cfg.pool in ("abs_attn", "rot_attn")
        extra_proj = cfg.proj in ("linear", "mlp")
        try:
            if not extra_proj and not custom_pool:
                # the trunk's classifier is the projection ("" ), or nothing follows the pooled features ("none")
                if cfg.pool != "default":  # "default": the architecture's own pool (a bare timm backbone)
                    kwargs["global_pool"] = cfg.pool
                self.trunk = timm.create_model(cfg.timm_name, num_classes=0 if cfg.proj == "none" else cfg.embed_dim,
                                               pretrained=cfg.pretrained, **kwargs)
                width = cfg.embed_dim if cfg.proj != "none" and cfg.embed_dim else self.trunk.num_features
            else:
                self.trunk = timm.create_model(cfg.timm_name, pretrained=cfg.pretrained, **kwargs)
                # an attention pool replaces timm's pool; otherwise "" keeps the network's default pool
                keep_default = cfg.pool in ("", "default")
                pool = {"global_pool": ""} if custom_pool else {} if keep_default else {"global_pool": cfg.pool}
                self.trunk.reset_classifier(0, **pool)
                width = self.trunk.num_features
        except (TypeError, AssertionError) as e:  # an option the architecture lacks (patch_drop_rate on a CNN)
            raise ValueError(f"timm cannot build {cfg.timm_name!r} with {sorted(kwargs)} / pool={cfg.pool!r}: "
                             f"{e}") from e
        head = OrderedDict()
        if custom_pool:
            from timm.layers import AttentionPool2d, RotAttentionPool2d

            if cfg.pool == "abs_attn":
                head["pool"] = AttentionPool2d(width, feat_size=self._feature_grid(), out_features=cfg.embed_dim)
            else:
                head["pool"] = RotAttentionPool2d(width, out_features=cfg.embed_dim)
            width = cfg.embed_dim
        if cfg.proj == "linear":
            head["drop"] = nn.Dropout(cfg.drop)
            head["proj"] = nn.Linear(width, cfg.embed_dim, bias=cfg.proj_bias)
        elif cfg.proj == "mlp":
            from timm.layers import Mlp

            head["mlp"] = Mlp(width, 2 * cfg.embed_dim, cfg.embed_dim, drop=(cfg.drop, 0.0),
                              bias=(True, cfg.proj_bias))
        self.head = nn.Sequential(head)
        self.num_features = width if not (extra_proj or custom_pool) else self.trunk.num_features
        self._layer_of, self._trunk_groups = self._group_layers()

    @property
    def num_classes(self) -> int:
        """The head's outputs (classes for a classifier, the embedding dim for a CLIP tower)."""
        return self.cfg.embed_dim

    def reset_classifier(self, num_classes: int) -> None:
        """A new (biased) linear head of ``num_classes`` after the trunk's pooled features, for fine-tuning: the
        trunk's own classifier and the CLIP projection are dropped (an attention-pool head cannot be)."""
        if self.cfg.pool in ("abs_attn", "rot_attn"):
            raise ValueError(f"a timm tower with an attention-pool head ({self.cfg.pool}) has no classifier to reset")
        if self.cfg.proj not in ("linear", "mlp"):  # the trunk's classifier was the head: keep its pool, drop the fc
            keep_pool = self.cfg.pool in ("", "default")
            self.trunk.reset_classifier(0, **({} if keep_pool else {"global_pool": self.cfg.pool}))
        pool = "" if self.cfg.pool == "default" else self.cfg.pool
        self.cfg = self.cfg.replace(embed_dim=num_classes, proj="linear", proj_bias=True, pool=pool)
        self.head = nn.Sequential(OrderedDict(drop=nn.Dropout(self.cfg.drop),
                                              proj=nn.Linear(self.trunk.num_features, num_classes)))
        self.embed_dim = self.output_dim = num_classes
        self.num_features = self.trunk.num_features
        self._layer_of, self._trunk_groups = self._group_layers()

    def _feature_grid(self) -> tuple[int, int] | None:
        """The attention pool's position grid: timm's ``pool_size`` for the model's default input, as open_clip
        sizes it (timm's attention pools resample it to other grids at run time)."""
        pool_size = self.trunk.pretrained_cfg.get("pool_size") if hasattr(self.trunk, "pretrained_cfg") else None
        return tuple(pool_size) if pool_size else None

    @property
    def patch_size(self) -> int:
        """The stride of the final feature map (32 for ConvNeXt, the patch size for a ViT): input sides that
        are multiples of it give whole feature cells."""
        info = getattr(self.trunk, "feature_info", None)
        if info:
            return int(info[-1]["reduction"])
        patch = getattr(getattr(self.trunk, "patch_embed", None), "patch_size", None)
        return int(patch[0] if isinstance(patch, (tuple, list)) else patch or 32)

    # ------------------------------------------------------------------------------ hooks for the trainer
    def _group_layers(self) -> tuple[dict[str, int], int]:
        """timm's ``group_matcher`` -> {trunk parameter name: layer id} and the number of trunk groups (stem 0,
        then stages / blocks in order); a trunk without a matcher is one group."""
        matcher = None
        if hasattr(self.trunk, "group_matcher"):
            try:
                matcher = self.trunk.group_matcher(coarse=False)
            except (NotImplementedError, TypeError):
                matcher = None
        if matcher is None:
            return {}, 1
        from timm.models import group_parameters

        layer_of = group_parameters(self.trunk, matcher, reverse=True)  # {name: id}, ids 0..G-1
        return dict(layer_of), (max(layer_of.values()) + 1 if layer_of else 1)

    @property
    def num_layers(self) -> int:
        """Layer ids run 0 (stem) .. trunk groups - 1, then the head (pool / projection) as the last one."""
        return self._trunk_groups + 1

    def layer_id(self, name: str) -> int:
        if name.startswith("trunk."):
            return self._layer_of.get(name[len("trunk."):], self._trunk_groups - 1)
        return self._trunk_groups  # head

    def no_weight_decay(self) -> set[str]:
        fn = getattr(self.trunk, "no_weight_decay", None)
        return {f"trunk.{n}" for n in fn()} if callable(fn) else set()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        try:
            self.trunk.set_grad_checkpointing(enable)
        except (AttributeError, NotImplementedError, AssertionError):
            logger.warning("timm %s has no gradient checkpointing; training continues without it", self.cfg.timm_name)

    # ---------------------------------------------------------------------------------------- forward
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's features: (B, C, h, w) for CNNs, (B, N, D) tokens for ViTs."""
        return self.trunk.forward_features(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk features -> (B, embed_dim): timm's pool (and own classifier) then the tower's head."""
        return self.head(self.trunk.forward_head(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))  # (B, E)

    def forward_intermediates(
        self, x: torch.Tensor, indices: int | list[int] = 1, norm: bool = False, mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Feature maps (B, C, H, W) after the trunk stages / blocks in ``indices`` (an int n: the last n), as
        timm's ``forward_intermediates`` gives them (prefix tokens dropped for ViTs)."""
        if mask is not None:
            raise ValueError(f"a timm tower ({self.cfg.timm_name}) takes no token mask")
        if not hasattr(self.trunk, "forward_intermediates"):
            raise ValueError(f"timm {self.cfg.timm_name} has no forward_intermediates; no feature maps from it")
        return list(self.trunk.forward_intermediates(x, indices=indices, norm=norm, intermediates_only=True,
                                                     output_fmt="NCHW"))

    @property
    def has_dense(self) -> bool:
        """Whether ``forward_dense`` applies: the head average-pools a feature map (``avg``, or the default
        pool kept by ``""`` before a projection), so the head can be applied to every cell instead."""
        return self.cfg.pool == "avg" or (self.cfg.pool in ("", "default") and self._default_pool_is_avg())

    def _default_pool_is_avg(self) -> bool:
        """Whether the trunk's own global pool (left in place) is an average (ConvNeXt, ResNet ...)."""
        if self.cfg.pool == "" and self.cfg.proj not in ("linear", "mlp"):
            return False  # "" without a projection removed the pool
        for m in self.trunk.modules():
            pool_type = getattr(m, "pool_type", None)
            if isinstance(pool_type, str):
                return pool_type == "avg"
        return False

    def forward_dense(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> (B, E, h, w): the pooled path (timm's head norm / classifier, then the projection) applied
        to each cell of the final feature map; averaging is the only step skipped (the dense-CLIP reading of a
        ConvNet tower, as MaskCLIP's value path is for a ViT)."""
        if not self.has_dense:
            raise ValueError(f"dense features need an average-pooled timm tower; {self.cfg.timm_name} uses "
                             f"pool={self.cfg.pool!r}")
        feats = self.trunk.forward_features(x)
        if feats.dim() != 4:
            raise ValueError(f"timm {self.cfg.timm_name} gives tokens {tuple(feats.shape)}, not a feature map; "
                             "dense features need a (B, C, h, w) map")
        B, C, h, w = feats.shape
        cells = feats.permute(0, 2, 3, 1).reshape(B * h * w, C, 1, 1)  # each cell as a 1x1 map: pooling is a no-op
        out = self.head(self.trunk.forward_head(cells))  # (B * h * w, E)
        return out.view(B, h, w, -1).permute(0, 3, 1, 2)  # (B, E, h, w)
