"""CLIP byte-level BPE tokenizer (Radford et al., 2021, "Learning Transferable Visual Models ...").

EVA-CLIP text towers were trained on the OpenAI CLIP vocabulary, so the ids produced here must be exactly the
ids open_clip produces: same merges file (shipped as package data), same text cleaning, same pre-tokenization
pattern, same truncation rule. Only the code is our own.

How a text becomes ids:
1. clean: ftfy repair, HTML unescape (twice, as open_clip), whitespace collapse, lowercase;
2. pre-tokenize with a regex into words, contractions, single digits and punctuation runs;
3. map each piece's UTF-8 bytes to printable unicode characters (so every byte has a vocabulary symbol);
4. apply the BPE merges in rank order; the last symbol of a piece carries the end-of-word marker ``</w>``.
"""

from __future__ import annotations

import functools
import gzip
import html
import importlib.resources
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
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, (list, tuple)):
            raise TypeError(f"tokenizer input must be a str or a list of str, got {type(texts).__name__}")
        out = torch.zeros(len(texts), length, dtype=torch.long)  # (N, L)
        for row, text in enumerate(texts):
            ids = [self.sot_token_id, *self.encode(_check_text(text, f"texts[{row}]"))][: length - 1]
            ids.append(self.eot_token_id)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size}, context_length={self.context_length})"


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
