"""ClipTokenizer must produce exactly open_clip's ids: EVA-CLIP text towers were trained on them."""

import gzip
import pickle
from pathlib import Path

import pytest
import torch

from openeva.models import tokenizer as tokenizer_module
from openeva.models.tokenizer import ClipTokenizer, tokenize

open_clip = pytest.importorskip("open_clip")

CORPUS = [
    "a photo of a cat",
    "A Photo Of A DOG.",
    "Hello, world!!! What's up? I'm fine; you'll see -- they've gone (really).",
    "numbers: 3.14159, 2024-05-17, 1,000,000 and 42nd street #7",
    "emoji party 🎉🐱👍🏽 ❤️",
    "中文字符测试 日本語のテキスト 한국어 문장",
    "café naïve résumé Ångström façade Straße",
    "fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39; &amp;amp;",
    "   lots\tof \n\n whitespace\r\n   here   ",
    "",
    "MiXeD CaSe WoRdS iPhone McDonald's",
    "mojibake: cafÃ© and â€œsmart quotesâ€\x9d",
    "special tokens typed by hand <start_of_text> and <END_OF_TEXT> inside",
    "control\x00chars\x07 and zero\u200bwidth",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(f"word{i} tail" for i in range(200)),  # far past 77 tokens: truncation keeps eot last
]


@pytest.fixture(scope="module")
def ours():
    return ClipTokenizer()


@pytest.fixture(scope="module")
def theirs():
    return open_clip.get_tokenizer("EVA02-B-16")


def test_bundled_vocabulary_is_open_clips(ours):
    bundled = Path(tokenizer_module.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    reference = Path(open_clip.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")
    assert gzip.decompress(bundled.read_bytes()) == gzip.decompress(reference.read_bytes())
    assert ours.vocab_size == 49408
    assert (ours.sot_token_id, ours.eot_token_id) == (49406, 49407)


def test_ids_match_open_clip(ours, theirs):
    expected = theirs(CORPUS)
    got = ours(CORPUS)
    assert got.dtype == torch.long and got.shape == (len(CORPUS), 77)
    assert torch.equal(got, expected)
    for text in CORPUS:
        assert ours.encode(text) == theirs.encode(text), text


def test_truncation_and_padding(ours):
    long_row = ours("word " * 300)[0]
    assert long_row[0] == ours.sot_token_id and long_row[-1] == ours.eot_token_id
    assert (long_row[1:-1] != 0).all()
    empty_row = ours("")[0]
    assert empty_row[:2].tolist() == [ours.sot_token_id, ours.eot_token_id]
    assert (empty_row[2:] == 0).all()


def test_context_length_override_matches_open_clip(ours, theirs):
    texts = ["a photo of a cat", "a much longer caption that will certainly be cut short by the limit"]
    assert torch.equal(ours(texts, context_length=8), theirs(texts, context_length=8))
    assert ClipTokenizer(context_length=16)(texts).shape == (2, 16)


def test_module_level_tokenize_uses_shared_instance(ours):
    assert torch.equal(tokenize(["a dog", "a cat"]), ours(["a dog", "a cat"]))
    assert tokenize("a dog", context_length=5).shape == (1, 5)
    assert tokenizer_module.default_tokenizer() is tokenizer_module.default_tokenizer()


@pytest.mark.parametrize("text", ["a photo of a cat", "naïve café 中文 🎉", "supercalifragilisticexpialidocious"])
def test_decode_round_trip(ours, text):
    assert ours.decode(ours.encode(text)) == text
    assert ours.decode(ours(text)[0]) == text  # a padded row: sot skipped, stops at eot


def test_decode_of_punctuation_separates_pieces(ours):
    # Every BPE piece ends a "word", so the space before punctuation is not recoverable (as in open_clip).
    assert ours.decode(ours.encode("Hello, World!")) == "hello , world !"


def test_cache_returns_same_ids(ours):
    first = ours.encode("repetition repetition repetition")
    assert ours.encode("repetition repetition repetition") == first
    assert first[: len(first) // 3] * 3 == first


def test_pickle_round_trip_for_dataloader_workers(ours):
    ours.encode("warm the cache")
    clone = pickle.loads(pickle.dumps(ours))
    assert torch.equal(clone(CORPUS[:4]), ours(CORPUS[:4]))


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["ok", 5]])
def test_non_str_input_rejected(ours, bad):
    with pytest.raises(TypeError, match="str"):
        ours(bad)


def test_encode_non_str_rejected(ours):
    with pytest.raises(TypeError, match="must be a str, got int"):
        ours.encode(7)


@pytest.mark.parametrize("length", [0, 1, -5, 7.5, True])
def test_bad_context_length_rejected(ours, length):
    with pytest.raises(ValueError, match="context_length"):
        ours("a cat", context_length=length)


def test_decode_rejects_out_of_range_id(ours):
    with pytest.raises(ValueError, match="token id 50000"):
        ours.decode([320, 50000])


def test_missing_or_bad_vocab_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt.gz"):
        ClipTokenizer(tmp_path / "nope.txt.gz")
    bad = tmp_path / "bad.txt.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bad.txt.gz"):
        ClipTokenizer(bad)
