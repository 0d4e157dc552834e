"""Prometheus metrics on the app's own registry, read from the query counters at scrape time.

The query path only bumps plain counters (gslb.dns.state.Counters); everything here runs when
Prometheus scrapes, in the process that serves HTTP, so metrics cost DNS nothing.
"""

from __future__ import annotations

import bisect
import functools
import time
from collections.abc import Iterator

import dns.rcode
import dns.rdatatype
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from gslb import __version__
from gslb.config.model import Target
from gslb.dns.state import LATENCY_BOUNDS, LATENCY_SAMPLE_MASK
from gslb.health.probe import ProbeResult
from gslb.ops.view import ControlView
from gslb.steering.policy import choose

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PROBE_BOUNDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@functools.lru_cache(maxsize=512)
def qtype_name(qtype: int) -> str:
    """ "A", "AAAA", "TYPE65280"; "none" for a reply without a question (header-only FORMERR)."""
    if qtype == 0:
        return "none"
    return dns.rdatatype.to_text(qtype)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=64)
def rcode_name(rcode: int) -> str:
    try:
        return dns.rcode.to_text(rcode)  # type: ignore[arg-type]
    except ValueError:
        return str(rcode)


def probe_result_label(result: str) -> str:
    """A bounded label for a probe result: "ok", "timeout", "status 503", "tls", "error" …"""
    if result.startswith("status "):
        return result
    return result.split(" ", 1)[0].rstrip(":") or "error"


class _Histogram:
    """Bucket counts by upper bound, a sum and a count (the shape of state.Counters' latency)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.buckets = [0] * (len(PROBE_BOUNDS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(PROBE_BOUNDS, seconds)] += 1
        self.sum += seconds
        self.count += 1


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    total = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        total += count
        out.append(("+Inf" if bound == float("inf") else repr(bound), total))
    return out


class Metrics:
    """The registry one server exposes at /metrics, and the probe observations behind it.

    `control` is read at scrape time only (so Control may hand itself in before it is whole)."""

    def __init__(self, control: ControlView) -> None:
        self.control = control
        self.probes: dict[tuple[str, str], int] = {}  # (data center, result label) -> count
        self.probe_latency: dict[str, _Histogram] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    def probed(self, target: Target, result: ProbeResult, lateness: float) -> None:
        """HealthMonitor's on_probe hook: count the result, time the probe."""
        key = (target.name, probe_result_label(result.result))
        self.probes[key] = self.probes.get(key, 0) + 1
        histogram = self.probe_latency.get(target.name)
        if histogram is None:
            histogram = self.probe_latency[target.name] = _Histogram()
        histogram.observe(result.latency)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        control = self.metrics.control
        yield from _queries(control)
        yield from _health(control, self.metrics)
        yield from _load(control)
        yield from _dnssec(control)
        yield from _cluster(control)
        yield from _process(control)


