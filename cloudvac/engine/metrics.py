"""Prometheus metrics of the engine, on a registry the caller owns (no global state).

``EngineMetrics`` is also the ``model.observer.Observer`` that cloud adapters report to.

Two gauges tell the operator door's ``/healthz`` (which reads them by name from the shared
registry: the web layer does not import the engine) whether each space still cycles:
``LAST_CYCLE`` (when its last successful cycle ended) and ``ENGINE_STARTED`` (the reference
for a space that has not completed one yet)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LAST_CYCLE = "cloudvac_last_cycle_timestamp_seconds"
ENGINE_STARTED = "cloudvac_engine_start_timestamp_seconds"


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry or CollectorRegistry()
        self._requests: dict[str, dict[str, int]] = {}  # space -> kind -> requests so far
        self._requests_lock = threading.Lock()
        r = self.registry
        self.last_cycle = Gauge(LAST_CYCLE, "Unix time the space's last successful cycle "
                                "ended", ["space"], registry=r)
        self.engine_started = Gauge(ENGINE_STARTED, "Unix time the engine started",
                                    registry=r)
        self.engine_started.set(clock())
        self.cloud_request_seconds = Histogram(
            "cloudvac_cloud_request_duration_seconds", "Latency of cloud API requests by "
            "kind (list, limits, create...), whatever their outcome", ["space", "kind"],
            registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.cycles = Counter("cloudvac_cycles", "Cycles run per space by outcome",
                              ["space", "outcome"], registry=r)
        self.cycle_seconds = Histogram("cloudvac_cycle_duration_seconds",
                                       "Wall time of one space cycle", ["space"], registry=r,
                                       buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300))
        self.creates = Counter("cloudvac_creates", "Create requests by outcome",
                               ["space", "machinetype", "outcome"], registry=r)
        self.deletes = Counter("cloudvac_deletes", "Delete requests by rule and outcome",
                               ["space", "machinetype", "reason", "outcome"], registry=r)
        self.cloud_errors = Counter("cloudvac_cloud_errors", "Cloud errors by kind",
                                    ["space", "kind"], registry=r)
        self.machines = Gauge("cloudvac_machines", "Machines by state at the last cycle",
                              ["space", "machinetype", "state"], registry=r)
        self.processors = Gauge("cloudvac_processors", "Processors held at the last cycle",
                                ["space", "machinetype"], registry=r)
        self.aborts = Counter("cloudvac_aborts", "Machine ends that set the backoff",
                              ["space", "machinetype"], registry=r)
        self.cloud_requests = Counter("cloudvac_cloud_requests", "Cloud API requests by kind "
                                      "and outcome", ["space", "kind", "outcome"], registry=r)
        self.auth_calls = Counter("cloudvac_auth_calls", "Tokens fetched from the identity "
                                  "service", ["space"], registry=r)
        self.checkin_calls = Counter("cloudvac_checkin_token_calls", "Requests to the Check-in "
                                     "token endpoint by outcome", ["space", "outcome"],
                                     registry=r)
        self.token_expiry_seconds = Gauge(
            "cloudvac_token_expiry_seconds", "Seconds until the space's token expires "
            "(keystone, or the Check-in access token)", ["space", "kind"], registry=r)
        self.config_errors = Gauge("cloudvac_config_errors", "Configuration issues at the "
                                   "last reload", registry=r)
        self.space_waits = Gauge("cloudvac_space_wait", "Backoff by cause: seconds before "
                                 "the space's credentials are tried again (credentials), "
                                 "before creations resume (breaker); flavors waiting after "
                                 "quota or capacity refusals (flavors)", ["space", "cause"],
                                 registry=r)
        self.store_reopened = Gauge("cloudvac_store_reopened", "Times the store's database "
                                    "file was found removed or replaced under the running "
                                    "manager (every machine then adopted afresh)", registry=r)
        self.space_config_ok = Gauge("cloudvac_space_config_ok", "1 if the space's current "
                                     "configuration validated, 0 if its last good one is used",
                                     ["space"], registry=r)

    def cloud_request(self, space: str, kind: str, outcome: str,
                      seconds: float | None = None) -> None:
        self.cloud_requests.labels(space, kind, outcome).inc()
        with self._requests_lock:
            kinds = self._requests.setdefault(space, {})
            kinds[kind] = kinds.get(kind, 0) + 1
        if seconds is not None:
            self.cloud_request_seconds.labels(space, kind).observe(max(seconds, 0.0))

    def cycle_done(self, space: str, at: float) -> None:
        """``space`` completed a successful cycle at unix time ``at``."""
        self.last_cycle.labels(space).set(at)

    def keystone_auth(self, space: str) -> None:
        self.auth_calls.labels(space).inc()

    def checkin_call(self, space: str, outcome: str) -> None:
        self.checkin_calls.labels(space, outcome).inc()

    def token_expiry(self, space: str, kind: str, seconds_left: float) -> None:
        self.token_expiry_seconds.labels(space, kind).set(seconds_left)

    def requests_of(self, space: str) -> dict[str, int]:
        """Cloud API requests made so far for ``space``, by kind (list, limits, create...):
        ``cloud_requests`` summed over outcomes, kept per space as they are counted (reading
        them back through ``collect()`` walked every space's samples: 46 ms a call at 1,000
        spaces, twice per space cycle)."""
        with self._requests_lock:
            return dict(self._requests.get(space, {}))
