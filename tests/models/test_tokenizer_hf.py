"""SentencePiece (SigLIP / SigLIP 2) and Hugging Face tokenizers read from a folder: the same ids as open_clip's
``SigLipTokenizer`` / ``HFTokenizer`` wrappers, and ``get_tokenizer`` picking the right one. The tokenizers are
trained here on a few sentences (no download)."""

import json

import pytest
import torch

pytest.importorskip("transformers")
spm = pytest.importorskip("sentencepiece")
tokenizers = pytest.importorskip("tokenizers")
from open_clip.tokenizer import HFTokenizer as OpenClipHFTokenizer
from open_clip.tokenizer import SigLipTokenizer

from openeva.factory import get_tokenizer
from openeva.models.tokenizer import (
    ClipTokenizer, HFTokenizer, TokenizerSpec, build_tokenizer, canonicalize_text, sentencepiece_tokenizer,
    tokenizer_for_folder,
)

CORPUS = ["a photo of a cat", "a photo of a dog on the grass", "two dogs playing in the snow",
          "a red car parked near a house", "the quick brown fox jumps over the lazy dog",
          "a bowl of fruit on a wooden table", "Une photo d'un chat", "ein Hund im Schnee"] * 20
TEXTS = ["A Photo of a CAT!", "a dog_on the grass, in snow...", "  spaced   out  ", "",
         "a very long caption " * 12, "unseen wörds & ünïcode"]


def _train_spm(path, name, **options):
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_prefix=str(path / name),
                                   hard_vocab_limit=False, character_coverage=1.0, minloglevel=2,
                                   **{"vocab_size": 50, "model_type": "unigram", "pad_id": 0, "eos_id": 1, "unk_id": 2,
                                      "bos_id": -1, **options})
    return path / f"{name}.model"


