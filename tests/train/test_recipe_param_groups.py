"""The optimizer groups of the ``clip_eva02_b16`` recipe, parameter by parameter, against a checked-in table.

``data/eva02_b16_param_groups.json`` lists every parameter of EVA02-B-16 (openeva's names: fused ``qkv`` and
SwiGLU ``fc1``, where EVA has ``q/k/v_proj`` and ``w1/w2``; the rules below give each of EVA's matrices the values
of the fused one) with the layer id, lr, lr scale and weight decay EVA-CLIP's ``training/optim.py`` gives it:

* Towers: ``visual.*`` at the visual lr 2e-4, ``text.*`` at the text lr 2e-5, the rest (``logit_scale``) at the
  base lr 5e-4 without layer decay (layer id null); weight decay 0.05 everywhere it applies.
* No weight decay for tensors with ndim <= 1, names ending in ``.bias`` and the tower's ``no_weight_decay()``:
  vision ``{pos_embed, cls_token}``, text ``{positional_embedding}``, model ``{logit_scale}``. So the text
  ``token_embedding`` and the ``text_projection`` are decayed.
* Layer id (``get_num_layer_for_transformer``): 0 for names containing patch_embed, pos_embed, cls_token,
  mask_token, conv1, positional_embedding or token_embedding; ``i + 1`` for ``blocks.i.`` (also matching the
  text tower's ``resblocks.i.``); ``depth + 1`` = 13 for everything else (final norms, head, projection).
* Layer decay 0.75 in both towers: lr scale ``0.75 ** (depth + 1 - layer_id)``, 1 for the head.

The table was written from these rules once, not by openeva's code; the test builds the recipe's task on the
meta device (no memory, no init) and compares every parameter.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from openeva.factory import create_model
from openeva.train.clip_task import CLIPTask
from openeva.configs import load_config
from openeva.train.optim import param_groups

TABLE = Path(__file__).parent / "data" / "eva02_b16_param_groups.json"


def test_clip_eva02_b16_param_groups_match_eva_clip_rules():
    table = json.loads(TABLE.read_text())["parameters"]
    cfg = load_config("clip_eva02_b16")
    o = cfg.optim
    model = create_model(cfg.model.name, device="meta")
    task = CLIPTask(model, visual_lr=o.visual_lr, text_lr=o.text_lr, visual_layer_decay=o.visual_layer_decay,
                    text_layer_decay=o.text_layer_decay, visual_weight_decay=o.visual_weight_decay,
                    text_weight_decay=o.text_weight_decay)
    groups = param_groups(task, task.param_group_specs(), base_lr=o.lr, weight_decay=o.weight_decay)
    ours = {name.removeprefix("model."): g for g in groups for name in g["param_names"]}
    assert set(ours) == set(table) and len(table) == 362
    towers, params = {"visual": model.visual, "text": model.text}, dict(model.named_parameters())
    for name, want in table.items():
        group = ours[name]
        tower, _, rest = name.partition(".")
        layer = towers[tower].layer_id(rest) if tower in towers else None
        assert list(params[name].shape) == want["shape"] and layer == want["layer_id"], name
        got = {"lr": group["base_lr"] * group["lr_scale"], "lr_scale": group["lr_scale"],
               "weight_decay": group["weight_decay"]}
        assert got == pytest.approx({k: want[k] for k in got}, rel=1e-9), name
