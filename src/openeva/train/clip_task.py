"""EVA-CLIP contrastive training as a Task (Sun et al., 2023, "EVA-CLIP: Improved Training Techniques for CLIP
at Scale", arXiv 2303.15389).

The recipe pieces that are the Task's: the CLIP model and its loss (softmax contrastive with local loss +
gather-with-grad, or SigLIP), per-tower learning rates and layer decay (visual lr/ld, text lr/ld, the rest at
the base lr), the logit scale clamped to ln(100) after every step, tower initialisation (vision tower from an
EVA-02 MIM checkpoint, text tower from a CLIP, with EVA-CLIP's skip list re-initialised), tower locking, and
validation (contrastive loss, image<->text retrieval R@1/5/10, zero-shot accuracy on a labelled set).
"""

from __future__ import annotations

import fnmatch
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from openeva.checkpoints import read_state_dict
from openeva.checkpoints.io import check_fit, read_backbone_weights
from openeva.data.classnames import fill_template, load_classnames, load_templates
from openeva.data.image_lists import LabelledImages
from openeva.data.labelled import load_classification_dataset
from openeva.data.loader import collate_skip_none
from openeva.data.synthetic import ShapesClassification
from openeva.data.transforms import PreprocessConfig, image_transform
from openeva.factory import create_model, get_tokenizer, preprocess_cfg
from openeva.losses import ClipLoss, SigLipLoss
from openeva.metrics import classification_metrics, retrieval_metrics, retrieval_ranks, zeroshot_head, zeroshot_logits
from openeva.models.mim import CLIP_TOWER_NEW_KEYS
from openeva.train.data import ResumableLoader, build_image_text_dataset, build_val_pairs, check_sources
from openeva.train.preflight import check_weights, resolve_model
from openeva.train.task import ParamGroupSpec, Task

_TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")


