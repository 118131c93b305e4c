"""EVA-CLIP contrastive training as a Task (Sun et al., 2023, "EVA-CLIP: Improved Training Techniques for CLIP
at Scale", arXiv 2303.15389).

The recipe pieces that are the Task's: the CLIP model and its loss (softmax contrastive with local loss +
gather-with-grad, or SigLIP), per-tower learning rates and layer decay (visual lr/ld, text lr/ld, the rest at
the base lr), the logit scale clamped to ln(100) after every step, tower initialisation (vision tower from an
EVA-02 MIM checkpoint, text tower from a CLIP, with EVA-CLIP's skip list re-initialised), tower locking, and
validation (contrastive loss, image<->text retrieval R@1/5/10, zero-shot accuracy on a labelled set).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from openeva.data.classnames import load_classnames, load_templates
from openeva.data.image_lists import LabelledImages
from openeva.data.labelled import load_classification_dataset
from openeva.data.synthetic import ShapesClassification
from openeva.data.transforms import PreprocessConfig, image_transform
from openeva.factory import create_clip, create_model, get_tokenizer, preprocess_cfg
from openeva.losses import ClipLoss, SigLipLoss
from openeva.evaluators import Batching, Labelled, Retrieval, RetrievalOptions, ZeroShot, ZeroShotOptions
from openeva.train.evals import accepts_group, select_evals
from openeva.train.data import ResumableLoader, build_image_text_dataset, build_val_pairs, check_sources
from openeva.train.preflight import check_weights, resolve_model
from openeva.train.distributed import builds_on_meta
from openeva.train.task import ParamGroupSpec, Task

class CLIPTask(Task):
    """A CLIP model trained on ``(images (B, 3, H, W), tokens (B, L))`` batches.

    ``loss`` "clip" uses :class:`~openeva.losses.ClipLoss`; "siglip" adds a learned ``logit_bias`` (init -10,
    with the logit scale reset to ln 10, as SigLIP) kept in the Task's state. ``evaluator`` (a
    :class:`ClipValidation`, or any ``evaluator(model[, group=]) -> metrics``) is what :meth:`evaluate` reports. Every option
    is keyword-only.
    """

    def __init__(self, model: nn.Module, *, loss: str = "clip", local_loss: bool = True, gather_with_grad: bool = True,
                 tiled: bool = False, visual_lr: float | None = None, text_lr: float | None = None,
                 visual_layer_decay: float = 1.0, text_layer_decay: float = 1.0,
                 visual_weight_decay: float | None = None, text_weight_decay: float | None = None,
                 max_logit_scale: float = 100.0, evaluator=None):
        super().__init__()
        if not (hasattr(model, "visual") and hasattr(model, "text") and hasattr(model, "logit_scale")):
            raise ValueError(f"CLIPTask needs a two-tower CLIP model, got {type(model).__name__}")
        if loss not in ("clip", "siglip"):
            raise ValueError(f"loss must be 'clip' or 'siglip', got {loss!r}")
        if max_logit_scale <= 1:
            raise ValueError(f"max_logit_scale must be > 1, got {max_logit_scale}")
        self.model = model
        self.loss_kind, self.local_loss, self.gather_with_grad, self.tiled = loss, local_loss, gather_with_grad, tiled
        self.tower_opts = {"visual": (visual_lr, visual_layer_decay, visual_weight_decay),
                           "text": (text_lr, text_layer_decay, text_weight_decay)}
        self.max_log_scale = math.log(max_logit_scale)
        self.evaluator = evaluator
        # A SigLIP model (open_clip's zoo) owns its logit bias: a pretrained bias is trained on, not replaced.
        self.model_has_bias = getattr(model, "logit_bias", None) is not None
        if loss == "siglip" and not self.model_has_bias:
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
            with torch.no_grad():
                model.logit_scale.fill_(math.log(10.0))
        else:
            self.logit_bias = None
        if loss == "clip" and self.model_has_bias:
            raise ValueError(f"{type(model).__name__} carries a sigmoid logit bias (a SigLIP model): train it with "
                             "loss.kind=siglip")
        self.set_world(0, 1)

    def set_world(self, rank: int, world_size: int) -> None:
        super().set_world(rank, world_size)
        if self.loss_kind == "siglip":
            self.loss_fn = SigLipLoss(rank=rank, world_size=world_size)
        else:
            self.loss_fn = ClipLoss(local_loss=self.local_loss, gather_with_grad=self.gather_with_grad, rank=rank,
                                    world_size=world_size, tiled=self.tiled)

    accumulate_features = True  # the contrastive loss of a step must see every sample of it

    def forward(self, batch, features_only: bool = False, valid: torch.Tensor | None = None):
        """``(loss, metrics)``, or with ``features_only`` the features the loss reads: ``{"image": (B, E),
        "text": (B, E), "scale": ()[, "bias": ()][, "valid": (B,)]}`` (see :class:`~openeva.train.task.Task`).
        ``valid`` (B,) bool marks the rows of a padded fixed-shape batch that are samples (None: all)."""
        if batch is None or len(batch) < 2:
            raise ValueError("a CLIP batch is (images, tokens)")
        images, texts = batch[0], batch[1]
        out = self.model(images, texts)  # (B, E), (B, E), () [, () the model's own SigLIP bias]
        image_features, text_features, scale = out[:3]
        features = {"image": image_features, "text": text_features, "scale": scale}
        bias = out[3] if len(out) > 3 else self.logit_bias
        if bias is not None:
            features["bias"] = bias
        if valid is not None:
            features["valid"] = valid
        return features if features_only else self.loss_from_features(features)

    def loss_from_features(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        bias = (features["bias"],) if "bias" in features else ()
        loss = self.loss_fn(features["image"], features["text"], features["scale"], *bias,
                            valid=features.get("valid"))
        return loss, {"logit_scale": features["scale"].detach()}

    def param_group_specs(self) -> list[ParamGroupSpec]:
        """Vision tower and text tower with their own lr / layer decay / weight decay, then the rest (logit
        scale) at the base lr: a parameter belongs to the first spec that holds it."""
        specs = [ParamGroupSpec(getattr(self.model, name), f"model.{name}", lr=lr, layer_decay=ld, weight_decay=wd)
                 for name, (lr, ld, wd) in self.tower_opts.items()]
        specs.append(ParamGroupSpec(self.model, "model"))
        return specs

    def no_weight_decay(self) -> set[str]:
        return {"logit_bias"}

    @torch.no_grad()
    def on_step_end(self, step: int) -> None:
        """CLIP clamps the learned temperature so logits never exceed 100 x cosine."""
        self.model.logit_scale.clamp_(0, self.max_log_scale)

    def evaluate(self, step: int, group=None) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        if accepts_group(self.evaluator):  # a callable without one scores all of its data on every rank
            return self.evaluator(self.model, group=group)
        return self.evaluator(self.model)


# -------------------------------------------------------------------------------------- model building
def build_clip_model(mcfg, meta: bool = False) -> nn.Module:
    """The CLIP model of a :class:`~openeva.train.config.ModelConfig`: built with its tower inits by the factory
    (:func:`openeva.factory.create_clip`), then the run's tower locks and gradient checkpointing. ``meta``: its
    shapes only, on the meta device (no init, no weights read), for an FSDP rank that receives its shards from
    rank 0 (:func:`~openeva.train.distributed.builds_on_meta`)."""
    if meta:
        overrides = {k: v for k, v in mcfg.vision.factory_overrides().items() if k != "timm_pretrained"}
        if mcfg.drop_path_rate is not None:
            overrides["drop_path_rate"] = mcfg.drop_path_rate
        model = create_model(mcfg.name, img_size=mcfg.img_size, force_patch_dropout=mcfg.patch_dropout,
                             device="meta", **overrides)
    else:
        model = create_clip(mcfg.name, mcfg.pretrained, pretrained_image=mcfg.pretrained_image,
                            pretrained_text=mcfg.pretrained_text, skip_list=tuple(mcfg.skip_list),
                            img_size=mcfg.img_size, patch_dropout=mcfg.patch_dropout,
                            drop_path_rate=mcfg.drop_path_rate, vision=mcfg.vision.factory_overrides())
    if mcfg.lock_image:
        model.lock_image_tower(mcfg.lock_image_unlocked_groups)
    if mcfg.lock_text:
        model.lock_text_tower(mcfg.lock_text_unlocked_layers)
    if mcfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


# ----------------------------------------------------------------------------------------- validation
class ClipValidation:
    """The run's evaluators (:mod:`openeva.evaluators`, as ``openeva eval`` runs them) on their data: retrieval and
    the contrastive validation loss on held-out pairs, zero-shot accuracy (``zeroshot_*``) on a labelled set.

    It runs on every rank of the run, in fp32: each evaluator reads its rank's block of the data and applies its
    rank rule over ``group`` (retrieval gathers the features, zero-shot sums the counts), so the metrics are one
    process's (``group=None``)."""

    def __init__(self, runs):
        self.runs = list(runs)  # (evaluator, data, metric prefix)

    @torch.no_grad()
    def __call__(self, model, group=None) -> dict[str, float]:
        device = model.logit_scale.device
        metrics: dict[str, float] = {}
        for evaluator, data, prefix in self.runs:
            result = evaluator.run(model, data, device=device, precision="fp32", group=group)
            metrics.update({f"{prefix}{k}": v for k, v in result.items()})
        return metrics


