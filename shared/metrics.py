"""Every Prometheus metric Janus exports, defined once.

Names carry the ``janus_`` prefix and base units; labels follow the OpenTelemetry GenAI names
(``gen_ai_provider_name``, ``gen_ai_request_model``, ``gen_ai_token_type``). Never a user, key or
request id as a label: those are unbounded and personal.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from prometheus_client.utils import floatToGoString

OTHER = "other"  # the label value of whatever a bounded label set has no room for
# distinct label sets a metric keeps for values another service chose (Janus's own error codes
# are a few dozen); past it they are counted under OTHER
PEER_LABEL_SETS = 256


def children(metric: Any, most: int = 0) -> Callable[..., Any]:
    """``metric.labels(*values)`` resolved once per distinct values: ``labels()`` takes a lock and
    builds its key on every call, which the request path should not pay. Only for labels whose
    values are few (the rule for every label here anyway).

    ``most``: for a label whose values come from another service (an error code in a worker's
    frame), at most this many distinct label sets; the rest are counted under ``other`` in every
    label, so a compromised neighbour cannot grow a series set, and this process, without bound."""
    cache: dict[tuple[str, ...], Any] = {}

    def child(*values: str) -> Any:
        found = cache.get(values)
        if found is None:
            if most and len(cache) >= most:
                values = (OTHER,) * len(values)
                found = cache.get(values)
                if found is not None:
                    return found
            found = cache[values] = metric.labels(*values)
        return found

    return child


class _Count:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class _Observed:
    __slots__ = ("_bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        # the first bucket whose upper bound is at least the amount, as prometheus_client files it
        self.counts[bisect_left(self._bounds, amount)] += 1
        self.sum += amount


class _LoopMetric:
    """A metric the request path moves, kept as plain numbers per label set and turned into
    Prometheus samples when scraped (a collector on the registry: prometheus_client's public
    interface for that). prometheus_client's own ``inc`` and ``observe`` take a lock, check the
    metric is observable and look for an exemplar on every call, and a histogram walks its bounds
    in Python; these do none of that (measured with ``make bench-instructions``: the gateway 3.5 %
    and the worker 2.4 % fewer instructions a request).

    For the event loop's thread only: a service moves and scrapes them there (the ops server's
    ``/metrics`` runs on the same loop), so no update is ever half seen. Exported under the same
    names, types and labels as before, without the ``_created`` series."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: tuple[str, ...] | list[str] = (),
        registry: CollectorRegistry | None = REGISTRY,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        if registry is not None:
            registry.register(self)

    def _child(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: str) -> Any:
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes {len(self.labelnames)} label values, got {len(values)}")
        found = self._children.get(values)
        if found is None:
            found = self._children[values] = self._child()
        return found

    def _family(self) -> Metric:
        raise NotImplementedError

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> list[Metric]:
        """One family with every label set's samples (a list, as prometheus_client's metrics give)."""
        family = self._family()
        for values, child in list(self._children.items()):
            self._add(family, list(values), child)
        return [family]

    def _add(self, family: Any, values: list[str], child: Any) -> None:
        raise NotImplementedError


