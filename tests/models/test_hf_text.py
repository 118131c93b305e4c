"""A Hugging Face transformers encoder as the CLIP text tower: outputs equal to open_clip's ``HFTextEncoder`` on
the same (random) weights, a whole CLIP loaded from an open_clip ``CustomTextCLIP`` checkpoint, the trainer's
hooks, and the message when transformers is missing. A tiny XLM-RoBERTa config is written locally: no download."""

import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")
from open_clip.hf_model import HFTextEncoder
from open_clip.model import CustomTextCLIP

from openeva.factory import load_from
from openeva.factory.policies import MODEL
from openeva.models.clip import CLIP, CLIPConfig
from openeva.models.hf_text import HFTextConfig, HFTextTower
from openeva.models.timm_tower import TimmTowerConfig


@pytest.fixture(scope="module")
def xlmr_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("xlmr")
    transformers.XLMRobertaConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=40).save_pretrained(d)
    return str(d)


def _ids(pad=1):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 120, (3, 12), generator=g)
    ids[0, 8:] = pad
    ids[1, 4:] = pad
    return ids


@pytest.mark.parametrize("pooler", ["mean_pooler", "cls_pooler", "cls_last_hidden_state_pooler"])
@pytest.mark.parametrize("proj", ["linear", "mlp"])
def test_outputs_equal_open_clips_hf_text_encoder(xlmr_dir, pooler, proj):
    torch.manual_seed(0)
    theirs = HFTextEncoder(xlmr_dir, 16, pooler_type=pooler, proj_type=proj, pretrained=False).eval()
    ours = HFTextTower(HFTextConfig.from_pretrained(xlmr_dir, 16, pooler=pooler, proj=proj)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # same parameter names: no conversion
    ids = _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), theirs(ids), rtol=0, atol=1e-6)
        # padding is masked out: a longer padded row gives the same embedding
        longer = torch.cat([ids, torch.ones(3, 4, dtype=torch.long)], dim=1)
        torch.testing.assert_close(ours(longer)[:2], ours(ids)[:2], rtol=1e-5, atol=1e-5)


