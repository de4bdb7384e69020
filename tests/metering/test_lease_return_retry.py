"""A lease return is sent once by its gateway: when metering's write of it fails (a JetStream
election times the KV write out), metering retries it instead of leaving the credits parked in
the lease until the reaper's TTL (minutes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.metering.service import MeteringService
from shared import contract, subjects
from shared.bus import Bus
from shared.errors import InvalidRequest, ServiceUnavailable
from tests.eventually import eventually


async def _patched(svc: MeteringService, failures: list[Exception]) -> list[str]:
    calls: list[str] = []
    real = svc.give_back

    async def give_back(ret: contract.LeaseReturn) -> bool:
        calls.append("failed" if failures else "written")
        if failures:
            raise failures.pop(0)
        return await real(ret)

    svc.give_back = give_back  # type: ignore[method-assign]
    return calls


async def test_a_lease_return_whose_write_failed_is_retried(
    start_metering: Callable[..., Awaitable[MeteringService]], bus: Bus
) -> None:
    svc = await start_metering()
    calls = await _patched(
        svc, [ServiceUnavailable("key-value store unavailable"), ServiceUnavailable("still electing")]
    )
    ret = contract.LeaseReturn("retry-user", "lse_retry", whole=True)
    await bus.publish(subjects.METER_RENEW, contract.encode(ret))
    await eventually(lambda: calls == ["failed", "failed", "written"], 10, "the return written on a retry")


async def test_a_lease_return_refused_for_good_is_not_retried(
    start_metering: Callable[..., Awaitable[MeteringService]], bus: Bus
) -> None:
    svc = await start_metering()
    calls = await _patched(svc, [InvalidRequest("not retryable")])
    await bus.publish(subjects.METER_RENEW, contract.encode(contract.LeaseReturn("u2", "lse_x", whole=True)))
    # a positive marker on the same path: a later return is handled, so the first one had its turn
    await bus.publish(subjects.METER_RENEW, contract.encode(contract.LeaseReturn("u2", "lse_y", whole=True)))
    await eventually(lambda: calls == ["failed", "written"], 10, "the second return handled")
    assert not svc._returns, "a refusal that is not retryable must not be retried"