class LoopCounter(_LoopMetric):
    """A counter (see ``_LoopMetric``); with no labels, ``inc`` on the metric itself."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._only: _Count | None = None if self.labelnames else self.labels()

    def inc(self, amount: float = 1.0) -> None:
        if self._only is None:
            raise ValueError(f"{self.name} has labels: inc on one of its labels(...)")
        self._only.inc(amount)

    def _child(self) -> _Count:
        return _Count()

    def _family(self) -> Metric:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, values: list[str], child: Any) -> None:
        family.add_metric(values, child.value)


class LoopHistogram(_LoopMetric):
    """A histogram (see ``_LoopMetric``): ``buckets`` are upper bounds, +Inf added."""

    def __init__(self, *args: Any, buckets: tuple[float, ...], **kwargs: Any) -> None:
        bounds = tuple(sorted(float(b) for b in buckets))
        self._bounds = bounds if bounds and bounds[-1] == float("inf") else (*bounds, float("inf"))
        super().__init__(*args, **kwargs)
        self._only: _Observed | None = None if self.labelnames else self.labels()

    def observe(self, amount: float) -> None:
        if self._only is None:
            raise ValueError(f"{self.name} has labels: observe on one of its labels(...)")
        self._only.observe(amount)

    def _child(self) -> _Observed:
        return _Observed(self._bounds)

    def _family(self) -> Metric:
        return HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)

    def _add(self, family: Any, values: list[str], child: Any) -> None:
        buckets, total = [], 0
        for bound, n in zip(self._bounds, child.counts, strict=True):
            total += n
            buckets.append((floatToGoString(bound), total))
        family.add_metric(values, buckets, child.sum)


_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_FAST = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)

# --- every service
EVENT_LOOP_LAG = Histogram(
    "janus_event_loop_lag_seconds",
    "How late the event loop ran a timer: time every task on it waited for the CPU",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JETSTREAM_WRITE_ERRORS = Counter(
    "janus_jetstream_write_errors_total",
    "JetStream writes (KV updates, stream publishes) refused or not acknowledged; reason 'full': the "
    "store or a stream's limit is reached",
    ["store", "reason"],
)
NATS_CONNECTED = Gauge("janus_nats_connected", "1 while the service is connected to NATS")
UP_INFO = Gauge("janus_service_info", "Constant 1, labelled with the service name", ["service"])

# --- gateway
HTTP_REQUESTS = LoopCounter(
    "janus_http_requests_total", "HTTP requests answered by the gateway", ["route", "method", "status"]
)
HTTP_DURATION = LoopHistogram(
    "janus_http_request_duration_seconds", "Time from request to the last byte", ["route"], buckets=_LATENCY
)
OVERHEAD = LoopHistogram(
    "janus_gateway_overhead_seconds",
    "Time Janus adds: the request's duration minus the worker's upstream time",
    ["route"],
    buckets=(*_FAST, 0.25, 0.5, 1.0),
)
TTFT = LoopHistogram(
    "janus_time_to_first_token_seconds",
    "Time from the request to the first content chunk sent to the client",
    ["gen_ai_request_model"],
    buckets=_LATENCY,
)
IN_FLIGHT = Gauge("janus_in_flight_requests", "Requests the gateway is serving now")
STREAM_ERRORS = Counter("janus_stream_errors_total", "Streams ended with an in-band error event", ["code"])
FALLBACKS = Counter(
    "janus_fallbacks_total",
    "Moves to the next deployment of a route plan before the first token",
    ["gen_ai_provider_name", "reason"],
)
AUTH_FAILURES = Counter("janus_auth_failures_total", "Requests refused authentication", ["reason"])

# --- router
ROUTE_DECISIONS = Counter(
    "janus_route_decisions_total", "Routing decisions by reason", ["reason", "gen_ai_request_model"]
)
ROUTE_DECISION_SECONDS = Histogram(
    "janus_route_decision_seconds", "Time the router spends deciding", buckets=_FAST
)
CIRCUIT_STATE = Gauge(
    "janus_circuit_state", "Circuit breaker per deployment: 0 closed, 1 half-open, 2 open", ["deployment"]
)

# --- provider worker
TOKENS = LoopCounter(
    "janus_tokens_total",
    "Tokens processed, by provider, model and type",
    ["gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"],
)
UPSTREAM_DURATION = LoopHistogram(
    "janus_upstream_request_duration_seconds",
    "Time spent on the upstream provider call",
    ["gen_ai_provider_name"],
    buckets=_LATENCY,
)
UPSTREAM_ERRORS = Counter(
    "janus_upstream_errors_total", "Failed upstream calls by class", ["gen_ai_provider_name", "error_type"]
)
UPSTREAM_CALLS = LoopCounter(
    "janus_upstream_calls_total",
    "Upstream calls by provider, deployment (a catalog id) and outcome (ok or error)",
    ["gen_ai_provider_name", "deployment", "outcome"],
)
WORKER_IN_FLIGHT = Gauge("janus_worker_in_flight", "Upstream calls in progress", ["gen_ai_provider_name"])
WORKER_CAPACITY = Gauge(
    "janus_worker_capacity", "Concurrent upstream calls a worker accepts", ["gen_ai_provider_name"]
)
# per deployment as well: a catalog max_concurrency on one deployment refuses its work while the
# provider's share still has room, which the per-provider ratio cannot show
WORKER_DEPLOYMENT_IN_FLIGHT = Gauge(
    "janus_worker_deployment_in_flight",
    "Upstream calls in progress per deployment (a catalog id)",
    ["gen_ai_provider_name", "deployment"],
)
WORKER_DEPLOYMENT_CAPACITY = Gauge(
    "janus_worker_deployment_capacity",
    "Concurrent upstream calls a worker accepts for one deployment: its catalog max_concurrency, at most "
    "its provider's cap",
    ["gen_ai_provider_name", "deployment"],
)

# --- metering
BUDGET_DECISIONS = LoopCounter("janus_budget_decisions_total", "Admission decisions", ["decision", "pool"])
CREDITS_CHARGED = LoopCounter(
    "janus_credits_charged_total",
    "Credits (microdollars) charged, by model and plan",
    ["gen_ai_request_model", "plan"],
)
SETTLEMENTS = LoopCounter(
    "janus_settlements_total",
    "Settlements by outcome (metering's results; 'lost' counted by the gateway)",
    ["result"],
)
USAGE_OVER_HOLD = LoopCounter(
    "janus_usage_over_hold_total",
    "Settlements whose reported usage cost more than their hold (charged the hold only)",
    ["gen_ai_request_model"],
)
SETTLEMENTS_DEAD = Counter(
    "janus_settlements_dead_lettered_total",
    "Settlements metering could not apply and moved to the dead-letter stream, by reason",
    ["reason"],
)
HOLDS_OPEN = Gauge("janus_holds_open", "Reservations not yet settled, as seen by this replica")
HOLDS_REAPED = Counter("janus_holds_reaped_total", "Reservations released by the reaper")
DAILY_LAG = Gauge(
    "janus_daily_history_lag_entries",
    "Ledger messages (an entry, or a bundle's entries) not yet counted into the daily history, as of this"
    " replica's last read of the ledger",
)
# credit leases: metering counts grants and the returns sent on their own (idle, a /v1/usage read,
# a stopping gateway; one riding on the next reserve is not counted), a gateway the requests it
# admitted on one without a reserve
LEASES = Counter("janus_credit_leases_total", "Credit leases granted to gateways and given back", ["event"])
LEASE_ADMISSIONS = LoopCounter(
    "janus_lease_admissions_total", "Requests a gateway admitted on its credit lease"
)
METER_OP_SECONDS = LoopHistogram(
    "janus_metering_operation_seconds", "Time to reserve or settle", ["operation"], buckets=(*_FAST, 0.25)
)
CAS_RETRIES = Counter("janus_metering_cas_retries_total", "Compare-and-set conflicts retried")
METER_COMMIT_OPS = LoopHistogram(
    "janus_metering_commit_operations",
    "Reserves and settlements persisted by one budget-record write",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
# a record carries the ids a user settled within the idempotency horizon and is rewritten whole:
# its size is what each write costs JetStream (times the bucket's replicas)
METER_RECORD_BYTES = LoopHistogram(
    "janus_metering_record_bytes",
    "Size of each budget record metering writes",
    buckets=(1024, 4096, 16384, 65536, 262144, 1048576),
)
