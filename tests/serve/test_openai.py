"""``POST /v1/embeddings`` through the official ``openai`` client against a real uvicorn on 127.0.0.1: the same
vectors as the model, float and base64 alike, images as data URLs, usage counts, and OpenAI-shaped errors."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
from running_server import RunningServer, png

from openeva.serve.app import create_app
from openeva.serve.encoder import TorchClipEncoder
from openeva.serve.limits import Limits

NAME = "EVA02-test-seed0"  # the checkpoint folder's name (conftest's clip_dir)


@pytest.fixture(scope="module")
def encoder(clip_dir):
    return TorchClipEncoder(clip_dir)


@pytest.fixture(scope="module")
def server(encoder):
    s = RunningServer(create_app(encoder=encoder, limits=Limits(max_images=2, max_texts=4)))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def data_url(image: bytes, fmt: str = "png") -> str:
    return f"data:image/{fmt};base64,{base64.b64encode(image).decode()}"


def test_texts_come_back_as_the_models_vectors_in_float_and_base64(client, encoder, server):
    texts = ["a red circle", "a blue star on a green field"]
    expected = encoder.encode_texts(texts)  # (2, D)
    floats = client.embeddings.create(model=NAME, input=texts, encoding_format="float")
    assert floats.object == "list" and floats.model == NAME
    assert [d.index for d in floats.data] == [0, 1] and all(d.object == "embedding" for d in floats.data)
    got = np.array([d.embedding for d in floats.data])
    assert got.shape == expected.shape and np.allclose(got, expected, atol=1e-5)
    # the client's default asks for base64 and decodes it itself: the same numbers, bit for bit
    default = client.embeddings.create(model=NAME, input=texts)
    assert np.array_equal(np.array([d.embedding for d in default.data], np.float32), got.astype(np.float32))
    raw = server.client.post("/v1/embeddings", json={"model": NAME, "input": texts, "encoding_format": "base64"})
    decoded = np.stack([np.frombuffer(base64.b64decode(d["embedding"]), "<f4") for d in raw.json()["data"]])
    assert np.array_equal(decoded, got.astype(np.float32))
    # usage: the tokenizer's tokens of the texts (start/end included, padding not)
    tokens = int((encoder.tokenizer(texts) != 0).sum())
    assert floats.usage.prompt_tokens == floats.usage.total_tokens == tokens > len(texts)
    one = client.embeddings.create(model=NAME, input="a red circle", encoding_format="float")
    assert len(one.data) == 1 and np.allclose(one.data[0].embedding, expected[0], atol=1e-5)


def test_images_as_data_urls_mixed_with_texts_keep_the_input_order(client, encoder):
    image = png(color=(20, 200, 40))
    direct = encoder.encode_images(encoder.preprocess(Image.open(io.BytesIO(image)).convert("RGB"))[None])[0]
    out = client.embeddings.create(model=NAME, input=["a green square", data_url(image), "a cat"],
                                   encoding_format="float")
    got = np.array([d.embedding for d in out.data])  # (3, D)
    assert np.allclose(got[1], direct, atol=1e-5)
    assert np.allclose(got[[0, 2]], encoder.encode_texts(["a green square", "a cat"]), atol=1e-5)
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(image)).save(jpeg, format="JPEG", quality=95)
    assert len(client.embeddings.create(model=NAME, input=data_url(jpeg.getvalue(), "jpeg")).data) == 1
    assert out.usage.prompt_tokens == int((encoder.tokenizer(["a green square", "a cat"]) != 0).sum()) + 1


def test_models_lists_the_names_embeddings_accepts(client, clip_dir):
    ids = [m.id for m in client.models.list().data]
    assert ids == [clip_dir, NAME]
    assert client.embeddings.create(model=clip_dir, input="x").model == clip_dir


def error_of(call):
    with pytest.raises(openai.APIStatusError) as info:
        call()
    err = info.value
    return err.status_code, err.body  # body: the "error" object, as the client parses it


def test_errors_come_in_openais_shape_and_say_what_is_accepted(client, server):
    status, body = error_of(lambda: client.embeddings.create(model="text-embedding-3-small", input="a"))
    assert status == 404 and body["code"] == "model_not_found" and body["param"] == "model"
    assert NAME in body["message"] and body["type"] == "not_found_error"
    status, body = error_of(lambda: client.embeddings.create(model=NAME, input="a", dimensions=16))
    assert status == 400 and body["code"] == "unsupported_dimensions" and body["param"] == "dimensions"
    assert "32" in body["message"]  # the model's own dimension, which it would accept
    assert client.embeddings.create(model=NAME, input="a", dimensions=32).data
    status, body = error_of(lambda: client.embeddings.create(model=NAME, input=[[1, 2, 3]]))
    assert status == 422 and body["param"] == "input" and "token arrays" in body["message"]
    status, body = error_of(lambda: client.embeddings.create(model=NAME, input=["a", "   "]))
    assert status == 422 and body["code"] == "empty_text" and body["param"] == "input"
    status, body = error_of(lambda: client.embeddings.create(model=NAME, input=["a"] * 5))
    assert status == 413 and body["code"] == "too_many_texts"
    status, body = error_of(lambda: client.embeddings.create(model=NAME, input=[data_url(png())] * 3))
    assert status == 413 and body["code"] == "too_many_images"
    status, body = error_of(lambda: client.embeddings.create(model=NAME, input="data:image/png;base64,@@"))
    assert status == 400 and body["code"] == "bad_base64"
    status, body = error_of(lambda: client.embeddings.create(model=NAME, input=data_url(b"not an image")))
    assert status == 415 and body["code"] == "unsupported_image"
    status, body = error_of(lambda: client.embeddings.create(model=NAME, input=[]))
    assert status == 422 and body["param"] == "input"
    r = server.client.post("/v1/embeddings", json={"model": NAME, "input": "a", "encoding_format": "int8"})
    assert r.status_code == 422 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["param"] == "encoding_format"
