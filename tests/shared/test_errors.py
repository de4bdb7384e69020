"""What a provider's failure becomes for an OpenAI client: a status the SDKs know, and an
``x-should-retry`` header that agrees with whether Janus itself would try again."""

from __future__ import annotations

import pytest

from shared.errors import (
    _BY_NAME,
    BudgetExceeded,
    JanusError,
    RateLimited,
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


@pytest.mark.parametrize("cls", sorted(_BY_NAME.values(), key=lambda c: c.__name__), ids=lambda c: c.__name__)
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
