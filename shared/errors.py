"""One closed error tree for every service.

    JanusError                      500 api_error            (never retryable by default)
     ├── InvalidRequest             400 invalid_request_error
     │    ├── PayloadTooLarge       413 invalid_request_error
     │    └── MethodNotAllowed      405 invalid_request_error
     ├── AuthenticationFailed       401 invalid_request_error  code=invalid_api_key
     ├── PermissionDenied           403 permission_error
     ├── NotFound                   404 invalid_request_error
     │    └── ModelNotFound         404 invalid_request_error  code=model_not_found
     ├── BudgetExceeded             429 insufficient_quota     (x-should-retry: false)
     ├── RateLimited                429 rate_limit_exceeded    (Retry-After, x-should-retry: true)
     ├── UpstreamError              502 upstream_error         retryable (503 overloaded, 504, 429)
     │    └── UpstreamClientError   4xx from a provider, passed back, not retryable
     ├── UpstreamTimeout            504 timeout                retryable
     ├── ServiceUnavailable         503 service_unavailable    retryable
     └── StreamInterrupted          502 stream_interrupted     (only ever sent in-band)

Each class knows its HTTP status, OpenAI ``type``/``code``, whether a fallback may retry it (and so
what ``x-should-retry`` tells the client's SDK) and the level to log it at. It converts itself to an
HTTP body (``to_body``) and to the bus form (``to_wire``); ``from_wire`` rebuilds the right class on
the other side of NATS, so an error raised in a worker surfaces in the gateway as the same class.
"""

from __future__ import annotations

import math
from typing import ClassVar

import msgspec


class ErrorInfo(msgspec.Struct, omit_defaults=True):
    """The bus form of an error (carried in replies and in a stream's terminal frame)."""

    kind: str
    message: str
    status: int = 500
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None


class _OpenAIError(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class _OpenAIErrorBody(msgspec.Struct):
    error: _OpenAIError


_body_encoder = msgspec.json.Encoder()


class JanusError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False
    log_level: ClassVar[str] = "error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after
        if status is not None:
            self.http_status = status
        else:
            self.http_status = self.status

    def openai(self) -> _OpenAIErrorBody:
        return _OpenAIErrorBody(_OpenAIError(self.message, self.type, self.param, self.code))

    def to_body(self) -> bytes:
        return _body_encoder.encode(self.openai())

    def to_wire(self) -> ErrorInfo:
        return ErrorInfo(
            kind=type(self).__name__,
            message=self.message,
            status=self.http_status,
            param=self.param,
            code=self.code,
            retry_after=self.retry_after,
        )

    @staticmethod
    def from_wire(info: ErrorInfo) -> JanusError:
        cls = _BY_NAME.get(info.kind, JanusError)
        return cls(
            info.message, param=info.param, code=info.code, retry_after=info.retry_after, status=info.status
        )

    def headers(self) -> dict[str, str]:
        """HTTP headers this error adds to a response.

        ``x-should-retry`` always: the OpenAI SDKs otherwise retry every 408/409/429/5xx on their own
        judgement, twice by default, so a refusal that cannot change (our provider key rejected)
        would be sent three times and a retryable one might not be retried at all."""
        out: dict[str, str] = {"x-should-retry": "true" if self.retryable else "false"}
        if self.retry_after is not None:
            # whole seconds, rounded up: a client that waits exactly this long is not early
            out["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.http_status}, {self.message!r})"


class InvalidRequest(JanusError):
    status = 400
    type = "invalid_request_error"
    log_level = "info"


class PayloadTooLarge(InvalidRequest):
    status = 413
    default_code = "payload_too_large"


class MethodNotAllowed(InvalidRequest):
    status = 405
    default_code = "method_not_allowed"


class AuthenticationFailed(JanusError):
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"
    log_level = "info"


class PermissionDenied(JanusError):
    status = 403
    type = "permission_error"
    log_level = "info"


class NotFound(JanusError):
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"
    log_level = "info"


class ModelNotFound(NotFound):
    default_code = "model_not_found"


class BudgetExceeded(JanusError):
    status = 429
    type = "insufficient_quota"
    default_code = "budget_exceeded"
    log_level = "info"

    # The OpenAI SDKs retry every 429 unless told otherwise; a spent budget will not come back
    # within a retry's wait, so the inherited ``x-should-retry: false`` says so.


class RateLimited(JanusError):
    status = 429
    type = "requests"
    default_code = "rate_limit_exceeded"
    log_level = "info"

    # unlike a spent budget, a request-rate window reopens within Retry-After: worth the retry
    retryable = True


class UpstreamError(JanusError):
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"
    retryable = True
    log_level = "warning"


class UpstreamClientError(UpstreamError):
    """The provider refused the request itself (400/401/403/404/422): the same request would fail
    on every deployment, so it is passed back to the client and never retried."""

    status = 400
    type = "invalid_request_error"
    default_code = "upstream_rejected"
    retryable = False
    log_level = "info"


class UpstreamTimeout(JanusError):
    status = 504
    type = "timeout"
    default_code = "upstream_timeout"
    retryable = True
    log_level = "warning"


class ServiceUnavailable(JanusError):
    status = 503
    type = "service_unavailable"
    default_code = "service_unavailable"
    retryable = True
    log_level = "warning"


class StreamInterrupted(JanusError):
    status = 502
    type = "upstream_error"
    default_code = "stream_interrupted"
    log_level = "warning"


_BY_NAME: dict[str, type[JanusError]] = {}


def _register(cls: type[JanusError]) -> None:
    _BY_NAME[cls.__name__] = cls
    for sub in cls.__subclasses__():
        _register(sub)


_register(JanusError)


def upstream_error_for_status(status: int, message: str, retry_after: float | None = None) -> JanusError:
    """Classify a provider's HTTP status once, for every adapter."""
    if status in (400, 401, 403, 404, 422):
        # The provider's own credentials failing is our configuration problem, not the caller's.
        if status in (401, 403):
            return UpstreamClientError(
                f"upstream refused the credentials ({status}): {message}", status=502, code="upstream_auth"
            )
        return UpstreamClientError(message, status=400 if status == 422 else status)
    if status == 408:
        return UpstreamTimeout(message, retry_after=retry_after)
    if status == 429:
        return UpstreamError(message, status=429, code="upstream_rate_limited", retry_after=retry_after)
    if status in (503, 529):
        # 529 is Anthropic's "overloaded"; OpenAI clients know only 500/502/503/504, and an overloaded
        # provider is what 503 means: try again later (after every fallback was tried)
        return UpstreamError(message, status=503, code="upstream_overloaded", retry_after=retry_after)
    # the other statuses OpenAI clients know pass through; any other (a CDN's 520, a 501) is a 502
    passed = status if status in (500, 502, 504) else 502
    return UpstreamError(message, status=passed, retry_after=retry_after)
