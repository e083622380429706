"""The reference gateway's metrics, on ``prometheus-client``, and the ``GET /metrics`` route.

:class:`PrometheusMetrics` backs the plugin's :class:`~openclaw_http_compat.metrics.Metrics`
and adds what only the gateway sees: upstream calls (:mod:`.providers`) and session-store
operations (:mod:`.timed_store`). The names are stable (dashboards depend on them) and listed
in the README. No label ever carries a session key, a user, a credential or message text:
labels are route templates, methods, statuses, configured agent and provider ids, outcomes,
token kinds, failure reasons from a fixed set, store engines and operation names.

**Several workers.** Under ``gateway --workers N`` the supervisor gives every start a fresh
``PROMETHEUS_MULTIPROC_DIR`` (:func:`multiprocess_directory`) before it spawns the workers, so
each worker's ``prometheus-client`` writes its values to files there, and any worker's
``/metrics`` reads them all: one scrape reports the whole host. Counters and histograms of a
dead worker stay in the sum (they are cumulative); its gauges are dropped when the supervisor
reaps it (:func:`mark_worker_dead`), as the gauges are ``livesum``.

``prometheus-client`` is the ``[metrics]`` extra. Without it this module still imports (the
gateway checks :data:`METRICS_AVAILABLE`), and only :class:`PrometheusMetrics` needs it.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any, Final, Protocol

from aiohttp import web

from openclaw_http_compat.errors import ApiError, ConfigError
from openclaw_http_compat.metrics import TOKEN_KINDS, RunOutcome
from openclaw_http_compat.wire import json_error_response

from .config import MetricsConfig

try:
    import prometheus_client
    from prometheus_client import multiprocess
    from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
    from prometheus_client.utils import floatToGoString
except ImportError:  # pragma: no cover - the [metrics] extra is not installed
    METRICS_AVAILABLE: Final = False
else:
    METRICS_AVAILABLE = True  # type: ignore[misc]

__all__ = (
    "INSTALL_METRICS",
    "METRICS_AVAILABLE",
    "MULTIPROC_DIR_ENV",
    "TEXT_CONTENT_TYPE",
    "PrometheusMetrics",
    "StoreMetrics",
    "UpstreamMetrics",
    "mark_worker_dead",
    "metrics_handler",
    "multiprocess_directory",
    "prometheus_metrics",
    "worker_metrics",
)

#: What to install for ``gateway.metrics.enabled``.
INSTALL_METRICS: Final = "pip install 'openclaw-http-compat[metrics]'"
#: Where ``prometheus-client`` keeps the values of several processes (read when it is imported).
MULTIPROC_DIR_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
#: The Prometheus text exposition format, version 0.0.4.
TEXT_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

_log = logging.getLogger(__name__)
_SCRAPE_ATTEMPTS: Final = 3
#: The name of a supervisor's metric directory: this, its pid, ``-`` and a random part.
_DIR_PREFIX: Final = "openclaw-metrics-"
_SCRAPE_RETRY_S: Final = 0.02
_UNAVAILABLE: Final = ApiError(
    "metrics unavailable, retry shortly", status=503, type="api_error", code="metrics_unavailable",
    headers={"Retry-After": "1"},
)

# Agent runs and upstream calls last from milliseconds to minutes.
_LONG_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_FIRST_TOKEN_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0)
_STORE_BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class UpstreamMetrics(Protocol):
    """Receives the outcome of each upstream provider call."""

    def upstream_finished(self, *, provider: str, duration_s: float, error: str | None) -> None:
        """A call to ``provider`` ended after ``duration_s``; ``error`` is its failure reason, if it failed."""
        ...


class StoreMetrics(Protocol):
    """Receives the duration of each session-store operation."""

    def store_operation(self, *, engine: str, op: str, duration_s: float) -> None:
        """Operation ``op`` (a method name) of the ``engine`` store took ``duration_s``."""
        ...


_REQUESTS_HELP: Final = "HTTP requests answered."
_DURATION_HELP: Final = "Time to answer an HTTP request, to the last byte of a stream."
_FIRST_TOKEN_HELP: Final = "Time from the start of a streamed agent run to its first content or tool call."
_RUNS_HELP: Final = "Agent runs ended."
_TOKENS_HELP: Final = "Tokens used by agent runs."


class _Histogram:
    """A histogram in plain numbers: each bucket's own count (the last one past every bound) and the sum."""

    __slots__ = ("_bounds", "_les", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self._bounds = bounds
        # The ``le`` labels as prometheus-client writes them ("0.005", "1.0", "+Inf").
        self._les = [floatToGoString(bound) for bound in (*bounds, float("inf"))]  # type: ignore[no-untyped-call]
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        """Count ``value`` in the first bucket whose bound is at least it (``le`` is inclusive)."""
        self.counts[bisect.bisect_left(self._bounds, value)] += 1
        self.total += value

    def add_to(self, family: Any, labels: list[str]) -> None:
        """Add this histogram, cumulated as the exposition format wants, to ``family``."""
        counts, total = list(self.counts), self.total
        cumulated: list[tuple[str, float]] = []
        running = 0
        for le, count in zip(self._les, counts, strict=True):
            running += count
            cumulated.append((le, running))
        family.add_metric(labels, cumulated, sum_value=total)


class _Tally:
    """The per-request metrics of a single process, in plain numbers, made into metric families
    when scraped (a ``prometheus-client`` collector).

    Every request updates five or six of them; through ``prometheus-client`` each update takes
    a lock and checks its arguments, which made metrics cost the plugin 4-15% of its CPU. Here
    an update is a dict lookup and an addition. Updates happen on the event loop and a scrape
    renders in a thread, so it reads copies taken with one C call each (atomic under the GIL);
    a histogram's sum and counts may then be one observation apart, never inconsistent beyond that.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[str, _Histogram] = {}
        self.first_tokens: dict[str, _Histogram] = {}
        self.runs: dict[tuple[str, str], int] = {}
        self.tokens: dict[tuple[str, str], int] = {}

    def collect(self) -> Iterator[Metric]:
        """The families, as the registry asks for them at each scrape."""
        requests = CounterMetricFamily("openclaw_http_requests_total", _REQUESTS_HELP, labels=["route", "method", "status"])
        for (route, method, status), count in list(self.requests.items()):
            requests.add_metric([route, method, str(status)], count)
        yield requests
        durations = HistogramMetricFamily("openclaw_http_request_duration_seconds", _DURATION_HELP, labels=["route"])
        for route, histogram in list(self.durations.items()):
            histogram.add_to(durations, [route])
        yield durations
        first = HistogramMetricFamily("openclaw_time_to_first_token_seconds", _FIRST_TOKEN_HELP, labels=["agent"])
        for agent, histogram in list(self.first_tokens.items()):
            histogram.add_to(first, [agent])
        yield first
        runs = CounterMetricFamily("openclaw_agent_runs_total", _RUNS_HELP, labels=["agent", "outcome"])
        for labels, count in list(self.runs.items()):
            runs.add_metric(list(labels), count)
        yield runs
        tokens = CounterMetricFamily("openclaw_tokens_total", _TOKENS_HELP, labels=["agent", "kind"])
        for labels, count in list(self.tokens.items()):
            tokens.add_metric(list(labels), count)
        yield tokens


class PrometheusMetrics:
    """The plugin's and the gateway's metrics on ``prometheus-client``.

    Args:
        registry: where single-process metrics are registered; a fresh registry of their own
            by default (so several gateway apps in one process never collide). In
            multiprocess mode (:data:`MULTIPROC_DIR_ENV` set) the values live in that
            directory's files instead, and :attr:`registry` collects them from there.
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        self.multiprocess_dir = os.environ.get(MULTIPROC_DIR_ENV) or None
        if self.multiprocess_dir is not None:
            #: What a scrape collects.
            self.registry = prometheus_client.CollectorRegistry()
            # prometheus_client.multiprocess has no annotations.
            multiprocess.MultiProcessCollector(self.registry, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
            target = None
        else:
            self.registry = registry if registry is not None else prometheus_client.CollectorRegistry()
            target = self.registry
        p = prometheus_client
        # The per-request metrics: in one process counted in plain numbers (_Tally); with
        # several, prometheus-client's own values, which live in the shared directory's files.
        self._tally: _Tally | None = None
        if self.multiprocess_dir is None:
            self._tally = _Tally()
            self.registry.register(self._tally)
        else:
            self._requests = p.Counter(
                "openclaw_http_requests_total", _REQUESTS_HELP, ["route", "method", "status"], registry=target
            )
            self._request_duration = p.Histogram(
                "openclaw_http_request_duration_seconds", _DURATION_HELP, ["route"], buckets=_LONG_BUCKETS,
                registry=target,
            )
            self._first_token = p.Histogram(
                "openclaw_time_to_first_token_seconds", _FIRST_TOKEN_HELP, ["agent"], buckets=_FIRST_TOKEN_BUCKETS,
                registry=target,
            )
            self._runs = p.Counter("openclaw_agent_runs_total", _RUNS_HELP, ["agent", "outcome"], registry=target)
            self._tokens = p.Counter("openclaw_tokens_total", _TOKENS_HELP, ["agent", "kind"], registry=target)
        self._active_streams = p.Gauge(
            "openclaw_active_streams", "Streamed agent runs in flight.", registry=target, multiprocess_mode="livesum"
        )
        self._in_flight = p.Gauge(
            "openclaw_agent_runs_in_flight", "Agent runs in flight.", registry=target, multiprocess_mode="livesum"
        )
        self._upstream_duration = p.Histogram(
            "openclaw_upstream_request_duration_seconds",
            "Time of an upstream provider call, to the end of its answer.",
            ["provider"],
            buckets=_LONG_BUCKETS,
            registry=target,
        )
        self._upstream_errors = p.Counter(
            "openclaw_upstream_errors_total", "Failed upstream provider calls.", ["provider", "reason"], registry=target
        )
        self._auth_failures = p.Counter(
            "openclaw_auth_failures_total", "Requests refused for a missing or wrong credential.", registry=target
        )
        self._auth_lockouts = p.Counter(
            "openclaw_auth_lockouts_total",
            "Requests refused because their client is locked out after repeated auth failures.",
            registry=target,
        )
        self._replays = p.Counter(
            "openclaw_idempotent_replays_total", "Stored answers replayed for a repeated idempotency key.", registry=target
        )
        self._store_duration = p.Histogram(
            "openclaw_store_operation_duration_seconds",
            "Time of a session-store operation.",
            ["engine", "op"],
            buckets=_STORE_BUCKETS,
            registry=target,
        )
        # labels() validates and locks on every call: each label set's child is looked up once.
        self._children: dict[Hashable, Any] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._token_children: dict[str, tuple[Any, ...]] = {}
        # What is in flight, as plain counts. In one process the gauges read them when scraped,
        # which spares two locked updates per run; in multiprocess mode the gauges must hold
        # the values themselves (in this worker's file), so they are updated as well.
        self._runs_open = 0
        self._streams_open = 0
        self._update_gauges = self.multiprocess_dir is not None
        if not self._update_gauges:
            self._in_flight.set_function(lambda: self._runs_open)
            self._active_streams.set_function(lambda: self._streams_open)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # The plugin's Metrics.

    def request_finished(self, *, route: str, method: str, status: int, duration_s: float) -> None:
        """Count an answered request."""
        key = (route, method, status)
        tally = self._tally
        if tally is not None:
            tally.requests[key] = tally.requests.get(key, 0) + 1
            histogram = tally.durations.get(route)
            if histogram is None:
                histogram = tally.durations[route] = _Histogram(_LONG_BUCKETS)
            histogram.observe(duration_s)
            return
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (
                self._requests.labels(route, method, str(status)),
                self._child(self._request_duration, route),
            )
        children[0].inc()
        children[1].observe(duration_s)

    def run_started(self, *, agent: str, stream: bool) -> None:
        """A run (and, when streamed, a stream) is in flight."""
        self._runs_open += 1
        if stream:
            self._streams_open += 1
        if self._update_gauges:
            self._in_flight.inc()
            if stream:
                self._active_streams.inc()

    def first_token(self, *, agent: str, seconds: float) -> None:
        """Observe a streamed run's time to first token."""
        tally = self._tally
        if tally is not None:
            histogram = tally.first_tokens.get(agent)
            if histogram is None:
                histogram = tally.first_tokens[agent] = _Histogram(_FIRST_TOKEN_BUCKETS)
            histogram.observe(seconds)
            return
        self._child(self._first_token, agent).observe(seconds)

    def tokens_used(self, *, agent: str, prompt: int, completion: int, cached: int) -> None:
        """Count a run's tokens by kind (a kind with none is not touched, though its series exists)."""
        tally = self._tally
        if tally is not None:
            counts = tally.tokens
            for kind, count in zip(TOKEN_KINDS, (prompt, completion, cached), strict=True):
                key = (agent, kind)
                counts[key] = counts.get(key, 0) + count
            return
        children = self._token_children.get(agent)
        if children is None:
            children = self._token_children[agent] = tuple(self._tokens.labels(agent, kind) for kind in TOKEN_KINDS)
        for child, count in zip(children, (prompt, completion, cached), strict=True):
            if count:
                child.inc(count)

    def run_finished(self, *, agent: str, stream: bool, outcome: RunOutcome) -> None:
        """Count an ended run by outcome; it is no longer in flight."""
        self._runs_open -= 1
        if stream:
            self._streams_open -= 1
        if self._update_gauges:
            self._in_flight.dec()
            if stream:
                self._active_streams.dec()
        tally = self._tally
        if tally is not None:
            key = (agent, outcome)
            tally.runs[key] = tally.runs.get(key, 0) + 1
            return
        self._child(self._runs, agent, outcome).inc()

    def auth_failed(self) -> None:
        """Count a refused credential."""
        self._auth_failures.inc()

    def auth_locked_out(self) -> None:
        """Count a request refused during a lockout."""
        self._auth_lockouts.inc()

    def idempotent_replay(self) -> None:
        """Count a replayed answer."""
        self._replays.inc()

    # The gateway's own.

    def upstream_finished(self, *, provider: str, duration_s: float, error: str | None) -> None:
        """Observe an upstream call; count it as an error with its reason when it failed."""
        self._child(self._upstream_duration, provider).observe(duration_s)
        if error is not None:
            self._child(self._upstream_errors, provider, error).inc()

    def store_operation(self, *, engine: str, op: str, duration_s: float) -> None:
        """Observe a session-store operation."""
        self._child(self._store_duration, engine, op).observe(duration_s)

    def exposition(self) -> bytes:
        """Every metric in the text format (blocking: in multiprocess mode it reads every worker's files)."""
        return prometheus_client.generate_latest(self.registry)


def _require_prometheus() -> None:
    if not METRICS_AVAILABLE:
        raise ConfigError(f"gateway.metrics.enabled: the /metrics route needs prometheus-client: {INSTALL_METRICS}")


def prometheus_metrics(config: MetricsConfig) -> PrometheusMetrics | None:
    """The gateway's metrics when ``gateway.metrics.enabled``, else ``None``.

    Raises:
        ConfigError: metrics are enabled but ``prometheus-client`` is not installed.
    """
    if not config.enabled:
        return None
    _require_prometheus()
    return PrometheusMetrics()


def metrics_handler(metrics: PrometheusMetrics) -> Callable[[web.Request], Any]:
    """The ``GET /metrics`` handler.

    Not ``prometheus_client.aiohttp``'s handler: that one renders on the event loop, and in
    multiprocess mode rendering reads every worker's files. Here it runs in a thread.
    """

    async def handler(request: web.Request) -> web.Response:
        for attempt in range(1, _SCRAPE_ATTEMPTS + 1):
            try:
                body = await asyncio.to_thread(metrics.exposition)
            except Exception:
                # A worker that is just starting has created its file but not yet sized it:
                # prometheus-client cannot read it (struct.error) for that instant. Asking again
                # a moment later is enough; a scrape that still fails is a temporary 503.
                if attempt == _SCRAPE_ATTEMPTS:
                    _log.exception("cannot collect the metrics")
                    raise json_error_response(_UNAVAILABLE) from None
                await asyncio.sleep(_SCRAPE_RETRY_S)
            else:
                break
        return web.Response(body=body, headers={"Content-Type": TEXT_CONTENT_TYPE})

    return handler


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def remove_stale_directories(parent: Path) -> list[Path]:
    """Remove the metric directories in ``parent`` that a supervisor killed before it could
    (SIGKILL, a lost host) left behind: ours by name and owner, their supervisor's pid gone.

    Returns:
        The directories removed.
    """
    removed: list[Path] = []
    for path in parent.glob(f"{_DIR_PREFIX}*-*"):
        pid = path.name[len(_DIR_PREFIX):].split("-", 1)[0]
        try:
            if not pid.isdigit() or not path.is_dir() or path.stat().st_uid != os.getuid() or _alive(int(pid)):
                continue
        except OSError:
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@contextlib.contextmanager
def multiprocess_directory() -> Iterator[Path]:
    """A fresh directory for the workers' metric files, in :data:`MULTIPROC_DIR_ENV` while the block runs.

    Set in this (the supervisor's) environment, so every worker spawned in the block inherits
    it; removed afterwards, so the next start counts from zero and never sums a stale file.
    Its name holds the supervisor's pid, so that a later start removes it if this one is killed
    before it can (:func:`remove_stale_directories`).
    """
    parent = Path(tempfile.gettempdir())
    for stale in remove_stale_directories(parent):
        _log.info("removed %s, left by a supervisor that is gone", stale)
    directory = Path(tempfile.mkdtemp(prefix=f"{_DIR_PREFIX}{os.getpid()}-", dir=parent))
    previous = os.environ.get(MULTIPROC_DIR_ENV)
    os.environ[MULTIPROC_DIR_ENV] = str(directory)
    try:
        yield directory
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_DIR_ENV, None)
        else:
            os.environ[MULTIPROC_DIR_ENV] = previous
        shutil.rmtree(directory, ignore_errors=True)


def mark_worker_dead(directory: Path, pid: int) -> None:
    """Drop the live gauges of the reaped worker ``pid`` from ``directory`` (its counters stay)."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


@contextlib.contextmanager
def worker_metrics(config: MetricsConfig) -> Iterator[Callable[[int], None] | None]:
    """The supervisor's part, while it runs: with metrics enabled, a :func:`multiprocess_directory`
    for its workers, and the callback that marks a reaped worker dead; ``None`` otherwise.

    Raises:
        ConfigError: metrics are enabled but ``prometheus-client`` is not installed (said
            once, here, rather than by every worker failing to start).
    """
    if not config.enabled:
        yield None
        return
    _require_prometheus()
    with multiprocess_directory() as directory:
        yield functools.partial(mark_worker_dead, directory)
