"""The OpenAPI schema states what the service really does: schemathesis with ``--checks all`` (status codes,
content types, response schemas, schema-valid data accepted, schema-violating data rejected, auth, methods)
against a real uvicorn on 127.0.0.1 finds nothing; and the schema carries this server's own limits."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("schemathesis")
from running_server import RunningServer

from openeva.serve.app import create_app
from openeva.serve.encoder import TorchClipEncoder
from openeva.serve.limits import Limits

CONFIG = Path(__file__).with_name("schemathesis.toml")


@pytest.fixture(scope="module")
def server(clip_dir, shapes_dir, build_index, tmp_path_factory):
    encoder = TorchClipEncoder(clip_dir)
    path = build_index(shapes_dir, tmp_path_factory.mktemp("contract"), encoder)
    s = RunningServer(create_app(encoder=encoder, index_path=path, api_key="k",
                                 limits=Limits(max_body_bytes=100_000, max_pixels=250_000, max_texts=8,
                                               max_images=4, max_text_chars=200, max_k=50)))
    yield s
    s.stop()


def test_the_schema_states_limits_errors_and_content_types(server):
    schema = server.client.get("/openapi.json").json()
    paths, components = schema["paths"], schema["components"]["schemas"]
    texts = components["TextsIn"]["properties"]["texts"]
    assert (texts["minItems"], texts["maxItems"], texts["items"]["maxLength"]) == (1, 8, 200)
    assert components["SearchIn"]["properties"]["k"]["maximum"] == 50
    assert components["EmbeddingsRequest"]["properties"]["model"]["enum"][-1] == "EVA02-test-seed0"
    assert list(paths["/metrics"]["get"]["responses"]["200"]["content"]) == ["text/plain"]
    assert list(paths["/v1/thumb/{row}"]["get"]["responses"]["200"]["content"]) == ["image/jpeg"]
    for code in ("400", "401", "403", "409", "413", "415", "422", "503"):
        answer = paths["/v1/index/add"]["post"]["responses"][code]
        assert answer["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert paths["/v1/index/add"]["post"]["security"] == [{"APIKeyHeader": []}]
    assert "Retry-After" in paths["/v1/search"]["post"]["responses"]["503"]["headers"]
    assert "HTTPValidationError" not in components  # FastAPI's 422 model is not what the service sends


def test_schemathesis_all_checks_find_no_failure(server, tmp_path):
    """Bounded: 20 examples per operation, one worker, a fixed seed; the whole run takes seconds."""
    exe = Path(sys.executable).with_name("schemathesis")
    command = [str(exe) if exe.exists() else shutil.which("schemathesis"), "--config-file", str(CONFIG), "run",
               f"{server.url}/openapi.json", "--checks", "all", "--max-examples", "20", "--workers", "1",
               "--seed", "7", "--header", "X-API-Key: k", "--generation-database", "none", "--no-color",
               "--request-timeout", "60"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-6000:]
    tested = re.search(r"Tested:\s+(\d+)", out)
    generated = re.search(r"(\d+) generated, (\d+) passed", out)
    assert tested and int(tested.group(1)) >= 13, out[-3000:]  # every operation, the new ones included
    assert generated and generated.group(1) == generated.group(2) and int(generated.group(1)) > 200, out[-3000:]