class CLIPTask(Task):
    """A CLIP model trained on ``(images (B, 3, H, W), tokens (B, L))`` batches.

    ``loss`` "clip" uses :class:`~openeva.losses.ClipLoss`; "siglip" adds a learned ``logit_bias`` (init -10,
    with the logit scale reset to ln 10, as SigLIP) kept in the Task's state. ``evaluator`` is called as
    ``evaluator(model, logit_scale, logit_bias)`` by :meth:`evaluate`. Every option is keyword-only.
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
        if loss == "siglip":
            self.logit_bias = nn.Parameter(torch.tensor(-10.0))
            with torch.no_grad():
                model.logit_scale.fill_(math.log(10.0))
        else:
            self.logit_bias = None
        self.set_world(0, 1)

    def set_world(self, rank: int, world_size: int) -> None:
        super().set_world(rank, world_size)
        if self.loss_kind == "siglip":
            self.loss_fn = SigLipLoss(rank=rank, world_size=world_size)
        else:
            self.loss_fn = ClipLoss(local_loss=self.local_loss, gather_with_grad=self.gather_with_grad, rank=rank,
                                    world_size=world_size, tiled=self.tiled)

    def forward(self, batch) -> tuple[torch.Tensor, dict]:
        if batch is None or len(batch) < 2:
            raise ValueError("a CLIP batch is (images, tokens)")
        images, texts = batch[0], batch[1]
        image_features, text_features, scale = self.model(images, texts)  # (B, E), (B, E), ()
        if self.logit_bias is not None:
            loss = self.loss_fn(image_features, text_features, scale, self.logit_bias)
        else:
            loss = self.loss_fn(image_features, text_features, scale)
        return loss, {"logit_scale": scale.detach()}

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

    def evaluate(self, step: int) -> dict[str, float]:
        if self.evaluator is None:
            return {}
        return self.evaluator(self.model, self.model.logit_scale.exp().item(), self.logit_bias)


# -------------------------------------------------------------------------------------- model building
def load_tower(tower: nn.Module, path: str, which: str, skip_list=()) -> dict:
    """Initialise one CLIP tower from a checkpoint, leaving the ``skip_list`` keys (globs relative to the
    tower, e.g. ``head.*``, ``text_projection``) as initialised. Returns ``{"loaded", "skipped", "missing",
    "notes"}`` (notes: what was adapted, e.g. a resampled patch kernel or position grid).

    ``which="visual"``: EVA-02 MIM / backbone checkpoints (EVA native, timm, openeva) or any CLIP's vision tower;
    position embeddings and patch kernels are resampled to the tower (the patch 14 -> 16 step of B/16), a
    backbone's final ``fc_norm`` becomes the tower's ``norm``, and what a MIM backbone lacks (the projection
    head, EVA-CLIP's inner attention LN) keeps its fresh init. ``which="text"``: the text tower of an
    open_clip / EVA-CLIP / openeva CLIP checkpoint, or an OpenAI-layout state dict (text keys at the top level).
    Anything else missing, unexpected or mis-shaped is refused (``CheckpointMismatchError``).
    """
    allowed_missing = tuple(skip_list)
    if which == "visual":
        sd, notes = read_backbone_weights(path, tower)
        allowed_missing += CLIP_TOWER_NEW_KEYS
    elif which == "text":
        raw, notes = read_state_dict(path), []
        if any(k.startswith("text.") for k in raw):
            sd = {k[len("text."):]: v for k, v in raw.items() if k.startswith("text.")}
        else:
            sd = {k: v for k, v in raw.items() if k.startswith(_TEXT_KEYS)}
        sd = {k: v for k, v in sd.items() if not k.endswith("attn_mask")}
        if not sd:
            raise ValueError(f"{path} holds no CLIP text tower (no text.* or token_embedding keys)")
    else:
        raise ValueError(f"which must be 'visual' or 'text', got {which!r}")
    skipped = [k for k in sd if any(fnmatch.fnmatch(k, p) for p in skip_list)]
    sd = {k: v for k, v in sd.items() if k not in skipped}
    check_fit(path, sd, tower, ignore_missing=allowed_missing)
    tower.load_state_dict(sd, strict=False)
    missing = [k for k in tower.state_dict() if k not in sd]
    return {"loaded": len(sd), "skipped": skipped, "missing": missing, "notes": list(notes)}


def build_clip_model(mcfg) -> nn.Module:
    """The CLIP model of a :class:`~openeva.train.config.ModelConfig`: weights, tower inits, locks, checkpointing."""
    overrides = {} if mcfg.drop_path_rate is None else {"drop_path_rate": mcfg.drop_path_rate}
    model = create_model(mcfg.name, pretrained=mcfg.pretrained, img_size=mcfg.img_size,
                         force_patch_dropout=mcfg.patch_dropout, **overrides)
    if not hasattr(model, "text"):
        raise ValueError(f"model.name={mcfg.name!r} is a backbone; CLIP training needs a CLIP model "
                         "(see `openeva models --kind clip`)")
    if mcfg.pretrained_image:
        load_tower(model.visual, mcfg.pretrained_image, "visual", mcfg.skip_list)
    if mcfg.pretrained_text:
        load_tower(model.text, mcfg.pretrained_text, "text", mcfg.skip_list)
    if mcfg.pretrained_image or mcfg.pretrained_text:
        if "logit_scale" in mcfg.skip_list:
            with torch.no_grad():
                model.logit_scale.fill_(model.cfg.init_logit_scale)
    if mcfg.lock_image:
        model.lock_image_tower(mcfg.lock_image_unlocked_groups)
    if mcfg.lock_text:
        model.lock_text_tower(mcfg.lock_text_unlocked_layers)
    if mcfg.grad_checkpointing:
        model.set_grad_checkpointing(True)
    return model


# ----------------------------------------------------------------------------------------- validation
class ClipEvaluator:
    """Validation loss and image<->text retrieval on held-out pairs; zero-shot accuracy on a labelled set."""

    def __init__(self, tokenizer, val_pairs=None, zeroshot=None, batch_size: int = 64):
        self.tokenizer, self.val_pairs, self.zeroshot, self.batch_size = tokenizer, val_pairs, zeroshot, batch_size

    def _loader(self, ds):
        return torch.utils.data.DataLoader(ds, batch_size=self.batch_size, shuffle=False, collate_fn=collate_skip_none,
                                           generator=torch.Generator().manual_seed(0))

    @torch.no_grad()
    def __call__(self, model, logit_scale: float, logit_bias=None) -> dict[str, float]:
        device = model.logit_scale.device
        metrics: dict[str, float] = {}
        if self.val_pairs is not None:
            images, texts, losses = [], [], []
            for batch in self._loader(self.val_pairs):
                if batch is None:
                    continue
                img = model.encode_image(batch[0].to(device), normalize=True).float()  # (B, E)
                txt = model.encode_text(batch[1].to(device), normalize=True).float()  # (B, E)
                logits = logit_scale * img @ txt.T  # (B, B)
                target = torch.arange(len(img), device=device)
                losses.append(((F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2).item())
                images.append(img.cpu())
                texts.append(txt.cpu())
            if images:
                img, txt = torch.cat(images), torch.cat(texts)  # (N, E)
                metrics["loss"] = sum(losses) / len(losses)
                ranks = retrieval_ranks(img, txt, torch.arange(len(img)))
                metrics.update({k: v for k, v in retrieval_metrics(ranks).items() if "@" in k})
        if self.zeroshot is not None:
            metrics.update(self._zeroshot(model, device))
        return metrics

    def _zeroshot(self, model, device) -> dict[str, float]:
        dataset, classnames, templates = self.zeroshot
        prompts = [fill_template(t, c) for c in classnames for t in templates]
        embeddings = torch.cat([model.encode_text(self.tokenizer(prompts[i:i + 256]).to(device)).float()
                                for i in range(0, len(prompts), 256)])  # (C*T, E)
        classifier = zeroshot_head(embeddings, len(classnames))  # (E, C)
        scores, labels = [], []
        for batch in self._loader(dataset):
            if batch is None:
                continue
            feats = model.encode_image(batch[0].to(device), normalize=True)  # (B, E)
            scores.append(zeroshot_logits(feats, classifier.to(device)).cpu())
            labels.append(torch.as_tensor(batch[1]))
        if not scores:
            return {}
        m = classification_metrics(torch.cat(scores), torch.cat(labels), len(classnames))
        return {"zeroshot_acc1": m["acc1"], "zeroshot_acc5": m["acc5"]}


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
    for key in ("val", "zeroshot"):
        value = getattr(cfg.data, key)
        if value not in (None, "synthetic", "shapes") and not Path(value).exists():
            raise FileNotFoundError(f"data.{key}: not found: {value}")


def build_clip(cfg, world):
    """(CLIPTask, ResumableLoader) for a :class:`~openeva.train.config.TrainConfig` on this process."""
    model = build_clip_model(cfg.model)
    tokenizer = get_tokenizer(context_length=model.context_length)
    pre = PreprocessConfig.from_dict(preprocess_cfg(model))
    train_tf = image_transform(pre, is_train=True, scale=tuple(cfg.data.scale))
    val_tf = image_transform(pre, is_train=False)
    size = int(model.visual.cfg.img_size[0])
    d = cfg.data
    train = build_image_text_dataset(d, train_tf, tokenizer, size, cfg.seed, world.rank, world.world_size)
    loader = ResumableLoader(train, d.batch_size, rank=world.rank, world_size=world.world_size, seed=cfg.seed,
                             num_workers=d.num_workers, pin_memory=world.device.type == "cuda",
                             samples_per_epoch=d.train_num_samples)
    evaluator = None
    if world.is_main or cfg.dist.strategy == "fsdp":
        val = build_val_pairs(d, val_tf, tokenizer, size, cfg.seed)
        zeroshot = build_zeroshot_set(d, val_tf, size, cfg.seed)
        if val is not None or zeroshot is not None:
            evaluator = ClipEvaluator(tokenizer, val, zeroshot, batch_size=min(d.batch_size * 2, 256))
    o, loss = cfg.optim, cfg.loss
    task = CLIPTask(model, loss=loss.kind, local_loss=loss.local_loss, gather_with_grad=loss.gather_with_grad,
                    tiled=loss.tiled, visual_lr=o.visual_lr, text_lr=o.text_lr,
                    visual_layer_decay=o.visual_layer_decay, text_layer_decay=o.text_layer_decay,
                    visual_weight_decay=o.visual_weight_decay, text_weight_decay=o.text_weight_decay,
                    max_logit_scale=loss.max_logit_scale, evaluator=evaluator)
    return task, loader
