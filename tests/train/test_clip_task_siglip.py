"""CLIPTask on a SigLIP model that owns its logit bias (open_clip's zoo): the model's 4-tuple forward is read,
its bias (pretrained or not) is the one the sigmoid loss uses and trains, and a contrastive loss is refused."""

from __future__ import annotations

import math

import pytest
import torch

from openeva.models.clip import CLIP, CLIPConfig
from openeva.models.zoo_openclip import siglip_text, siglip_vision
from openeva.train.clip_task import CLIPTask


def _tiny_siglip(bias: float = -7.0) -> CLIP:
    cfg = CLIPConfig(embed_dim=64,  # a SigLIP image tower has no head: width = embed dim
                     vision=siglip_vision(8, 64, 1, 2, 128, 32, "gelu_tanh"),
                     text=siglip_text(64, 2, 1, 2.0, 100, 12, embed=64, act="gelu", proj="linear"),
                     init_logit_scale=math.log(10), init_logit_bias=bias)
    return CLIP(cfg)


def test_siglip_model_bias_is_used_and_trained():
    torch.manual_seed(0)
    model = _tiny_siglip(bias=-7.0)
    task = CLIPTask(model, loss="siglip")
    assert task.logit_bias is None  # no second, Task-level bias beside the model's own
    images, tokens = torch.randn(4, 3, 32, 32), torch.randint(1, 99, (4, 12))
    features = task((images, tokens), features_only=True)
    assert features["bias"] is model.logit_bias and float(features["bias"]) == -7.0
    assert float(model.logit_scale) == pytest.approx(math.log(10))  # a pretrained scale is not reset
    loss, _ = task((images, tokens))
    loss.backward()
    assert model.logit_bias.grad is not None and float(model.logit_bias.grad) != 0.0
    assert [n for n, _ in task.named_parameters() if "logit_bias" in n] == ["model.logit_bias"]


def test_contrastive_loss_on_a_siglip_model_is_refused():
    with pytest.raises(ValueError, match="loss.kind=siglip"):
        CLIPTask(_tiny_siglip(), loss="clip")