def _queries(control: ControlView) -> Iterator[Metric]:
    counters = control.counters()
    queries = CounterMetricFamily(
        "gslb_dns_queries",
        "DNS replies sent, by transport, query type and response code.",
        labels=["transport", "qtype", "rcode"],
    )
    refused = formerr = 0
    for (tcp, qtype, rcode), count in sorted(counters.by_key.items()):
        queries.add_metric(["tcp" if tcp else "udp", qtype_name(qtype), rcode_name(rcode)], count)
        if rcode == dns.rcode.REFUSED:
            refused += count
        elif rcode == dns.rcode.FORMERR:
            formerr += count
    yield queries
    answers = CounterMetricFamily(
        "gslb_dns_answers",
        "Service answers, by service and the (first) data center answered.",
        labels=["service", "datacenter"],
    )
    for (service, datacenter), count in sorted(counters.by_answer.items()):
        answers.add_metric([service, datacenter or "none"], count)
    yield answers
    path = CounterMetricFamily(
        "gslb_dns_path", "Queries by answer path: fast (cached reply parts) or general.", labels=["path"]
    )
    path.add_metric(["fast"], counters.fast)
    path.add_metric(["general"], counters.general)
    yield path
    total = counters.fast + counters.general
    yield GaugeMetricFamily(
        "gslb_dns_cache_hit_ratio",
        "Share of all queries since start answered on the fast path from cached reply parts.",
        value=counters.fast / total if total else 0.0,
    )
    yield CounterMetricFamily(
        "gslb_dns_refused", "REFUSED replies (outside our zones, zone transfers, other classes).", value=refused
    )
    yield CounterMetricFamily("gslb_dns_formerr", "FORMERR replies to malformed queries.", value=formerr)
    yield CounterMetricFamily(
        "gslb_dns_truncated", "UDP replies truncated (TC) because they did not fit.", value=counters.truncated
    )
    yield CounterMetricFamily(
        "gslb_dns_dropped", "Queries dropped unanswered (short header, QR set).", value=counters.dropped
    )
    yield CounterMetricFamily(
        "gslb_dns_rrl_limited",
        "UDP replies over the [rrl] rate limit: dropped or slipped (in log_only mode: those that would have been).",
        value=counters.rrl_limited,
    )
    yield CounterMetricFamily(
        "gslb_dns_rrl_slipped",
        "Rate-limited replies sent as a minimal truncated (TC) or BADCOOKIE reply.",
        value=counters.rrl_slipped,
    )
    yield CounterMetricFamily(
        "gslb_dns_errors", "Queries answered SERVFAIL after an unexpected error (logged).", value=counters.servfail
    )
    yield HistogramMetricFamily(
        "gslb_dns_query_duration_seconds",
        f"Time to answer one query, from bytes in to bytes out; one query in {LATENCY_SAMPLE_MASK + 1} is timed.",
        buckets=_cumulative(LATENCY_BOUNDS, counters.latency_buckets),
        sum_value=counters.latency_sum,
    )


def _health(control: ControlView, metrics: Metrics) -> Iterator[Metric]:
    view = control.monitor.view
    now = time.time()
    datacenters = control.snapshot.config.datacenters
    up = GaugeMetricFamily(
        "gslb_datacenter_up", "1 while the data center is healthy, 0 while down or drained.", labels=["datacenter"]
    )
    drained = GaugeMetricFamily(
        "gslb_datacenter_drained", "1 while an operator has drained the data center.", labels=["datacenter"]
    )
    since = GaugeMetricFamily(
        "gslb_datacenter_state_since_timestamp_seconds",
        "When the data center's health state last changed (Unix time).",
        labels=["datacenter"],
    )
    age = GaugeMetricFamily(
        "gslb_datacenter_state_age_seconds",
        "Seconds since the data center's health state last changed.",
        labels=["datacenter"],
    )
    vips = GaugeMetricFamily(
        "gslb_vip_drained", "1 while an operator has drained the VIP.", labels=["datacenter", "vip"]
    )
    for name, datacenter in datacenters.items():
        status = view.status(name)
        up.add_metric([name], 1.0 if view.is_up(name) else 0.0)
        drained.add_metric([name], 1.0 if status is not None and status.drained else 0.0)
        if status is not None:
            since.add_metric([name], status.since)
            age.add_metric([name], max(0.0, now - status.since))
        for vip in datacenter.vips:
            vips.add_metric([name, str(vip)], 0.0 if view.is_up(str(vip)) else 1.0)
    yield from (up, drained, since, age, vips)
    ttl = GaugeMetricFamily(
        "gslb_service_ttl_seconds",
        "The TTL answered now: ttl, or ttl_degraded while a member is down.",
        labels=["service"],
    )
    default = control.snapshot.locate(None)
    for service in control.snapshot.config.services.values():
        ttl.add_metric([service.name], choose(service, datacenters, default, view, 4).ttl)
    yield ttl
    probes = CounterMetricFamily(
        "gslb_probes", "Health probes, by data center and result.", labels=["datacenter", "result"]
    )
    for (name, result), count in sorted(metrics.probes.items()):
        probes.add_metric([name, result], count)
    yield probes
    latency = HistogramMetricFamily(
        "gslb_probe_duration_seconds", "Time one health probe took, by data center.", labels=["datacenter"]
    )
    for name, histogram in sorted(metrics.probe_latency.items()):
        latency.add_metric([name], _cumulative(PROBE_BOUNDS, histogram.buckets), histogram.sum)
    yield latency


