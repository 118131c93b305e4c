"""CLIP byte-level BPE tokenizer (Radford et al., 2021, "Learning Transferable Visual Models ...").

EVA-CLIP text towers were trained on the OpenAI CLIP vocabulary, so the ids produced here must be exactly the
ids open_clip produces: same merges file (shipped as package data), same text cleaning, same pre-tokenization
pattern, same truncation rule. Only the code is our own.

How a text becomes ids:
1. clean: ftfy repair, HTML unescape (twice, as open_clip), whitespace collapse, lowercase;
2. pre-tokenize with a regex into words, contractions, single digits and punctuation runs;
3. map each piece's UTF-8 bytes to printable unicode characters (so every byte has a vocabulary symbol);
4. apply the BPE merges in rank order; the last symbol of a piece carries the end-of-word marker ``</w>``.

Models trained on other vocabularies read theirs from the checkpoint folder (second half of this module):
:class:`HFTokenizer` (transformers' ``tokenizer.json`` / ``tokenizer_config.json``: XLM-RoBERTa, SigLIP's Hub
folders) and :class:`SentencePieceTokenizer` (a bare ``spiece.model``, SigLIP's T5 / Gemma rules), chosen by a
:class:`TokenizerSpec` row (``openeva.factory.get_tokenizer`` picks it from a model name or a folder).
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import ftfy
import regex
import torch

DEFAULT_CONTEXT_LENGTH = 77
SOT_TEXT = "<start_of_text>"
EOT_TEXT = "<end_of_text>"
_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
# The merges file holds more rules than CLIP uses: CLIP keeps 48894 merges so that 512 byte symbols (with and
# without </w>) + merges + 2 special tokens = 49408 ids.
_NUM_MERGES = 49152 - 256 - 2
_END_OF_WORD = "</w>"
_MAX_CACHE_ENTRIES = 1 << 17


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> dict[int, str]:
    """Map each of the 256 byte values to a printable unicode character.

    Printable latin-1 bytes map to themselves; the remaining bytes (control characters, space, ...) are
    shifted to code points 256 and up, in byte order. This is the table the CLIP merges file is written in;
    its insertion order (printable bytes first) is also the order of the first 256 vocabulary ids.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def clean_text(text: str) -> str:
    """open_clip's default ('lower') cleaning: repair mojibake, unescape HTML, collapse whitespace, lowercase."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def _read_merges(vocab_path: str | Path | None) -> list[tuple[str, str]]:
    """The first ``_NUM_MERGES`` merge rules of a gzipped CLIP merges file (line 0 is a version header)."""
    if vocab_path is None:
        data = importlib.resources.files("openeva.models").joinpath(_VOCAB_FILE).read_bytes()
    else:
        if not Path(vocab_path).is_file():
            raise FileNotFoundError(f"tokenizer vocabulary file not found: {vocab_path}")
        data = Path(vocab_path).read_bytes()
    try:
        lines = gzip.decompress(data).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read tokenizer vocabulary {vocab_path}: {err}") from err
    rules = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    if len(rules) != _NUM_MERGES or any(len(rule) != 2 for rule in rules):
        raise ValueError(f"{vocab_path} is not a CLIP BPE merges file (expected {_NUM_MERGES} pair lines)")
    return rules


def _check_text(text, where: str) -> str:
    if not isinstance(text, str):
        raise TypeError(f"tokenizer input {where} must be a str, got {type(text).__name__}: {text!r:.80}")
    return text


class ClipTokenizer:
    """CLIP BPE tokenizer; ``tokenizer(texts)`` gives the ``(N, context_length)`` id tensor a text tower eats.

    Args:
        vocab_path: gzipped merges file; ``None`` uses the OpenAI CLIP vocabulary shipped with openeva.
        context_length: default row length of ``__call__`` output (77 for every CLIP model).
    """

    def __init__(self, vocab_path: str | Path | None = None, context_length: int = DEFAULT_CONTEXT_LENGTH):
        self.context_length = _check_context_length(context_length)
        merges = _read_merges(vocab_path)
        byte_symbols = list(byte_to_unicode().values())
        symbols = byte_symbols + [s + _END_OF_WORD for s in byte_symbols] + ["".join(m) for m in merges]
        symbols += [SOT_TEXT, EOT_TEXT]
        self._encoder = {symbol: i for i, symbol in enumerate(symbols)}
        self._decoder = symbols
        self._merge_rank = {pair: rank for rank, pair in enumerate(merges)}
        self._byte_encoder = byte_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        self.sot_token_id = self._encoder[SOT_TEXT]
        self.eot_token_id = self._encoder[EOT_TEXT]
        # Like open_clip, the special token strings are matched first, so a literal "<end_of_text>" in a
        # caption becomes the special id (matching is case-insensitive, after lowercasing anyway).
        self._pattern = regex.compile(
            rf"{SOT_TEXT}|{EOT_TEXT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+",
            regex.IGNORECASE,
        )
        self._cache: dict[str, tuple[str, ...]] = {}

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (49408 for the CLIP vocabulary)."""
        return len(self._decoder)

    def _bpe(self, piece: str) -> tuple[str, ...]:
        """Split one byte-mapped piece into vocabulary symbols by applying merges lowest rank first."""
        if piece in (SOT_TEXT, EOT_TEXT):
            return (piece,)
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        symbols = [*piece[:-1], piece[-1] + _END_OF_WORD]
        while len(symbols) > 1:
            ranked = [(self._merge_rank.get(pair, _NUM_MERGES), pair) for pair in zip(symbols, symbols[1:])]
            rank, best = min(ranked, key=lambda item: item[0])
            if rank == _NUM_MERGES:
                break
            merged, i = [], 0
            while i < len(symbols):  # merge every non-overlapping occurrence, left to right
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        if len(self._cache) >= _MAX_CACHE_ENTRIES:  # bound memory on endless streams of unique words
            self._cache.clear()
        result = tuple(symbols)
        self._cache[piece] = result
        return result

    def encode(self, text: str) -> list[int]:
        """Ids of ``text`` without start/end tokens and without truncation."""
        text = clean_text(_check_text(text, "text"))
        ids = []
        for piece in self._pattern.findall(text):
            mapped = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self._encoder[symbol] for symbol in self._bpe(mapped))
        return ids

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of ``ids``; a start token is skipped and decoding stops at the first end token, so a padded
        row of ``__call__`` output decodes to its cleaned caption. Lossy like all CLIP decoding: every
        pre-tokenized piece ends a word, so punctuation comes back space-separated ("hello , world !")."""
        if isinstance(ids, torch.Tensor):
            if ids.dim() != 1:
                raise ValueError(f"decode expects a 1-D id sequence, got a tensor of shape {tuple(ids.shape)}")
            ids = ids.tolist()
        data = bytearray()
        for token_id in ids:
            token_id = int(token_id)
            if not 0 <= token_id < self.vocab_size:
                raise ValueError(f"token id {token_id} is outside the vocabulary [0, {self.vocab_size})")
            if token_id == self.eot_token_id:
                break
            if token_id == self.sot_token_id:
                continue
            symbol = self._decoder[token_id]
            word_end = symbol.endswith(_END_OF_WORD)
            data.extend(self._byte_decoder[c] for c in symbol.removesuffix(_END_OF_WORD))
            if word_end:
                data.extend(b" ")
        return " ".join(data.decode("utf-8", errors="replace").split())

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """``(N, context_length)`` long tensor: start id, text ids, end id, zero padding.

        Texts too long are cut to ``context_length`` with the end id kept as the last token.
        """
        length = self.context_length if context_length is None else _check_context_length(context_length)
        texts = _text_list(texts)
        out = torch.zeros(len(texts), length, dtype=torch.long)  # (N, L)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(_check_text(text, f"texts[{row}]"))][: length - 1]
            ids.append(self.eot_token_id)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, context_length={self.context_length})"


def _text_list(texts) -> list[str] | tuple[str, ...]:
    """A tokenizer's input as a sequence: one string becomes a list of one; anything but a list/tuple is refused."""
    if isinstance(texts, str):
        return [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"tokenizer input must be a str or a list of str, got {type(texts).__name__}")
    return texts


