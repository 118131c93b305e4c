"""The zero-shot classifier, written once: fill the templates, encode the prompts in chunks, average per class.

CLIP's prompt ensembling (Radford et al. 2021; open_clip's ``build_zero_shot_classifier``): each class weight is
the mean of its L2-normalised prompt embeddings, normalised again (the arithmetic is
:func:`openeva.metrics.zeroshot_head`). The text encoder is any ``texts -> (N, E)`` function, so ``openeva eval``,
training validation, the dense segmenter and the serving backends (ONNX included) build the same classifier.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from tqdm.auto import tqdm

from openeva.data.classnames import fill_template
from openeva.metrics import zeroshot_head
from openeva.runtime import autocast

TEXT_BATCH_SIZE = 256

TextEncoder = Callable[[list[str]], torch.Tensor]  # N texts -> (N, E) embeddings


def text_encoder(model, tokenizer: Callable[[list[str]], torch.Tensor], *, device: str | torch.device = "cpu",
                 precision: str = "fp32") -> TextEncoder:
    """A CLIP model's text tower as ``texts -> (N, E)`` float32 CPU embeddings (not normalised)."""
    if not hasattr(model, "encode_text"):
        raise TypeError(f"{type(model).__name__} has no encode_text; this task needs a CLIP model")

    @torch.no_grad()
    def encode(texts: list[str]) -> torch.Tensor:
        tokens = tokenizer(list(texts)).to(device)  # (N, L)
        with autocast(precision, device):
            return model.encode_text(tokens, normalize=False).float().cpu()  # (N, E)

    return encode


def encode_in_chunks(encode: TextEncoder, texts: Sequence[str], *, batch_size: int = TEXT_BATCH_SIZE,
                     progress: bool = False, desc: str = "encoding texts") -> torch.Tensor:
    """(N,) texts -> (N, E) float32 CPU embeddings, ``batch_size`` texts per call of ``encode``."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    starts = range(0, len(texts), batch_size)
    out = [torch.as_tensor(encode(list(texts[s:s + batch_size]))).float().cpu()  # (b, E)
           for s in tqdm(starts, desc=desc, disable=not progress, unit="batch")]
    if not out:
        raise ValueError("no texts to encode")
    return torch.cat(out)


@torch.no_grad()
def encode_texts(model, tokenizer, texts: Sequence[str], *, batch_size: int = TEXT_BATCH_SIZE,
                 device: str | torch.device = "cpu", precision: str = "fp32", progress: bool = False,
                 desc: str = "encoding texts") -> torch.Tensor:
    """(N,) texts -> (N, E) float32 CPU embeddings of a CLIP model (not normalised)."""
    encode = text_encoder(model, tokenizer, device=device, precision=precision)
    return encode_in_chunks(encode, texts, batch_size=batch_size, progress=progress, desc=desc)


def prompt_classifier(encode: TextEncoder, prompts: Sequence[Sequence[str]], *, batch_size: int = TEXT_BATCH_SIZE,
                      progress: bool = False) -> torch.Tensor:
    """Per class a list of prompts (the same number for every class) -> (E, C) unit class vectors."""
    counts = {len(p) for p in prompts}
    if len(counts) != 1 or 0 in counts:
        raise ValueError(f"every class needs the same number (>= 1) of prompts, got {sorted(counts)}")
    flat = [p for group in prompts for p in group]  # class-major, (C*T,)
    emb = encode_in_chunks(encode, flat, batch_size=batch_size, progress=progress, desc="class prompts")  # (C*T, E)
    return zeroshot_head(emb, len(prompts))  # (E, C)


def zeroshot_classifier(encode: TextEncoder, classnames: Sequence[str], templates: Sequence[str], *,
                        batch_size: int = TEXT_BATCH_SIZE, progress: bool = False) -> torch.Tensor:
    """Zero-shot weights (E, C): every template filled with every class name, prompt-ensembled per class."""
    if not templates:
        raise ValueError("templates must contain at least one prompt template")
    prompts = [[fill_template(t, c) for t in templates] for c in classnames]
    return prompt_classifier(encode, prompts, batch_size=batch_size, progress=progress)


def build_zeroshot_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[str], *,
                              batch_size: int = TEXT_BATCH_SIZE, device: str | torch.device = "cpu",
                              precision: str = "fp32", progress: bool = False) -> torch.Tensor:
    """Zero-shot weights ``W`` of shape (E, C) of a CLIP model and its tokenizer."""
    encode = text_encoder(model, tokenizer, device=device, precision=precision)
    return zeroshot_classifier(encode, classnames, templates, batch_size=batch_size, progress=progress)
