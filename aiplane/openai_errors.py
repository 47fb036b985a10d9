"""OpenAI's error shape, with the status codes clients and SDKs act on.

``{"error": {"message", "type", "param", "code"}}``: the ``openai`` client maps 400 to
BadRequestError, 401 AuthenticationError, 404 NotFoundError, 413/422 to APIStatusError,
429 RateLimitError (honouring Retry-After), 5xx InternalServerError.
"""

from __future__ import annotations

from aiohttp import web

# OpenAI itself answers 401 and 404 with type invalid_request_error (and a code such
# as invalid_api_key or model_not_found); clients dispatch on the status.
TYPES = {429: "rate_limit_error"}


def error_body(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, object]:
    return {
        "error": {
            "message": message,
            "type": TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int,
    message: str,
    *,
    param: str | None = None,
    code: str | None = None,
    retry_after: float | None = None,
) -> web.Response:
    headers = {"Retry-After": str(max(1, round(retry_after)))} if retry_after is not None else None
    return web.json_response(
        error_body(status, message, param=param, code=code), status=status, headers=headers
    )


class OpenAIError(Exception):
    """Raised inside a handler to answer with an OpenAI error; never reaches the client raw.

    Every aiplane server that speaks the OpenAI API (the gateway, the embeddings engine)
    raises it, which is why it lives outside ``gateway/``.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.retry_after = retry_after

    def response(self) -> web.Response:
        return error_response(
            self.status, self.message, param=self.param, code=self.code, retry_after=self.retry_after
        )