def _check_context_length(context_length) -> int:
    if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
        raise ValueError(f"context_length must be an int >= 2 (room for start and end ids), got {context_length!r}")
    return context_length


@functools.lru_cache(maxsize=1)
def default_tokenizer() -> ClipTokenizer:
    """The shared tokenizer over the bundled CLIP vocabulary, built on first use (not at import)."""
    return ClipTokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = DEFAULT_CONTEXT_LENGTH) -> torch.Tensor:
    """Tokenize with the shared default tokenizer; see ``ClipTokenizer.__call__``."""
    return default_tokenizer()(texts, context_length=context_length)


# ---------------------------------------------------------------------------- SentencePiece / Hugging Face
# Models trained on other vocabularies (SigLIP's SentencePiece, XLM-RoBERTa's, Gemma's for SigLIP 2) read their
# tokenizer from the checkpoint folder through transformers, as open_clip's ``HFTokenizer`` / ``SigLipTokenizer``
# do, so the ids are theirs: same cleaning, padding to the context length, truncation keeping the end token.
# These text towers pool the last / first / mean position, not the EOT argmax, so padding ids may be anything.

TOKENIZER_KINDS = ("clip", "hf", "sentencepiece")
CLEANS = ("lower", "whitespace", "canonicalize")
SENTENCEPIECE_VARIANTS = ("t5", "gemma")  # SigLIP (T5 / mT5 vocabularies: pad = eos = 1) | SigLIP 2 (pad 0)
_SPM_NAMES = ("spiece.model", "sentencepiece.model", "tokenizer.model")
_HF_NAMES = ("tokenizer.json", "tokenizer_config.json")