def test_a_clip_with_an_hf_text_tower_loads_open_clips_checkpoint(xlmr_dir, tmp_path):
    torch.manual_seed(0)
    oc = CustomTextCLIP(16, dict(image_size=64, timm_model_name="test_convnext", timm_pool="", timm_proj="linear"),
                        dict(hf_model_name=xlmr_dir, hf_model_pretrained=False, hf_proj_type="mlp",
                             hf_pooler_type="mean_pooler")).eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(oc.state_dict(), path)
    cfg = CLIPConfig(embed_dim=16, vision=TimmTowerConfig("test_convnext", 16, img_size=64, pool=""),
                     text=HFTextConfig.from_pretrained(xlmr_dir, 16, pooler="mean_pooler", proj="mlp"))
    ours = CLIP(cfg).eval()
    report = load_from(ours, str(path), MODEL)  # every key, exactly
    assert not report.missing
    x, ids = torch.randn(2, 3, 64, 64), _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(x), oc.encode_image(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(ours.encode_text(ids), oc.encode_text(ids), rtol=0, atol=1e-6)
    assert CLIPConfig.from_dict(cfg.to_dict()) == cfg  # the transformers config travels in the model config
    assert cfg.to_dict()["text"]["kind"] == "hf_text"


def test_hooks_layer_ids_lock_and_checkpointing(xlmr_dir):
    cfg = CLIPConfig(embed_dim=16, vision=TimmTowerConfig("test_convnext", 16, img_size=64, pool=""),
                     text=HFTextConfig.from_pretrained(xlmr_dir, 16, proj="linear"))
    model = CLIP(cfg)
    text = model.text
    assert text.num_layers == 4
    assert text.layer_id("transformer.embeddings.word_embeddings.weight") == 0
    assert text.layer_id("transformer.encoder.layer.1.attention.self.query.weight") == 2
    assert text.layer_id("proj.weight") == 3
    assert text.no_weight_decay() == {"transformer.embeddings.position_embeddings.weight"}
    model.lock_text_tower(unlocked_layers=2)  # the last encoder layer and the projection stay trainable
    trainable = {n for n, p in text.named_parameters() if p.requires_grad}
    assert "proj.weight" in trainable and any(".layer.1." in n for n in trainable)
    assert not any(".layer.0." in n or "embeddings" in n for n in trainable)
    model.set_grad_checkpointing(True)
    t = text.transformer
    assert getattr(t, "is_activation_checkpointing", None) or t.is_gradient_checkpointing
    assert model.context_length == 77


def test_config_validation(xlmr_dir):
    base = HFTextConfig.from_pretrained(xlmr_dir, 16)
    assert base.width == 32 and base.pad_token_id == 1 and base.hf_model_name == xlmr_dir
    with pytest.raises(ValueError, match="pooler must be one of"):
        base.replace(pooler="last")
    with pytest.raises(ValueError, match="width"):
        base.replace(proj="none")  # 32 wide, 16 out
    with pytest.raises(ValueError, match="model_type"):
        HFTextConfig(hf_config={"hidden_size": 8}, embed_dim=8)
    with pytest.raises(FileNotFoundError, match="cannot read a transformers config"):
        HFTextConfig.from_pretrained(str(xlmr_dir) + "/missing", 16)
    assert hash(base) == hash(HFTextConfig.from_dict(base.to_dict()))


def test_missing_transformers_names_the_extra(xlmr_dir, monkeypatch):
    cfg = HFTextConfig.from_pretrained(xlmr_dir, 16)
    monkeypatch.setitem(sys.modules, "transformers", None)  # as if it were not installed
    with pytest.raises(ImportError, match=r"openeva\[hf\]"):
        HFTextTower(cfg)


def test_a_vit_with_an_hf_text_tower_loads_open_clips_checkpoint(xlmr_dir, tmp_path):
    """xlm-roberta-*-ViT-* in small: open_clip's ViT (OpenAI layout, converted) beside an HF tower (as is)."""
    from openeva.models.zoo_openclip import openai_vision

    torch.manual_seed(0)
    oc = CustomTextCLIP(16, dict(image_size=32, layers=2, width=64, patch_size=8, head_width=32, mlp_ratio=2.0),
                        dict(hf_model_name=xlmr_dir, hf_model_pretrained=False, hf_proj_type="mlp",
                             hf_pooler_type="mean_pooler")).eval()
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(oc.state_dict(), path)
    cfg = CLIPConfig(embed_dim=16, vision=openai_vision(64, 2, 2, 128, 8, 32, 16, False),
                     text=HFTextConfig.from_pretrained(xlmr_dir, 16))
    ours = CLIP(cfg).eval()
    load_from(ours, str(path), MODEL)
    x, ids = torch.randn(2, 3, 32, 32), _ids()
    with torch.no_grad():
        torch.testing.assert_close(ours.encode_image(x), oc.encode_image(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.encode_text(ids), oc.encode_text(ids), rtol=0, atol=1e-6)


def test_registered_multilingual_clips_match_open_clips_layout(tmp_path):
    from openeva.factory import create_model
    from openeva.models.zoo_timm import XLMR_CONFIGS

    folder = tmp_path / "xlm-roberta-base"  # open_clip reads the text config from the Hub name: give it a folder
    cfg = dict(XLMR_CONFIGS["xlm-roberta-base"])
    transformers.AutoConfig.for_model(cfg.pop("model_type"), **cfg).save_pretrained(folder)
    with torch.device("meta"):
        oc = CustomTextCLIP(512, dict(image_size=224, layers=12, width=768, patch_size=32),
                            dict(hf_model_name=str(folder), hf_model_pretrained=False, hf_pooler_type="mean_pooler"))
    ours = create_model("xlm-roberta-base-ViT-B-32", device="meta")
    theirs = {k: tuple(v.shape) for k, v in oc.state_dict().items() if not k.endswith("position_ids")}
    assert {k: tuple(v.shape) for k, v in ours.text.state_dict().items() if not k.endswith("position_ids")} == \
        {k[len("text."):]: s for k, s in theirs.items() if k.startswith("text.")}
    assert ours.visual.cfg.num_classes == 512 and ours.visual.cfg.patch_size == 32  # the ViT-B-32 row's tower
    assert ours.text.cfg.hf_model_name == "xlm-roberta-base"  # where get_tokenizer reads its tokenizer from
