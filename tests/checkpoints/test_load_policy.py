"""The one weight-loading policy: what a tower's policy does not allow is refused by name with nothing loaded;
what it allows is loaded and reported, in the same words as the refusal."""

from __future__ import annotations

import logging

import pytest
import torch

import openeva
from openeva.checkpoints import CheckpointMismatchError, LoadPolicy, load_weights
from openeva.factory import policies

MODEL = "eva02_test_patch8_32"


def _classifier(num_classes=4, seed=0):
    torch.manual_seed(seed)
    return openeva.create_model(MODEL, num_classes=num_classes)


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_an_unexpected_key_the_tower_does_not_allow_is_refused_by_name_and_nothing_is_loaded():
    model = _classifier()
    before = _snapshot(model)
    sd = {k: v + 1 for k, v in _classifier(seed=1).state_dict().items()}
    sd["decoder.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointMismatchError) as err:
        load_weights(model, sd, policies.CLASSIFIER, "ck.pt")
    assert err.value.unexpected == ["decoder.weight"] and err.value.tower == "classifier"
    message = str(err.value)
    assert "does not fit the classifier" in message and "1 unexpected keys: decoder.weight" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing was loaded
    # the same key where the policy allows it: dropped and reported
    report = load_weights(model, sd, LoadPolicy("classifier", may_be_unexpected=("decoder.*",)), "ck.pt")
    assert report.unexpected == ("decoder.weight",)
    assert "1 unexpected keys (dropped): decoder.weight" in report.describe()
    assert torch.equal(model.cls_token, sd["cls_token"])


def test_an_allowed_missing_key_is_loaded_around_and_reported(caplog):
    model = _classifier()
    head = model.head.weight.detach().clone()
    sd = {k: v for k, v in _classifier(seed=1).state_dict().items() if not k.startswith("head.")}
    with caplog.at_level(logging.INFO, logger="openeva.checkpoints.policy"):
        report = load_weights(model, sd, policies.CLASSIFIER, "mim/final")
    assert report.missing == ("head.weight", "head.bias") and report.unexpected == () and report.reshaped == ()
    assert len(report.loaded) == len(sd) and torch.equal(model.head.weight, head)  # the head kept its init
    line = "classifier <- mim/final: loaded %d of %d keys; 2 missing keys (left as initialised): head.weight, " \
           "head.bias" % (len(sd), len(sd) + 2)
    assert report.describe() == line and line in caplog.text
    # where the policy does not allow it, the same key is refused in the same words
    with pytest.raises(CheckpointMismatchError, match="2 missing keys: head.weight, head.bias"):
        load_weights(model, sd, policies.MODEL, "mim/final")


def test_a_head_of_another_shape_is_replaced_only_where_the_policy_says():
    model = _classifier(num_classes=4)
    sd = _classifier(num_classes=10, seed=1).state_dict()
    report = load_weights(model, sd, policies.CLASSIFIER, "in1k.pt")
    assert report.reshaped == ("head.weight", "head.bias") and set(report.missing) == {"head.weight", "head.bias"}
    assert model.head.out_features == 4 and torch.equal(model.pos_embed, sd["pos_embed"])
    with pytest.raises(CheckpointMismatchError, match="mis-shaped keys: head.weight: checkpoint \\(10, 64\\)"):
        load_weights(_classifier(num_classes=4), sd, policies.MODEL, "in1k.pt")


def test_skip_list_keys_are_never_loaded_and_may_be_absent():
    model = _classifier()
    fresh = model.head.weight.detach().clone()
    sd = _classifier(seed=1).state_dict()
    report = load_weights(model, sd, policies.MODEL.allowing(skip=("head.*",)), "ck")
    assert report.skipped == ("head.weight", "head.bias") and torch.equal(model.head.weight, fresh)
    del sd["head.weight"], sd["head.bias"]
    assert load_weights(model, sd, policies.MODEL.allowing(skip=("head.*",)), "ck").skipped == ()


def test_assign_needs_a_policy_that_loads_every_key():
    with pytest.raises(ValueError, match="assign=True needs every key"):
        load_weights(_classifier(), {}, policies.CLASSIFIER, "ck", assign=True)


@pytest.mark.parametrize("kwargs, match", [
    ({"tower": ""}, "names its tower"),
    ({"tower": "x", "may_be_missing": "head.*"}, "tuple of glob patterns"),
    ({"tower": "x", "skip": (1,)}, "tuple of glob patterns"),
])
def test_policy_validates_itself(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LoadPolicy(**kwargs)


def test_load_checkpoint_takes_a_policy_or_strict_but_not_both(tmp_path):
    model = _classifier()
    torch.save({k: v for k, v in model.state_dict().items() if not k.startswith("head.")}, tmp_path / "w.pt")
    info = openeva.load_checkpoint(model, tmp_path / "w.pt", policy=policies.CLASSIFIER)
    assert info["missing"] == ["head.weight", "head.bias"]
    with pytest.raises(ValueError, match="not both"):
        openeva.load_checkpoint(model, tmp_path / "w.pt", strict=False, policy=policies.CLASSIFIER)
