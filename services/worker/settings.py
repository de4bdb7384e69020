"""The worker's settings, each read from ``JANUS_<NAME>`` (see ``shared.settings``)."""

from __future__ import annotations

from shared.settings import CommonSettings


class WorkerSettings(CommonSettings, kw_only=True):
    # comma-separated provider ids this worker serves (``JANUS_WORKER_PROVIDERS``); empty: all
    worker_providers: str = ""
    worker_id: str = ""  # names this replica in Accepted frames and logs; empty: host and pid
    max_concurrency: int = 256  # upstream calls in flight at once; beyond it work is refused
    # per provider, unless the catalog sets the provider's max_concurrency; 0: all of max_concurrency
    # when the worker serves one provider, half of it when it serves several (a hanging provider
    # then holds at most half the pod)
    provider_max_concurrency: int = 0
    heartbeat_seconds: float = 2.0  # frame sent while the upstream is silent this long
    # an answer or first token quicker than this is the gateway's news that a worker took the work
    # (one message fewer); a slower one is preceded by an Accepted frame. Keep it far below the
    # gateways' JANUS_FIRST_FRAME_TIMEOUT_SECONDS
    accept_delay_seconds: float = 0.1
    connect_timeout_seconds: float = 10.0
    read_timeout_seconds: float = 300.0  # silence allowed between two reads from the provider
    pool_size: int = 1024  # open upstream connections, all providers together
    health_interval_seconds: float = 1.0
    # largest buffered answer (an embeddings batch) sent to a gateway; larger is a 413, charged
    max_response_bytes: int = 64 * 1024 * 1024
    # a directory with one file per provider key variable (a mounted Secret); empty: the environment
    provider_keys_dir: str = ""
    provider_keys_refresh_seconds: float = 10.0  # how often the directory is checked for rotated keys
    # JANUS_BYOK_KEY: seals users' own provider keys (``janus byok genkey``); empty: bring-your-own-key off
    byok_key: str = ""
    # the built-in fake provider's pace, over its deployments' options (latency_ms, tokens_per_second;
    # 0: as fast as possible); unset: the catalog's. Tests and benchmarks slow a whole stack with them
    fake_latency_ms: float | None = None
    fake_tokens_per_second: float | None = None

    def fake_pace(self) -> dict[str, str]:
        """The fake deployments' options these settings override."""
        pace = {"latency_ms": self.fake_latency_ms, "tokens_per_second": self.fake_tokens_per_second}
        return {k: str(v) for k, v in pace.items() if v is not None}

    def provider_cap(self, catalog_cap: int, providers: int) -> int:
        """The calls one provider may have in flight on this worker."""
        cap = catalog_cap or self.provider_max_concurrency
        if not cap:
            cap = self.max_concurrency if providers <= 1 else max(1, self.max_concurrency // 2)
        return min(cap, self.max_concurrency)

    def providers(self) -> list[str]:
        return [p.strip() for p in self.worker_providers.split(",") if p.strip()]
