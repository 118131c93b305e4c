"""A Hugging Face transformers encoder as a CLIP text tower (XLM-RoBERTa, RoBERTa, BERT, mT5 ...).

Multilingual CLIP models (open_clip's ``xlm-roberta-base-ViT-B-32``, NLLB-CLIP) put a pretrained language model
where the CLIP text transformer was: token ids -> the encoder's hidden states -> a pooler (mean over the
non-padding tokens, the CLS token, ...) -> a projection to the joint embedding. Parameter names are open_clip's
``HFTextEncoder``'s (``text.transformer.*``, ``text.proj.*``), so its checkpoints load without renaming.

The tower is built from a transformers config held *in* :class:`HFTextConfig` (``hf_config``, a plain dict), so
a saved openeva model rebuilds offline with no download; ``HFTextConfig.from_pretrained`` reads that config
from a local folder (or the Hub cache). ``transformers`` is the optional extra ``openeva[hf]``.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn

POOLERS = ("mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler", "max_pooler")
PROJS = ("linear", "mlp", "none")
# transformers bookkeeping that is not part of a model's shape or behaviour
_VOLATILE = ("transformers_version", "architectures", "_name_or_path", "torch_dtype", "dtype")


def import_transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("Hugging Face text towers and tokenizers need transformers: "
                          "pip install 'openeva[hf]'") from e
    return transformers


@dataclass(frozen=True)
class HFTextConfig:
    """A transformers encoder as a text tower; open_clip's ``text_cfg`` keys ``hf_*`` in one frozen row.

    ``hf_config``: the transformers config as a dict (``model_type`` plus its fields); ``embed_dim``: the CLIP
    embedding dim; ``pooler``: how token states become one vector (open_clip's names); ``proj``: ``linear``,
    ``mlp`` (hidden (width + embed) / 2, GELU, no biases) or ``none`` (identity; the width must equal
    ``embed_dim``); ``hf_model_name``: the folder / Hub id the tokenizer (and, with ``pretrained``, the
    language model's own weights) come from; ``context_length``: rows the tokenizer makes.
    """

    hf_config: dict
    embed_dim: int
    pooler: str = "mean_pooler"
    proj: str = "mlp"
    context_length: int = 77
    hf_model_name: str | None = None
    pretrained: bool = False  # start from the language model's weights in ``hf_model_name`` (training)

    def __post_init__(self):
        if not isinstance(self.hf_config, dict) or "model_type" not in self.hf_config:
            raise ValueError("HFTextConfig.hf_config must be a transformers config dict with a model_type "
                             "(e.g. HFTextConfig.from_pretrained('path/to/xlm-roberta-folder', embed_dim=512))")
        object.__setattr__(self, "hf_config", {k: v for k, v in self.hf_config.items() if k not in _VOLATILE})
        if self.pooler not in POOLERS:
            raise ValueError(f"HFTextConfig.pooler must be one of {POOLERS}, got {self.pooler!r}")
        if self.proj not in PROJS:
            raise ValueError(f"HFTextConfig.proj must be one of {PROJS}, got {self.proj!r}")
        for name in ("embed_dim", "context_length"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"HFTextConfig.{name} must be a positive int, got {value!r}")
        if self.proj == "none" and self.width != self.embed_dim:
            raise ValueError(f"HFTextConfig.proj='none' needs the encoder width ({self.width}) == embed_dim "
                             f"({self.embed_dim}); use proj='linear' or 'mlp'")
        if self.pretrained and not self.hf_model_name:
            raise ValueError("HFTextConfig.pretrained needs hf_model_name (the folder or Hub id of the weights)")

    def __hash__(self):  # the config dict is compared by value, as the other tower configs are
        return hash((json.dumps(self.hf_config, sort_keys=True, default=str), self.embed_dim, self.pooler,
                     self.proj, self.context_length, self.hf_model_name, self.pretrained))

    @property
    def width(self) -> int:
        c = self.hf_config
        for key in ("hidden_size", "d_model", "dim"):
            if key in c:
                return int(c[key])
        return int(self.hf_transformers_config().hidden_size)

    @property
    def pad_token_id(self) -> int:
        pad = self.hf_config.get("pad_token_id")
        return int(pad) if pad is not None else int(getattr(self.hf_transformers_config(), "pad_token_id", 0) or 0)

    @property
    def output_dim(self) -> int:
        return self.embed_dim

    def hf_transformers_config(self):
        """The transformers ``PretrainedConfig`` this row describes (no download)."""
        transformers = import_transformers()
        c = dict(self.hf_config)
        return transformers.AutoConfig.for_model(c.pop("model_type"), **c)

    @classmethod
    def from_pretrained(cls, name_or_path: str, embed_dim: int, **kwargs) -> HFTextConfig:
        """The config of a transformers checkpoint folder (``config.json``) or Hub id (from the local cache,
        or downloaded), as a text tower of ``embed_dim``; ``kwargs`` set the other fields."""
        transformers = import_transformers()
        try:
            config = transformers.AutoConfig.from_pretrained(name_or_path)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"cannot read a transformers config from {name_or_path!r}: {e}") from e
        kwargs.setdefault("hf_model_name", name_or_path)
        return cls(hf_config=config.to_diff_dict(), embed_dim=embed_dim, **kwargs)

    def replace(self, **changes) -> HFTextConfig:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> HFTextConfig:
        return cls(**{k: v for k, v in d.items() if k != "kind"})


def _pool(pooler: str, out, mask: torch.Tensor) -> torch.Tensor:
    """(B, L, W) hidden states + (B, L) 0/1 mask -> (B, W), as open_clip's poolers."""
    h = out.last_hidden_state  # (B, L, W)
    if pooler == "mean_pooler":
        m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
        return (h * m).sum(dim=1) / m.sum(dim=1)
    if pooler == "max_pooler":  # the max over real tokens (padding can never win)
        return h.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(h.dtype).min).max(dim=1).values
    if pooler == "cls_pooler" and getattr(out, "pooler_output", None) is not None:
        return out.pooler_output  # BERT-style pooler (dense + tanh over the CLS state)
    return h[:, 0]  # (B, W): the CLS state


class HFTextTower(nn.Module):
    """Token ids (B, L) -> (B, embed_dim); padding is every position equal to the config's pad id."""

    def __init__(self, cfg: HFTextConfig):
        super().__init__()
        transformers = import_transformers()
        self.cfg = cfg
        self.context_length = cfg.context_length
        self.embed_dim = self.output_dim = cfg.embed_dim
        config = cfg.hf_transformers_config()
        self.vocab_size = int(getattr(config, "vocab_size", 0) or 0)
        self.pad_token_id = cfg.pad_token_id
        # BERT's pooler layer exists only where it is used, as open_clip builds it
        encoder_decoder = getattr(config, "is_encoder_decoder", False)
        extra = {} if encoder_decoder else {"add_pooling_layer": cfg.pooler == "cls_pooler"}
        if cfg.pretrained:
            model = transformers.AutoModel.from_pretrained(cfg.hf_model_name, **extra)
        else:
            model = transformers.AutoModel.from_config(config, **extra)
        self.transformer = model.encoder if getattr(config, "is_encoder_decoder", False) else model
        width = cfg.width
        if cfg.proj == "none":
            self.proj = nn.Identity()
        elif cfg.proj == "linear":
            self.proj = nn.Linear(width, cfg.embed_dim, bias=False)
        else:
            hidden = (width + cfg.embed_dim) // 2
            self.proj = nn.Sequential(nn.Linear(width, hidden, bias=False), nn.GELU(),
                                      nn.Linear(hidden, cfg.embed_dim, bias=False))
        self._depth = int(getattr(config, "num_hidden_layers", 0) or getattr(config, "num_layers", 0) or 0)

    # ------------------------------------------------------------------------------ hooks for the trainer
    @property
    def num_layers(self) -> int:
        """Layer ids: 0 embeddings, 1..depth the encoder layers, depth + 1 the pooler / final norm / projection."""
        return self._depth + 2

    def layer_id(self, name: str) -> int:
        m = re.search(r"\.(?:layer|layers|block)\.(\d+)\.", name)
        if m:
            return int(m.group(1)) + 1
        if name.startswith(("transformer.embeddings", "transformer.embed_tokens", "transformer.shared")):
            return 0
        return self._depth + 1

    def no_weight_decay(self) -> set[str]:
        """Position embeddings, as the CLIP text tower's ``positional_embedding``."""
        return {n for n, _ in self.named_parameters() if "position_embeddings" in n}

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        t = self.transformer  # transformers 5 renamed gradient_* to activation_checkpointing_*
        name = "activation_checkpointing" if hasattr(t, "activation_checkpointing_enable") else "gradient_checkpointing"
        getattr(t, f"{name}_enable" if enable else f"{name}_disable")()

    # ---------------------------------------------------------------------------------------- forward
    def forward(self, text: torch.Tensor) -> torch.Tensor:
        if text.dim() != 2:
            raise ValueError(f"text must be token ids (B, L), got shape {tuple(text.shape)}")
        mask = (text != self.pad_token_id).long()  # (B, L)
        out = self.transformer(input_ids=text, attention_mask=mask)
        return self.proj(_pool(self.cfg.pooler, out, mask))  # (B, E)