def whitespace_clean(text: str) -> str:
    """open_clip's 'whitespace' cleaning: ftfy repair, HTML unescape, whitespace collapse (case kept)."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return " ".join(text.split())


def canonicalize_text(text: str) -> str:
    """big_vision's (and open_clip's SigLIP) canonical form: ``_`` as space, ASCII punctuation removed,
    lowercase, whitespace collapsed; applied after the whitespace cleaning."""
    import string

    text = whitespace_clean(text).replace("_", " ")
    text = text.translate(str.maketrans("", "", string.punctuation)).lower()
    return " ".join(text.split())


_CLEAN_FNS = {"lower": clean_text, "whitespace": whitespace_clean, "canonicalize": canonicalize_text}


@dataclass(frozen=True)
class TokenizerSpec:
    """Which tokenizer a model uses: a row of data in the registry and in a saved ``config.json``.

    ``kind``: ``clip`` (the bundled BPE, or a merges file in ``source``), ``hf`` (``AutoTokenizer`` from a folder
    holding ``tokenizer.json`` / ``tokenizer_config.json``, or a Hub id), ``sentencepiece`` (a ``.model`` file or
    a folder holding one, read as SigLIP's T5 / Gemma tokenizer). ``clean``: open_clip's text cleaning.
    """

    kind: str = "clip"
    source: str | None = None
    clean: str = "lower"
    context_length: int | None = None
    strip_sep_token: bool = False
    variant: str = "t5"  # sentencepiece only

    def __post_init__(self):
        if self.kind not in TOKENIZER_KINDS:
            raise ValueError(f"TokenizerSpec.kind must be one of {TOKENIZER_KINDS}, got {self.kind!r}")
        if self.clean not in CLEANS:
            raise ValueError(f"TokenizerSpec.clean must be one of {CLEANS}, got {self.clean!r}")
        if self.variant not in SENTENCEPIECE_VARIANTS:
            raise ValueError(f"TokenizerSpec.variant must be one of {SENTENCEPIECE_VARIANTS}, got {self.variant!r}")
        if self.kind != "clip" and not self.source:
            raise ValueError(f"a {self.kind} tokenizer needs a source (a folder, file or Hub id)")
        if self.context_length is not None:
            _check_context_length(self.context_length)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerSpec:
        return cls(**d)


def _transformers():
    try:
        import transformers
    except ImportError as e:
        raise ImportError("SentencePiece / Hugging Face tokenizers need transformers (and sentencepiece): "
                          "pip install 'openeva[hf]'") from e
    return transformers


class HFTokenizer:
    """A transformers tokenizer with open_clip's conventions: cleaned text, rows padded to ``context_length``
    with the tokenizer's pad id, too-long texts truncated (special tokens kept)."""

    def __init__(self, tokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH, clean: str = "whitespace",
                 strip_sep_token: bool = False, source: str | None = None):
        if clean not in CLEANS:
            raise ValueError(f"clean must be one of {CLEANS}, got {clean!r}")
        self.tokenizer = tokenizer
        self.context_length = _check_context_length(context_length)
        self.clean = clean
        self._clean_fn = _CLEAN_FNS[clean]
        self.strip_sep_token = strip_sep_token
        self.source = source

    @classmethod
    def from_pretrained(cls, source: str, **kwargs) -> HFTokenizer:
        """From a folder with ``tokenizer.json`` / ``tokenizer_config.json`` (or a Hub id, through its cache)."""
        transformers = _transformers()
        try:
            tok = transformers.AutoTokenizer.from_pretrained(str(source))
        except (OSError, ValueError) as e:
            raise FileNotFoundError(f"cannot read a tokenizer from {source!r}: {e}") from e
        return cls(tok, source=str(source), **kwargs)

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id or 0)

    def encode(self, text: str) -> list[int]:
        """Ids of the cleaned ``text`` without special tokens and without truncation."""
        return list(self.tokenizer(self._clean_fn(_check_text(text, "text")), add_special_tokens=False).input_ids)

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """``(N, context_length)`` long tensor of padded ids."""
        length = self.context_length if context_length is None else _check_context_length(context_length)
        texts = _text_list(texts)
        cleaned = [self._clean_fn(_check_text(t, f"texts[{i}]")) for i, t in enumerate(texts)]
        ids = self.tokenizer(cleaned, return_tensors="pt", max_length=length, padding="max_length",
                             truncation=True).input_ids  # (N, L)
        if self.strip_sep_token and self.tokenizer.sep_token_id is not None:
            ids = torch.where(ids == self.tokenizer.sep_token_id, torch.zeros_like(ids), ids)
        return ids.long()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, vocab_size={self.vocab_size}, "
                f"context_length={self.context_length}, clean={self.clean!r})")


