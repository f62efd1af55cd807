"""The server's Prometheus metrics (``GET /metrics``).

Request counts and latencies are the server's own; token counts, queue depth, running requests
and cancellations come from the engine's counters (``Model.stats()``) at scrape time, so they
also count what the model did outside the server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ..model import Model

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Seconds: from a token every few milliseconds to a long generation.
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class _EngineCollector(Collector):
    def __init__(self, model: Model) -> None:
        self.model = model

    def collect(self) -> Iterator[Metric]:
        s = self.model.stats()
        counters = {
            "tallow_prompt_tokens": ("Prompt tokens computed", s.prompt_tokens),
            "tallow_cached_prompt_tokens": ("Prompt tokens from a cached prefix", s.cached_prompt_tokens),
            "tallow_completion_tokens": ("Tokens generated", s.generated_tokens),
            "tallow_requests_finished": ("Engine requests that ran to their end", s.finished),
            "tallow_requests_cancelled": (
                "Engine requests cancelled (client disconnects, deadlines)",
                s.cancelled,
            ),
            "tallow_requests_failed": ("Engine requests that ended with an error", s.failed),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        gauges = {
            "tallow_queue_depth": ("Requests waiting for a sequence slot", s.queued),
            "tallow_active_requests": ("Requests generating now", s.active),
            "tallow_kv_slots_in_use": ("KV caches held by running requests", s.kv_slots_in_use),
            "tallow_kv_slots": ("KV caches the engine may hold (max_sequences)", s.kv_slots),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)


class Metrics:
    """One server's metrics, in a registry of its own (two apps in a process do not mix)."""

    def __init__(self, model: Model) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineCollector(model))
        self.requests = Counter(
            "tallow_http_requests",
            "HTTP requests answered, by endpoint and status code",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.disconnects = Counter(
            "tallow_http_disconnects",
            "Generations cancelled because their client disconnected",
            ["endpoint"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "tallow_request_duration_seconds",
            "Time from a generation request to its last byte",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "tallow_time_to_first_token_seconds",
            "Time from a streamed generation request to its first generated text",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
