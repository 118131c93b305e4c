"""The one error shape of the HTTP service: ``{"error": {"code", "message"}}`` with its status code.

Routes and checks raise :class:`ApiError`; :func:`api_error` and :func:`invalid_request` (registered by
``create_app``) turn it, and FastAPI's own request validation errors, into that JSON response, and
:class:`~openeva.serve.limits.LimitsMiddleware`, which answers before any route runs, sends the same response.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error the client caused (or a saturated server): status code, machine-readable code, message."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message

    def response(self) -> JSONResponse:
        """The error as a JSON response; a 503 (saturated, timed out, not ready) asks the client to retry in 1 s."""
        headers = {"Retry-After": "1"} if self.status == 503 else None
        return JSONResponse({"error": {"code": self.code, "message": self.message}}, status_code=self.status,
                            headers=headers)


async def api_error(request: Request, err: ApiError) -> JSONResponse:
    """Exception handler for :class:`ApiError`."""
    return err.response()


async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """Exception handler for request validation: a 422 naming where each problem is and what it is.

    FastAPI's own handler echoes the input, and JSON cannot carry the inf / NaN that 1e400 / NaN parse to
    (a 500); only the location and message of each problem are sent back."""
    problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in err.errors()]
    return ApiError(422, "invalid_request", "; ".join(problems)[:2000] or "invalid request").response()