class SentencePieceTokenizer:
    """SigLIP's tokenizer from a bare SentencePiece ``.model``, as open_clip's ``SigLipTokenizer`` defines it:
    canonicalised text, the SentencePiece ids, one end token (id 1), rows padded to ``context_length`` with
    the pad id (1 for T5 / mT5 vocabularies, 0 for Gemma's, SigLIP 2) and truncated keeping the end token.

    Read with the ``sentencepiece`` library itself (the reference implementation of the format), so no
    transformers conversion is involved; a checkpoint folder with a ``tokenizer.json`` uses :class:`HFTokenizer`.
    """

    eot_token_id = 1

    def __init__(self, model_file: str | Path, context_length: int = 64, variant: str = "t5",
                 clean: str = "canonicalize"):
        if variant not in SENTENCEPIECE_VARIANTS:
            raise ValueError(f"variant must be one of {SENTENCEPIECE_VARIANTS}, got {variant!r}")
        if clean not in CLEANS:
            raise ValueError(f"clean must be one of {CLEANS}, got {clean!r}")
        path = Path(model_file)
        if path.is_dir():
            found = [path / n for n in _SPM_NAMES if (path / n).is_file()]
            if not found:
                raise FileNotFoundError(f"no SentencePiece model ({', '.join(_SPM_NAMES)}) in {path}")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        try:
            import sentencepiece
        except ImportError as e:
            raise ImportError("SentencePiece tokenizers need sentencepiece: pip install 'openeva[hf]'") from e
        try:
            self._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a SentencePiece model: {e}") from e
        self.source, self.variant, self.clean = str(path), variant, clean
        self._clean_fn = _CLEAN_FNS[clean]
        self.context_length = _check_context_length(context_length)
        self.pad_token_id = 0 if variant == "gemma" else 1

    @property
    def vocab_size(self) -> int:
        return int(self._sp.get_piece_size())

    def encode(self, text: str) -> list[int]:
        """Ids of the cleaned ``text``, no end token, no truncation."""
        return list(self._sp.encode(self._clean_fn(_check_text(text, "text"))))

    def decode(self, ids) -> str:
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        ids = [int(i) for i in ids]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        return self._sp.decode([i for i in ids if i != self.pad_token_id])

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        length = self.context_length if context_length is None else _check_context_length(context_length)
        texts = _text_list(texts)
        out = torch.full((len(texts), length), self.pad_token_id, dtype=torch.long)  # (N, L)
        for row, text in enumerate(texts):
            ids = self.encode(_check_text(text, f"texts[{row}]"))[: length - 1] + [self.eot_token_id]
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source={self.source!r}, variant={self.variant!r}, "
                f"vocab_size={self.vocab_size}, context_length={self.context_length})")