def build_clip_validation(cfg, tokenizer, val_tf, size: int) -> ClipValidation | None:
    """The evaluators ``cfg.evals`` names (default: retrieval and zero-shot) over the sets ``cfg.data`` gives."""
    d, evals = cfg.data, select_evals(cfg, ("retrieval", "zeroshot"))
    batching = Batching(batch_size=min(d.batch_size * 2, 256))
    runs = []
    if "retrieval" in evals:
        val = build_val_pairs(d, val_tf, tokenizer, size, cfg.seed)
        if val is not None:
            runs.append((Retrieval(RetrievalOptions(loss=True), batching), val, ""))
    if "zeroshot" in evals:
        zeroshot = build_zeroshot_set(d, val_tf, size, cfg.seed)
        if zeroshot is not None:
            dataset, classnames, templates = zeroshot
            evaluator = ZeroShot(tokenizer, ZeroShotOptions(templates=tuple(templates)), batching)
            runs.append((evaluator, Labelled(dataset, tuple(classnames)), "zeroshot_"))
    return ClipValidation(runs) if runs else None


def build_zeroshot_set(dcfg, transform, image_size: int, seed: int):
    """(dataset of (image, label), class names, templates) for ``data.zeroshot``, or None."""
    if dcfg.zeroshot is None:
        return None
    if dcfg.zeroshot == "shapes":  # unseen (shape, color) pairs, classified by shape
        ds = ShapesClassification(dcfg.zeroshot_num_samples, attribute="shape", split="heldout",
                                  image_size=image_size, seed=seed + 2_000_003, transform=transform)
        return ds, list(ds.classes), list(ds.templates)
    names = load_classnames(dcfg.zeroshot_classnames) if dcfg.zeroshot_classnames else None
    data = load_classification_dataset(dcfg.zeroshot, classnames=names)
    templates = load_templates(dcfg.zeroshot_templates) if dcfg.zeroshot_templates else ["a photo of a {}."]
    ds = LabelledImages(data.images, transform, data.labels)
    if len(ds) > dcfg.zeroshot_num_samples:
        step = len(ds) / dcfg.zeroshot_num_samples  # an even spread over the (usually class-sorted) set
        ds = torch.utils.data.Subset(ds, [int(i * step) for i in range(dcfg.zeroshot_num_samples)])
    return ds, list(data.classnames), templates


