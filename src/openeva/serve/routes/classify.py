"""``POST /v1/classify`` (multipart ``files`` + ``labels`` "a,b,c" + ``k``): top-k labels per image, zero-shot."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, File, Form, UploadFile

from openeva.serve.classify import DEFAULT_TEMPLATES, label_probs, parse_labels, text_classifier, top_labels
from openeva.serve.errors import ApiError
from openeva.serve.limits import Limits, check_texts
from openeva.serve.state import StateDep

router = APIRouter()


@router.post("/v1/classify")
async def classify(state: StateDep, files: list[UploadFile] = File(...), labels: str = Form(...),
                   k: int = Form(5)):
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
    """``"a,b,c"`` -> the label names, each a text within the limits."""
    try:
        names = parse_labels(labels)
    except ValueError as err:
        raise ApiError(422, "bad_labels", str(err)) from None
    if len(names) > limits.max_texts:
        raise ApiError(413, "too_many_labels", f"{len(names)} labels; the limit is {limits.max_texts}")
    check_texts(names, limits)
    return names
