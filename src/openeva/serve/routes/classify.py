"""``POST /v1/classify`` (multipart ``files`` + ``labels`` "a,b,c" + ``k``): top-k labels per image, zero-shot."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, File, Form, UploadFile

from openeva.serve.classify import DEFAULT_TEMPLATES, label_probs, text_classifier, top_labels
from openeva.serve.errors import ApiError
from openeva.serve.limits import BLANK_CHARS, Limits, check_texts
from openeva.serve.openapi import FormInt, errors, limit
from openeva.serve.routes.embed import FILES_SCHEMA
from openeva.serve.state import StateDep

router = APIRouter()
# at least one character that is neither a comma nor blank: at least one label
LABELS_PATTERN = "[^," + "".join(f"\\u{ord(c):04x}" for c in BLANK_CHARS) + "]"


@router.post("/v1/classify", responses=errors(400, 413, 415, 422, 503))
async def classify(state: StateDep, files: list[UploadFile] = File(..., json_schema_extra=FILES_SCHEMA),
                   labels: str = Form(..., description="comma-separated label names (repeats count once)",
                                      json_schema_extra={"pattern": LABELS_PATTERN,
                                                         **limit(maxLength="max_text_chars")}),
                   k: FormInt = Form(5, description="labels per image", json_schema_extra={"minimum": 1,
                                                                                      **limit(maximum="max_k")})):
    names = check_labels(labels, state.limits)
    k = state.check_k(k)
    blobs = await state.read_uploads(files)

    async def work():
        vectors = await state.image_vectors(blobs)  # (N, D)
        classifier = await asyncio.get_running_loop().run_in_executor(  # (D, C), in the model thread
            state.model_thread, text_classifier, state.encoder, names, list(DEFAULT_TEMPLATES))
        probs = label_probs(vectors, classifier)  # (N, C)
        return [{"file": name, "label": top[0][0], "score": top[0][1],
                 "top_k": [{"label": lab, "score": s} for lab, s in top]}
                for (name, _), top in zip(blobs, top_labels(probs, names, k))]

    return {"labels": names, "predictions": await state.bounded(work())}


def check_labels(labels: str, limits: Limits) -> list[str]:
    """``"a,b,c"`` -> the label names, each a text within the limits; a label given twice counts once, blank
    entries are dropped (blank as the schema's pattern sees it)."""
    names = [n for n in dict.fromkeys(x.strip(BLANK_CHARS) for x in labels.split(",")) if n]
    if not names:
        raise ApiError(422, "bad_labels", 'no labels given (e.g. labels="cat,dog,car")', "labels")
    if len(names) > limits.max_texts:
        raise ApiError(413, "too_many_labels", f"{len(names)} labels; the limit is {limits.max_texts}", "labels")
    check_texts(names, limits)
    return names