def _load(control: ControlView) -> Iterator[Metric]:
    """Load feedback (gslb.health.load): each data center's load, its target, the share spilled."""
    load = GaugeMetricFamily(
        "gslb_datacenter_load",
        "The load the data center's load source reports (its metric, e.g. requests a second); absent without data.",
        labels=["datacenter", "metric"],
    )
    target = GaugeMetricFamily(
        "gslb_datacenter_load_target", "The load above which the data center spills clients.", labels=["datacenter"]
    )
    ratio = GaugeMetricFamily(
        "gslb_datacenter_spill_ratio",
        "Share of the data center's clients sent to their next choice (0 to 1).",
        labels=["datacenter"],
    )
    for name, status in sorted(control.load.status().items()):
        if status["load"] is not None:
            load.add_metric([name, status["metric"]], status["load"])
        if status["target"] is not None:
            target.add_metric([name], status["target"])
        ratio.add_metric([name], status["share"])
    yield from (load, target, ratio)


def _dnssec(control: ControlView) -> Iterator[Metric]:
    """Signed zones (gslb.dns.dnssec): when the signatures served expire and are made again, the keys."""
    signing = control.snapshot.signing
    if signing is None:
        return  # no zone has keys
    expiration = GaugeMetricFamily(
        "gslb_dnssec_signature_expiration_seconds",
        "When the signatures served for the zone expire (Unix time); alert well before it.",
        labels=["zone"],
    )
    due = GaugeMetricFamily(
        "gslb_dnssec_resign_due_seconds",
        "When the zone's signatures are made again in the background (Unix time).",
        labels=["zone"],
    )
    keys = GaugeMetricFamily(
        "gslb_dnssec_key_info",
        "Always 1: each key that signs the zone, by tag and algorithm.",
        labels=["zone", "tag", "algorithm"],
    )
    for signer in sorted(signing.signers.values(), key=lambda signer: signer.zone.origin):
        zone = signer.zone.origin.to_text()
        expiration.add_metric([zone], signer.expiration)
        due.add_metric([zone], signing.due)
        for key in signer.keys:
            keys.add_metric([zone, str(key.tag), str(key.algorithm)], 1.0)
    yield from (expiration, due, keys)
    yield GaugeMetricFamily(
        "gslb_dnssec_signatures_ahead", "Signatures made ahead for the snapshot served.", value=signing.presigned
    )


def _cluster(control: ControlView) -> Iterator[Metric]:
    """[cluster]: etcd reachable or not, the live instances, and how they see each data center."""
    cluster = control.cluster
    if cluster is None:
        return
    yield GaugeMetricFamily(
        "gslb_cluster_etcd_up",
        "1 while etcd is reachable and the vote is shared; 0: this instance's own view.",
        value=1.0 if cluster.etcd_up else 0.0,
    )
    yield GaugeMetricFamily(
        "gslb_cluster_live_instances",
        "Instances whose etcd lease is alive, this one included (1 without etcd).",
        value=1 + len(cluster.peers),
    )
    observations = GaugeMetricFamily(
        "gslb_cluster_observations",
        "Live instances that observe the data center up or down (counted in the vote).",
        labels=["datacenter", "state"],
    )
    down = GaugeMetricFamily(
        "gslb_cluster_down_by_vote",
        "1 while more than down_quorum of the live instances see the data center down.",
        labels=["datacenter"],
    )
    for name, vote in sorted(cluster.votes.items()):
        observations.add_metric([name, "up"], len(vote.up))
        observations.add_metric([name, "down"], len(vote.down))
        down.add_metric([name], 1.0 if vote.is_down else 0.0)
    yield observations
    yield down


def _process(control: ControlView) -> Iterator[Metric]:
    reloads = CounterMetricFamily("gslb_reloads", "Reloads of zones and config, by result.", labels=["result"])
    for result, count in sorted(control.reloads.items()):
        reloads.add_metric([result], count)
    yield reloads
    yield GaugeMetricFamily(
        "gslb_snapshot_loaded_timestamp_seconds",
        "When the zones and config now served were loaded (Unix time).",
        value=control.snapshot.loaded_at,
    )
    yield GaugeMetricFamily("gslb_start_time_seconds", "When this server started (Unix time).", value=control.started)
    yield GaugeMetricFamily(
        "gslb_workers", "Processes answering DNS queries.", value=max(control.options.workers, 1)
    )  # 0: the one process itself
    info = GaugeMetricFamily("gslb_build_info", "Always 1; the version as a label.", labels=["version"])
    info.add_metric([__version__], 1.0)
    yield info
