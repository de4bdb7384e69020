"""What a provider's failure becomes for an OpenAI client: a status the SDKs know, and an
``x-should-retry`` header that agrees with whether Janus itself would try again."""

from __future__ import annotations

import msgspec
import pytest

from shared import contract
from shared.errors import (
    _BY_KIND,
    BudgetExceeded,
    Cancelled,
    ErrorInfo,
    JanusError,
    RateLimited,
    UpstreamAuthFailed,
    UpstreamClientError,
    UpstreamError,
    upstream_error_for_status,
)

# what the OpenAI SDKs and the README name for upstream trouble
CLIENT_KNOWN_5XX = {500, 502, 503, 504}


@pytest.mark.parametrize("status", [500, 501, 502, 503, 504, 520, 524, 529, 598])
def test_an_upstream_5xx_reaches_the_client_as_a_status_it_knows(status: int) -> None:
    err = upstream_error_for_status(status, "trouble")
    assert err.http_status in CLIENT_KNOWN_5XX
    assert err.retryable
    assert err.headers()["x-should-retry"] == "true"


def test_an_overloaded_provider_is_a_retryable_503() -> None:
    # Anthropic's overloaded_error arrives as 529
    err = upstream_error_for_status(529, "overloaded_error: Overloaded", retry_after=3)
    assert (err.http_status, err.code) == (503, "upstream_overloaded")
    assert err.headers() == {"x-should-retry": "true", "Retry-After": "3"}


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_tell_the_sdk_not_to_retry(status: int) -> None:
    err = upstream_error_for_status(status, "PERMISSION_DENIED")
    assert (err.http_status, err.code) == (502, "upstream_auth")
    assert err.headers()["x-should-retry"] == "false"


EVERY_CLASS = sorted(_BY_KIND.values(), key=lambda c: c.kind)


@pytest.mark.parametrize("cls", EVERY_CLASS, ids=lambda c: c.kind)
def test_every_error_says_whether_to_retry_and_agrees_with_itself(cls: type[JanusError]) -> None:
    err = cls("x")
    assert err.headers()["x-should-retry"] == ("true" if err.retryable else "false")


def test_budget_and_rate_limit_keep_their_advice() -> None:
    assert BudgetExceeded("spent").headers()["x-should-retry"] == "false"
    assert RateLimited("slow down", retry_after=2).headers() == {"x-should-retry": "true", "Retry-After": "2"}


def test_the_advice_survives_the_bus() -> None:
    for err in (upstream_error_for_status(529, "o"), upstream_error_for_status(403, "d")):
        back = JanusError.from_wire(err.to_wire())
        assert back.http_status == err.http_status
        assert back.headers()["x-should-retry"] == err.headers()["x-should-retry"]


# --------------------------------------------------------------------------- rolling upgrades
# The previous release's ErrorInfo and its look-up: the class named by its Python name, in ``kind``.
class _PreviousErrorInfo(msgspec.Struct, omit_defaults=True):
    kind: str
    message: str
    status: int = 500
    param: str | None = None
    code: str | None = None
    retry_after: float | None = None


class _PreviousFailed(msgspec.Struct, tag="frame.failed.v1", tag_field="type", omit_defaults=True):
    seq: int
    error: _PreviousErrorInfo


# every class that release had, by the name it wrote
PREVIOUS_NAMES = frozenset(
    {
        "JanusError",
        "InvalidRequest",
        "PayloadTooLarge",
        "MethodNotAllowed",
        "AuthenticationFailed",
        "PermissionDenied",
        "NotFound",
        "ModelNotFound",
        "BudgetExceeded",
        "RateLimited",
        "UpstreamError",
        "UpstreamClientError",
        "UpstreamTimeout",
        "ServiceUnavailable",
        "StreamInterrupted",
    }
)


def _rendered(err: JanusError) -> tuple[int, bytes, dict[str, str]]:
    """What a client gets from the gateway for ``err``: status, body and headers."""
    return err.http_status, err.to_body(), err.headers()


@pytest.mark.parametrize("name", sorted(PREVIOUS_NAMES))
def test_a_new_gateway_reads_an_old_workers_error(name: str) -> None:
    old = _PreviousFailed(seq=3, error=_PreviousErrorInfo(name, "m", status=503, code="c", retry_after=2))
    frame = contract.frame_decoder.decode(msgspec.msgpack.encode(old))
    assert isinstance(frame, contract.Failed)
    err = JanusError.from_wire(frame.error)
    assert type(err).__name__ == name  # the class that name meant, not the generic 500
    assert (err.http_status, err.code, err.retry_after, err.message) == (503, "c", 2, "m")


@pytest.mark.parametrize("cls", EVERY_CLASS, ids=lambda c: c.kind)
def test_an_old_gateway_renders_a_new_workers_error_as_the_new_one_does(cls: type[JanusError]) -> None:
    # during a rolling upgrade the gateways roll last: old ones read what new workers send
    new = cls("m", param="p", retry_after=1.5)
    data = contract.encode(contract.Failed(seq=1, error=new.to_wire()))
    old = msgspec.msgpack.Decoder(_PreviousFailed).decode(data).error
    assert old.kind in PREVIOUS_NAMES
    # the old release's look-up: its class by that name (the same class object serves: the
    # attributes a gateway renders from are unchanged for every name it knew)
    was = next(c for c in _BY_KIND.values() if c.legacy_kind == old.kind and c.__name__ == old.kind)
    seen = was(old.message, param=old.param, code=old.code, retry_after=old.retry_after, status=old.status)
    assert _rendered(seen) == _rendered(new)
    assert seen.retryable == new.retryable  # so the old gateway falls back exactly when the new one does


def test_the_wire_names_a_kind_not_a_class() -> None:
    info = Cancelled("gone").to_wire()
    assert (info.kind, info.legacy_kind, info.status, info.code) == (
        "cancelled",
        "InvalidRequest",
        499,
        "cancelled",
    )
    back = JanusError.from_wire(msgspec.msgpack.decode(contract.encode(info), type=ErrorInfo))
    assert isinstance(back, Cancelled) and not back.blames_deployment


def test_a_refusal_of_our_credentials_blames_the_deployment_and_a_callers_does_not() -> None:
    ours = upstream_error_for_status(401, "bad key")
    theirs = upstream_error_for_status(400, "bad request")
    assert isinstance(ours, UpstreamAuthFailed) and ours.blames_deployment
    assert type(theirs) is UpstreamClientError and not theirs.blames_deployment
    assert JanusError.from_wire(ours.to_wire()).blames_deployment
    assert upstream_error_for_status(503, "down").blames_deployment


def test_a_kind_names_one_class() -> None:
    with pytest.raises(TypeError, match="reuses the wire kind"):
        type("Twin", (UpstreamError,), {"kind": "upstream", "legacy_kind": "UpstreamError"})
    with pytest.raises(TypeError, match="must name its own wire kind"):
        type("Nameless", (UpstreamError,), {})
