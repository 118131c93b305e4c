"""The one error shape of the HTTP service, OpenAI's: ``{"error": {"message", "type", "param", "code"}}``.

Every answer that is not a success has it, with its status code: errors a route raises (:class:`ApiError`),
FastAPI's request validation (:func:`invalid_request`), Starlette's own 404 / 405 (:func:`http_error`), and the
refusals of :class:`~openeva.serve.limits.LimitsMiddleware`, which answers before any route runs. It is
OpenAI's shape (``message``, ``type``, ``param``, ``code``) so that OpenAI clients talking to
``/v1/embeddings`` read our errors as theirs, and one shape for every route so that one schema
(:class:`ErrorResponse`) documents them all. ``code`` is the machine-readable reason this service has always
sent; ``type`` is OpenAI's class of error, derived from the status.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

# OpenAI's error ``type`` for each status this service answers with
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 409: "conflict_error",
               413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
               503: "server_error"}


class ErrorDetail(BaseModel):
    message: str = Field(description="what went wrong and what to do about it")
    type: str = Field(description="the class of error (OpenAI's names: invalid_request_error, ...)")
    param: str | None = Field(description="the request field at fault, if one is")
    code: str = Field(description="machine-readable reason (too_many_texts, bad_k, model_not_found, ...)")


class ErrorResponse(BaseModel):
    """The body of every error answer."""

    error: ErrorDetail


class ApiError(Exception):
    """An error the client caused (or a saturated server): status code, machine-readable code, message, and
    the request field at fault (``param``) when there is one."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self, headers: dict | None = None) -> JSONResponse:
        """The error as a JSON response; a 503 (saturated, timed out, not ready) asks the client to retry in 1 s."""
        headers = dict(headers or {})
        if self.status == 503:
            headers["Retry-After"] = "1"
        return JSONResponse(self.body(), status_code=self.status, headers=headers or None)


async def api_error(request: Request, err: ApiError) -> JSONResponse:
    """Exception handler for :class:`ApiError`."""
    return err.response()


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """Exception handler for request validation: a 422 naming where each problem is and what it is.

    FastAPI's own handler echoes the input, and JSON cannot carry the inf / NaN that 1e400 / NaN parse to
    (a 500); only the location and message of each problem are sent back. ``param`` is the first field at fault
    (``input``, ``k``, ...), without FastAPI's ``body`` / ``query`` prefix."""
    errors = err.errors()
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in errors]
    loc = [str(p) for p in (errors[0].get("loc", ()) if errors else ())]
    param = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path", "header", "form") else loc) or None
    return ApiError(422, "invalid_request", "; ".join(problems)[:2000] or "invalid request", param).response()


async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
    """Exception handler for Starlette's own answers (unknown path: 404, method not allowed: 405 with
    ``Allow``): the same error shape as every other error."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code, "http_error")
    return ApiError(err.status_code, code, str(err.detail)).response(headers=getattr(err, "headers", None))