def _open_clip_siglip(tokenizer, pad_id, context_length=16):
    """open_clip's ``SigLipTokenizer`` call path around a transformers tokenizer. Its constructor cannot load a
    local ``.model`` under transformers 5 (``T5TokenizerFast``'s first argument became the vocabulary list), so
    the tokenizer is loaded with ``from_pretrained`` and given the ids its constructor sets."""
    oc = SigLipTokenizer.__new__(SigLipTokenizer)
    tokenizer.pad_token_id, tokenizer.eos_token_id = pad_id, 1
    oc.tokenizer, oc.context_length = tokenizer, context_length
    return oc


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    return _train_spm(tmp_path_factory.mktemp("spm"), "spiece")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["[PAD]", "[UNK]", "[CLS]",
                                                                                          "[SEP]"]))
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    folder = tmp_path_factory.mktemp("hf_tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                            sep_token="[SEP]").save_pretrained(folder)
    return folder


def test_sentencepiece_ids_equal_open_clips_siglip_tokenizer(spm_model):
    from transformers import T5TokenizerFast

    theirs = _open_clip_siglip(T5TokenizerFast.from_pretrained(str(spm_model.parent), legacy=False, extra_ids=0), 1)
    ours = sentencepiece_tokenizer(spm_model, context_length=16)
    expected = theirs(TEXTS)
    got = ours(TEXTS)
    assert got.dtype == torch.long and got.shape == (len(TEXTS), 16)
    assert torch.equal(got, expected)
    assert (got[2] == 1).sum() > 1  # SigLIP pads with 1 (= eos) up to the context length
    assert got[4, -1] == 1  # a long caption is truncated and keeps its end token
    assert ours.decode(got[0]) == "a photo of a cat"


def test_gemma_variant_equals_open_clips_siglip2_tokenizer(tmp_path):
    from transformers import GemmaTokenizerFast

    # Gemma's vocabulary: BPE with byte fallback and no dummy prefix (SigLIP 2)
    model = _train_spm(tmp_path, "tokenizer", vocab_size=320, model_type="bpe", unk_id=3, bos_id=2,
                       byte_fallback=True, add_dummy_prefix=False, eos_piece="<eos>", bos_piece="<bos>")
    hf = GemmaTokenizerFast.from_pretrained(str(tmp_path), padding_side="right", add_bos_token=False,
                                            add_eos_token=True)
    theirs = _open_clip_siglip(hf, 0)
    ours = sentencepiece_tokenizer(model, context_length=16, variant="gemma")
    assert torch.equal(ours(TEXTS), theirs(TEXTS))
    assert ours(["a cat"])[0, -1] == 0  # Gemma pads with 0


def test_hf_tokenizer_ids_equal_open_clips_hf_tokenizer(hf_folder):
    for clean in ("whitespace", "lower", "canonicalize"):
        theirs = OpenClipHFTokenizer(str(hf_folder), context_length=12, clean=clean)
        ours = HFTokenizer.from_pretrained(str(hf_folder), context_length=12, clean=clean)
        assert torch.equal(ours(TEXTS), theirs(TEXTS)), clean
    theirs = OpenClipHFTokenizer(str(hf_folder), context_length=12, strip_sep_token=True)
    ours = HFTokenizer.from_pretrained(str(hf_folder), context_length=12, strip_sep_token=True)
    assert torch.equal(ours(TEXTS), theirs(TEXTS))
    assert ours(["a cat"], context_length=20).shape == (1, 20)


def test_get_tokenizer_reads_the_folder(hf_folder, spm_model, tmp_path):
    tok = get_tokenizer(str(hf_folder))
    assert isinstance(tok, HFTokenizer) and tok.context_length == 77 and tok.clean == "whitespace"
    assert tokenizer_for_folder(spm_model.parent).kind == "sentencepiece"
    siglip = get_tokenizer(f"local-dir:{spm_model.parent}", context_length=16)
    assert siglip.clean == "canonicalize" and siglip.context_length == 16
    assert torch.equal(siglip(TEXTS), sentencepiece_tokenizer(spm_model, context_length=16)(TEXTS))
    # an open_clip_config.json beside the files gives the cleaning and the context length
    (hf_folder / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": {"text_cfg": {"context_length": 24, "tokenizer_kwargs": {"clean": "canonicalize"}}}}))
    try:
        tok = get_tokenizer(str(hf_folder))
        assert tok.context_length == 24 and tok.clean == "canonicalize"
    finally:
        (hf_folder / "open_clip_config.json").unlink()
    assert tokenizer_for_folder(tmp_path) is None


def test_registered_names_keep_the_clip_bpe():
    tok = get_tokenizer("convnext-test")
    assert isinstance(tok, ClipTokenizer) and tok.context_length == 77
    assert isinstance(build_tokenizer(TokenizerSpec()), ClipTokenizer)


def test_spec_and_input_errors(hf_folder, tmp_path):
    with pytest.raises(ValueError, match="needs a source"):
        TokenizerSpec("hf")
    with pytest.raises(ValueError, match="clean must be one of"):
        TokenizerSpec("hf", "x", clean="upper")
    with pytest.raises(FileNotFoundError, match="no SentencePiece model"):
        sentencepiece_tokenizer(tmp_path)
    (tmp_path / "spiece.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        sentencepiece_tokenizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="cannot read a tokenizer"):
        HFTokenizer.from_pretrained(str(tmp_path / "nothing"))
    tok = HFTokenizer.from_pretrained(str(hf_folder))
    with pytest.raises(TypeError, match="must be a str"):
        tok(["ok", 3])
    spec = TokenizerSpec("sentencepiece", "m", "canonicalize")
    assert TokenizerSpec.from_dict(spec.to_dict()) == spec


def test_canonicalize_matches_big_vision():
    from open_clip.tokenizer import _clean_canonicalize

    for t in TEXTS + ["Hello_World!! it's   A {test}."]:
        assert canonicalize_text(t) == _clean_canonicalize(t)
