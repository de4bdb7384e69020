"""An embeddings request split into several upstream calls, one of which fails after others were
answered: the provider billed the answered ones, so the Failed frame carries their tokens."""

from __future__ import annotations

import pytest

from services.worker.service import WorkerService
from shared import contract
from shared.bus import Bus
from tests.fakes.openai_upstream import OpenAIUpstream
from tests.worker.conftest import check_sequence, oai_work, run_work


async def test_batches_served_before_one_failed_are_charged(
    bus: Bus, worker: WorkerService, upstream: OpenAIUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    for adapter in worker.adapters.values():
        monkeypatch.setattr(adapter, "max_batch", 4, raising=False)
    upstream.faults.pass_first, upstream.faults.fail_times = 2, 1
    upstream.faults.status = 400  # not worth retrying: the whole answer fails
    body = {"input": [f"passage {i}" for i in range(12)]}  # three calls of four, two tokens each
    failed = check_sequence(await run_work(bus, oai_work(body, kind="embeddings")))
    assert isinstance(failed, contract.Failed)
    assert len(upstream.requests) == 3
    assert failed.usage == contract.Usage(prompt_tokens=16)  # the two calls answered, not the third