def sentencepiece_tokenizer(model_file: str | Path, context_length: int = 64, variant: str = "t5",
                            clean: str = "canonicalize") -> SentencePieceTokenizer:
    """SigLIP's tokenizer from a SentencePiece ``.model`` or a folder holding one (``spiece.model``)."""
    return SentencePieceTokenizer(model_file, context_length, variant, clean)


def tokenizer_for_folder(folder: str | Path) -> TokenizerSpec | None:
    """The tokenizer a checkpoint folder carries: ``tokenizer.json`` / ``tokenizer_config.json`` (transformers)
    before a bare SentencePiece model; the cleaning and context length from an ``open_clip_config.json`` beside
    them (``text_cfg.tokenizer_kwargs.clean``), else open_clip's defaults. None when the folder has none."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    clean, context_length = None, None
    oc = folder / "open_clip_config.json"
    if oc.is_file():
        import json

        text_cfg = json.loads(oc.read_text()).get("model_cfg", {}).get("text_cfg", {})
        clean = text_cfg.get("tokenizer_kwargs", {}).get("clean")
        context_length = text_cfg.get("context_length")
    if any((folder / n).is_file() for n in _HF_NAMES):
        return TokenizerSpec("hf", str(folder), clean or "whitespace", context_length)
    if any((folder / n).is_file() for n in _SPM_NAMES):
        return TokenizerSpec("sentencepiece", str(folder), clean or "canonicalize", context_length)
    return None


def build_tokenizer(spec: TokenizerSpec | None = None, context_length: int | None = None):
    """The tokenizer a :class:`TokenizerSpec` names, rows of ``context_length`` (else the spec's, else 77 / 64)."""
    spec = spec or TokenizerSpec()
    length = context_length or spec.context_length
    if spec.kind == "clip":
        return ClipTokenizer(spec.source, context_length=length or DEFAULT_CONTEXT_LENGTH)
    if spec.kind == "sentencepiece":
        return sentencepiece_tokenizer(spec.source, context_length=length or 64, variant=spec.variant,
                                       clean=spec.clean)
    return HFTokenizer.from_pretrained(spec.source, context_length=length or DEFAULT_CONTEXT_LENGTH,
                                       clean=spec.clean, strip_sep_token=spec.strip_sep_token)
