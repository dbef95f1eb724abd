"""Prometheus metrics: one registry per process, exposed at /metrics.

Counters and histograms are updated where things happen (the access-log hook, the SSE writer,
the hub, the run driver, the upstream clients); gauges that mirror live state (pool use,
subscribers) are read when /metrics is scraped, so nothing is kept twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

HTTP_REQUESTS = Counter(
    "webedt_http_requests_total",
    "HTTP requests by handler, method and status",
    ["handler", "method", "status"],
    registry=REGISTRY,
)
HTTP_LATENCY = Histogram(
    "webedt_http_request_duration_seconds",
    "Time to answer an HTTP request (for streams: the whole stream)",
    ["handler"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600, 3600),
    registry=REGISTRY,
)
OPEN_STREAMS = Gauge("webedt_sse_open_streams", "SSE streams open in this process", registry=REGISTRY)
DB_OUTAGES = Counter(
    "webedt_db_outages",
    "Times PostgreSQL became unreachable for this process (one WARNING each in the log)",
    registry=REGISTRY,
)
DB_UNAVAILABLE_ERRORS = Counter(
    "webedt_db_unavailable_errors",
    "Database calls that failed because PostgreSQL was unreachable (logged once per outage)",
    registry=REGISTRY,
)
UPSTREAM_CALLS = Counter(
    "webedt_upstream_calls_total",
    "Calls to Anthropic and GitHub by service and outcome",
    ["service", "outcome"],
    registry=REGISTRY,
)

UPSTREAM_PUSH_OPEN = Gauge(
    "webedt_upstream_push_open", "Upstream push channels (Claude WebSockets) open in this process", registry=REGISTRY
)
UPSTREAM_PUSH_RECONNECTS = Counter(
    "webedt_upstream_push_reconnects_total", "Push channels opened again after one closed or failed", registry=REGISTRY
)
UPSTREAM_PUSH_FALLBACKS = Counter(
    "webedt_upstream_push_fallbacks_total",
    "Times a run gave up on its push channel for a while and followed by polling",
    registry=REGISTRY,
)
UPSTREAM_EVENT_LATENCY = Histogram(
    "webedt_upstream_event_latency_seconds",
    "From the upstream timestamp of an event to its storing here, by how it came (push or poll)",
    ["via"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)

# What runs cost upstream, by backend (never by person: labels are bounded), as recorded by
# services/usage.py; each replica counts the reports it recorded.
USAGE_COST = Counter(
    "webedt_usage_cost_usd_total", "Upstream cost of runs in US dollars, by backend", ["backend"], registry=REGISTRY
)
USAGE_TOKENS = Counter(
    "webedt_usage_tokens_total",
    "Tokens runs used upstream, by backend and kind (input, output, cache_read, cache_creation)",
    ["backend", "kind"],
    registry=REGISTRY,
)


class LiveGauges:
    """Gauges computed at scrape time from callables registered by the running services."""

    def __init__(self) -> None:
        self.sources: dict[str, tuple[str, Callable[[], float]]] = {}

    def register(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.sources[name] = (documentation, read)

    def collect(self) -> Any:
        for name, (documentation, read) in list(self.sources.items()):
            family = GaugeMetricFamily(name, documentation)
            try:
                family.add_metric([], float(read()))
            except Exception:  # a closed pool or stopped hub must not break the scrape
                log.debug("metric source %s failed", name, exc_info=True)
                continue
            yield family


def render(live: LiveGauges) -> bytes:
    """The process-wide metrics plus the live gauges of one running application."""
    per_app = CollectorRegistry(auto_describe=False)
    per_app.register(live)
    return generate_latest(REGISTRY) + generate_latest(per_app)
