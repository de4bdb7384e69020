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
     │         └── UpstreamAuthFailed  502 upstream_auth   the provider refused our credentials
     ├── UpstreamTimeout            504 timeout                retryable
     ├── ServiceUnavailable         503 service_unavailable    retryable
     ├── StreamInterrupted          502 stream_interrupted     (only ever sent in-band)
     └── Cancelled                  499 cancelled              the client left; nobody reads the answer

Each class knows its HTTP status, OpenAI ``type``/``code``, whether a fallback may retry it (and so
what ``x-should-retry`` tells the client's SDK), whether it says the deployment that raised it is
unwell (``blames_deployment``: the worker's health reports) and the level to log it at. It converts
itself to an HTTP body (``to_body``) and to the bus form (``to_wire``); ``from_wire`` rebuilds the
right class on the other side of NATS, so an error raised in a worker surfaces in the gateway as the
same class.

On the bus a class is named by ``kind``, a stable code that is data, not the Python class name, so
renaming or splitting a class changes nothing on the wire. Releases before it named the class in the
wire field ``kind``; ``to_wire`` still writes that name (``legacy_kind``) and ``from_wire`` still
reads it, so old and new replicas understand each other during a rolling upgrade in either
direction. The next release may stop writing it once no older reader is left.
"""

from __future__ import annotations

import math
import re
from typing import ClassVar

import msgspec


class ErrorInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    """The bus form of an error (carried in replies and in a stream's terminal frame).

    ``kind`` travels as ``error_kind``: the wire name ``kind`` holds ``legacy_kind``, the class name
    that readers of earlier releases look up (they require it, so it is written for now)."""

    kind: str = msgspec.field(default="", name="error_kind")
    legacy_kind: str = msgspec.field(default="", name="kind")
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

# wire kind -> class, and the class names earlier releases wrote -> class (filled as classes are made)
_BY_KIND: dict[str, type[JanusError]] = {}
_BY_LEGACY: dict[str, type[JanusError]] = {}


class JanusError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    default_code: ClassVar[str | None] = None
    retryable: ClassVar[bool] = False
    log_level: ClassVar[str] = "error"
    # the class's name on the bus: stable, unique, never derived from the Python name
    kind: ClassVar[str] = "internal"
    # what releases before ``kind`` existed call it (a class they lack: its nearest ancestor they have)
    legacy_kind: ClassVar[str] = "JanusError"
    # a failure of the deployment that raised it (not of the caller's request, nor a cancel): the
    # worker reports it against the deployment's health
    blames_deployment: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" not in cls.__dict__ or "legacy_kind" not in cls.__dict__:
            raise TypeError(f"{cls.__name__} must name its own wire kind and legacy kind")
        if cls.kind in _BY_KIND:
            raise TypeError(
                f"{cls.__name__} reuses the wire kind {cls.kind!r} of {_BY_KIND[cls.kind].__name__}"
            )
        _BY_KIND[cls.kind] = cls
        # a legacy name first belongs to the class that carried it; later subclasses only write it
        _BY_LEGACY.setdefault(cls.legacy_kind, cls)

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
            kind=self.kind,
            legacy_kind=self.legacy_kind,
            message=self.message,
            status=self.http_status,
            param=self.param,
            code=self.code,
            retry_after=self.retry_after,
        )

    @staticmethod
    def from_wire(info: ErrorInfo) -> JanusError:
        cls = _BY_KIND.get(info.kind) or _BY_LEGACY.get(info.legacy_kind, JanusError)
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


_BY_KIND[JanusError.kind] = JanusError
_BY_LEGACY[JanusError.legacy_kind] = JanusError


class InvalidRequest(JanusError):
    kind = "invalid_request"
    legacy_kind = "InvalidRequest"
    blames_deployment = False
    status = 400
    type = "invalid_request_error"
    log_level = "info"


class PayloadTooLarge(InvalidRequest):
    kind = "payload_too_large"
    legacy_kind = "PayloadTooLarge"
    status = 413
    default_code = "payload_too_large"


class MethodNotAllowed(InvalidRequest):
    kind = "method_not_allowed"
    legacy_kind = "MethodNotAllowed"
    status = 405
    default_code = "method_not_allowed"


class AuthenticationFailed(JanusError):
    kind = "authentication_failed"
    legacy_kind = "AuthenticationFailed"
    blames_deployment = False
    status = 401
    type = "invalid_request_error"
    default_code = "invalid_api_key"
    log_level = "info"


class PermissionDenied(JanusError):
    kind = "permission_denied"
    legacy_kind = "PermissionDenied"
    blames_deployment = False
    status = 403
    type = "permission_error"
    log_level = "info"


class NotFound(JanusError):
    kind = "not_found"
    legacy_kind = "NotFound"
    blames_deployment = False
    status = 404
    type = "invalid_request_error"
    default_code = "not_found"
    log_level = "info"


class ModelNotFound(NotFound):
    kind = "model_not_found"
    legacy_kind = "ModelNotFound"
    default_code = "model_not_found"


class BudgetExceeded(JanusError):
    kind = "budget_exceeded"
    legacy_kind = "BudgetExceeded"
    blames_deployment = False
    status = 429
    type = "insufficient_quota"
    default_code = "budget_exceeded"
    log_level = "info"

    # The OpenAI SDKs retry every 429 unless told otherwise; a spent budget will not come back
    # within a retry's wait, so the inherited ``x-should-retry: false`` says so.


class RateLimited(JanusError):
    kind = "rate_limited"
    legacy_kind = "RateLimited"
    blames_deployment = False
    status = 429
    type = "requests"
    default_code = "rate_limit_exceeded"
    log_level = "info"

    # unlike a spent budget, a request-rate window reopens within Retry-After: worth the retry
    retryable = True


class UpstreamError(JanusError):
    kind = "upstream"
    legacy_kind = "UpstreamError"
    status = 502
    type = "upstream_error"
    default_code = "upstream_error"
    retryable = True
    log_level = "warning"


class UpstreamClientError(UpstreamError):
    """The provider refused the request itself (400/401/403/404/422): the same request would fail
    on every deployment, so it is passed back to the client and never retried."""

    kind = "upstream_refused"
    legacy_kind = "UpstreamClientError"
    blames_deployment = False
    status = 400
    type = "invalid_request_error"
    default_code = "upstream_rejected"
    retryable = False
    log_level = "info"


class UpstreamTimeout(JanusError):
    kind = "upstream_timeout"
    legacy_kind = "UpstreamTimeout"
    status = 504
    type = "timeout"
    default_code = "upstream_timeout"
    retryable = True
    log_level = "warning"


class ServiceUnavailable(JanusError):
    kind = "unavailable"
    legacy_kind = "ServiceUnavailable"
    status = 503
    type = "service_unavailable"
    default_code = "service_unavailable"
    retryable = True
    log_level = "warning"


class StreamInterrupted(JanusError):
    kind = "stream_interrupted"
    legacy_kind = "StreamInterrupted"
    status = 502
    type = "upstream_error"
    default_code = "stream_interrupted"
    log_level = "warning"


class UpstreamAuthFailed(UpstreamClientError):
    """The provider refused this deployment's own credentials: no caller's mistake, and the
    deployment can serve nobody until an operator fixes its key."""

    status = 502
    default_code = "upstream_auth"
    kind = "upstream_auth"
    legacy_kind = "UpstreamClientError"
    blames_deployment = True


class Cancelled(JanusError):
    """The client went away (or the gateway gave up on the call): nobody reads the answer, nobody
    retries it, and it says nothing about the deployment. 499 is nginx's "client closed request"."""

    status = 499
    type = "invalid_request_error"
    default_code = "cancelled"
    log_level = "info"
    kind = "cancelled"
    legacy_kind = "InvalidRequest"
    blames_deployment = False


# What a provider's message may carry that a caller must never see: key fragments (OpenAI echoes
# "sk-...abcd", Google "AIza..."), bearer tokens, URLs (internal base URLs, keys in query strings), IPs.
_SECRETS = re.compile(
    r"(?i)\b(?:sk|pk|rk|gsk|xai|key)[-_][\w\-.*]{4,}"
    r"|\bAIza[\w\-]{8,}"
    r"|\bbearer\s+\S+"
    r"|\b[a-z][a-z0-9+.\-]*://\S+"
    r"|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b"
    r"|(?<![\w:])[0-9a-f]{0,4}(?::[0-9a-f]{0,4}){2,7}(?![\w:])"
)


def redact(message: str) -> str:
    """``message`` without key fragments, tokens, URLs or IP addresses (each becomes ``[redacted]``)."""
    return _SECRETS.sub("[redacted]", message)


def upstream_error_for_status(status: int, message: str, retry_after: float | None = None) -> JanusError:
    """Classify a provider's HTTP status once, for every adapter. ``message`` (the provider's) reaches
    the caller redacted; a refusal of the deployment's credentials does not reach it at all."""
    if status in (400, 401, 403, 404, 422):
        # The provider's own credentials failing is our configuration problem, not the caller's, and
        # the provider's words about them may quote the key: the worker logs them, the caller gets this
        if status in (401, 403):
            return UpstreamAuthFailed(
                f"the provider refused this deployment's credentials ({status}); the operator can "
                "find the details in the worker's log by the request id"
            )
        return UpstreamClientError(redact(message), status=400 if status == 422 else status)
    message = redact(message)
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
