"""Request limits of the HTTP service, each answered with a clear JSON 4xx (or 503 when saturated).

Body size and concurrency are enforced by an ASGI middleware before any handler runs (the body is counted
as it streams, so a missing or lying Content-Length does not get around it); image format, pixel count
(decompression bombs: checked from the header, before decoding), and the number and length of texts are
checked by :func:`decode_image` / :func:`check_texts` in the handlers.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image

from openeva.data.collection import DECODE_ERRORS
from openeva.data.images import ImageShapeError, check_image_shape
from openeva.serve.errors import ApiError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
# Whitespace as both Python's str.isspace() and ECMAScript's \s see it: a text made only of these is blank.
# The OpenAPI schema's non-blank pattern (serve/openapi.py) is built from this one class, so the schema and
# check_texts agree character for character.
BLANK_CHARS = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007"
               "\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000\ufeff")


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000
    max_images: int = 16
    max_texts: int = 64
    max_text_chars: int = 1000
    max_concurrent: int = 64
    timeout_s: float = 30.0
    max_k: int = 1000

    def __post_init__(self):
        for name, value in self.__dict__.items():
            if value <= 0:
                raise ValueError(f"limit {name} must be > 0, got {value}")


def decode_image(data: bytes, limits: Limits, name: str = "image") -> Image.Image:
    """Bytes -> RGB image, refusing unknown formats, too many pixels and corrupt data with an ApiError."""
    if not data:
        raise ApiError(400, "empty_image", f"{name} is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            fmt, (w, h) = probe.format, probe.size
    except Image.DecompressionBombError as err:  # PIL's own bomb guard: too many pixels
        raise ApiError(413, "too_many_pixels", f"{name}: {err}") from None
    except DECODE_ERRORS:
        raise ApiError(415, "unsupported_image", f"{name} is not an image in a supported format "
                       f"({', '.join(ALLOWED_FORMATS)})") from None
    if fmt not in ALLOWED_FORMATS:
        raise ApiError(415, "unsupported_image", f"{name} is {fmt}; supported: {', '.join(ALLOWED_FORMATS)}")
    if w * h > limits.max_pixels:
        raise ApiError(413, "too_many_pixels", f"{name} has {w}x{h} = {w * h} pixels; the limit is "
                       f"{limits.max_pixels}")
    try:
        check_image_shape(w, h)  # the data layer's rule: elongated strips would explode in preprocessing
    except ImageShapeError as err:
        raise ApiError(413, "bad_image_shape", f"{name}: {err}") from None
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except MemoryError:
        raise ApiError(413, "image_too_large", f"{name} needs more memory to decode than this server has") from None
    except DECODE_ERRORS as err:
        raise ApiError(400, "corrupt_image", f"{name} cannot be decoded: {err}") from None


def check_texts(texts: list[str], limits: Limits) -> list[str]:
    """Count, length, emptiness and encodability (a lone surrogate from JSON "\\ud800" is no text) of a request."""
    if not texts:
        raise ApiError(422, "no_texts", "give at least one text")
    if len(texts) > limits.max_texts:
        raise ApiError(413, "too_many_texts", f"{len(texts)} texts; the limit is {limits.max_texts} per request")
    for i, t in enumerate(texts):
        if len(t) > limits.max_text_chars:
            raise ApiError(413, "text_too_long", f"text {i} has {len(t)} characters; the limit is "
                           f"{limits.max_text_chars}")
        if not t.strip(BLANK_CHARS):
            raise ApiError(422, "empty_text", f"text {i} is empty")
        try:
            t.encode("utf-8")
        except UnicodeEncodeError:
            raise ApiError(422, "bad_text", f"text {i} is not valid Unicode (a lone surrogate code point)") from None
    return texts


def check_image_count(n: int, limits: Limits) -> None:
    if n == 0:
        raise ApiError(422, "no_images", "give at least one image")
    if n > limits.max_images:
        raise ApiError(413, "too_many_images", f"{n} images; the limit is {limits.max_images} per request")


PROBE_PATHS = ("/healthz", "/readyz", "/metrics")  # answered even when saturated: health checks must not fail


class LimitsMiddleware:
    """ASGI middleware: a cap on requests in flight (503 + Retry-After) and on the body size (413).

    The body is read here, counted as it streams (a missing or lying Content-Length does not get around the
    cap), and replayed to the app, so handlers never see more than the limit. Refusals are the same
    :meth:`ApiError.response` the routes' errors get. ``state`` counts the requests in flight (``in_flight``).
    """

    def __init__(self, app, limits: Limits, state):
        self.app, self.limits, self.state = app, limits, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limits.max_body_bytes:
            return await self._too_large().response()(scope, receive, send)
        if self.state.in_flight >= self.limits.max_concurrent and scope.get("path") not in PROBE_PATHS:
            saturated = ApiError(503, "saturated", "too many requests in flight; retry shortly")
            return await saturated.response()(scope, receive, send)
        self.state.in_flight += 1
        try:
            chunks, size, more = [], 0, True
            while more:
                message = await receive()
                if message["type"] != "http.request":  # client went away
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > self.limits.max_body_bytes:
                    return await self._too_large().response()(scope, receive, send)
                chunks.append(chunk)
                more = message.get("more_body", False)
            body = b"".join(chunks)
            replayed = False

            async def replay():
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
        finally:
            self.state.in_flight -= 1

    def _too_large(self) -> ApiError:
        return ApiError(413, "body_too_large", f"request body larger than the limit of {self.limits.max_body_bytes} "
                        "bytes")
