"""The gateway's Prometheus metrics, in a registry of its own (so two gateways in one process,
as in tests, never share counters): requests by route and status, tokens by model and kind,
time to first token and request time by model, and model and adapter load times, read from the
daemon when scraped."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class _LoadTimes:
    """Model and adapter load seconds, read from the daemon at each scrape."""

    def __init__(self, read: Callable[[], dict[str, Any]]):
        self.read = read

    def collect(self) -> Any:
        figures = self.read()
        model = GaugeMetricFamily("hyperlex_model_load_seconds",
                                  "seconds the chat model's last load took", labels=["model"])
        if figures.get("model_load_s") is not None:
            model.add_metric([figures.get("model", "")], figures["model_load_s"])
        yield model
        adapters = GaugeMetricFamily("hyperlex_adapter_load_seconds",
                                     "seconds an adapter loaded over HTTP took to load",
                                     labels=["model"])
        for name, seconds in figures.get("adapter_load_s", {}).items():
            adapters.add_metric([name], seconds)
        yield adapters
        in_flight = GaugeMetricFamily("hyperlex_http_in_flight", "requests being served")
        in_flight.add_metric([], figures.get("in_flight", 0))
        yield in_flight


class Metrics:
    def __init__(self, read_loads: Callable[[], dict[str, Any]]):
        self.registry = CollectorRegistry()
        self.requests = Counter("hyperlex_http_requests", "HTTP requests answered",
                                ["route", "status"], registry=self.registry)
        self.request_seconds = Histogram("hyperlex_http_request_seconds",
                                         "time to answer a request", ["route"],
                                         buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tokens = Counter("hyperlex_tokens", "tokens read and written, by model",
                              ["model", "kind"], registry=self.registry)
        self.ttft = Histogram("hyperlex_time_to_first_token_seconds",
                              "from request to the first answer token, by model", ["model"],
                              buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.registry.register(_LoadTimes(read_loads))  # type: ignore[arg-type]

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def count_tokens(self, model: str, prompt: int, completion: int) -> None:
        if prompt:
            self.tokens.labels(model, "prompt").inc(prompt)
        if completion:
            self.tokens.labels(model, "completion").inc(completion)

    def render(self) -> bytes:
        return generate_latest(self.registry)