# ------------------------------------------------------------------------------------------ entry points
def preflight_clip(cfg) -> None:
    """Checks that need no compute: the model name, weight files and data paths exist."""
    spec, _ = resolve_model("model.name", cfg.model.name)
    if not spec.is_clip:
        raise ValueError(f"model.name={cfg.model.name!r} is a backbone; CLIP training needs a CLIP model")
    for key in ("pretrained", "pretrained_image", "pretrained_text"):
        check_weights(f"model.{key}", getattr(cfg.model, key), always_path=key != "pretrained")
    check_sources(cfg.data.sources())
    select_evals(cfg, ("retrieval", "zeroshot"))  # the evaluators it names are ones CLIP training runs
    for key in ("val", "zeroshot"):
        value = getattr(cfg.data, key)
        if value not in (None, "synthetic", "shapes") and not Path(value).exists():
            raise FileNotFoundError(f"data.{key}: not found: {value}")


def build_clip(cfg, world):
    """(CLIPTask, ResumableLoader) for a :class:`~openeva.train.config.TrainConfig` on this process."""
    model = build_clip_model(cfg.model, meta=builds_on_meta(world, cfg.dist.strategy, cfg.dist.meta_init))
    tokenizer = get_tokenizer(cfg.model.name, context_length=model.context_length)  # the model's own (SigLIP, HF)
    pre = PreprocessConfig.from_dict(preprocess_cfg(model))
    train_tf = image_transform(pre, is_train=True, scale=tuple(cfg.data.scale))
    val_tf = image_transform(pre, is_train=False)
    size = int(model.visual.cfg.img_size[0])
    d = cfg.data
    train = build_image_text_dataset(d, train_tf, tokenizer, size, cfg.seed, world.rank, world.world_size)
    loader = ResumableLoader(train, d.batch_size, rank=world.rank, world_size=world.world_size, seed=cfg.seed,
                             num_workers=d.num_workers, pin_memory=world.device.type == "cuda",
                             samples_per_epoch=d.train_num_samples)
    evaluator = build_clip_validation(cfg, tokenizer, val_tf, size)  # on every rank: each scores its share
    o, loss = cfg.optim, cfg.loss
    task = CLIPTask(model, loss=loss.kind, local_loss=loss.local_loss, gather_with_grad=loss.gather_with_grad,
                    tiled=loss.tiled, visual_lr=o.visual_lr, text_lr=o.text_lr,
                    visual_layer_decay=o.visual_layer_decay, text_layer_decay=o.text_layer_decay,
                    visual_weight_decay=o.visual_weight_decay, text_weight_decay=o.text_weight_decay,
                    max_logit_scale=loss.max_logit_scale, evaluator=evaluator)
    return task, loader
