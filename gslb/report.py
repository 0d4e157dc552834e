"""What the `gslb` command prints, as text: `check` of a snapshot, `explain` and `status` answers.

Plain functions of data to lines; gslb.cli prints them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gslb.steering.spill import poll_interval

if TYPE_CHECKING:
    from gslb.snapshot import Snapshot


def check_lines(snapshot: Snapshot) -> list[str]:
    """What `gslb check` prints of a snapshot that built: counts, the geo table, each service's
    rankings, DNSSEC and load sources."""
    lines: list[str] = []
    zones = snapshot.zones
    meta = snapshot.geo.metadata
    probes = snapshot.config.probe_addresses
    lines.append(
        f"ok: {len(zones.zones)} zone{'s' if len(zones.zones) != 1 else ''} "
        f"({zones.record_count} records), {len(snapshot.services)} services, "
        f"{len(snapshot.config.datacenters)} data centers; probes contact "
        f"{', '.join(probes) if probes else 'nothing'}; "
        f"geo database {meta.database_type} ({meta.path.name}, built {meta.build_date})"
    )
    table = snapshot.table
    lines.append(
        f"geo table: {len(table.v4)} IPv4 and {len(table.v6)} IPv6 blocks, {len(table.locations)} places, "
        f"{table.seconds:.2f} s{' (from the cache)' if table.cached else ''}"
    )
    for name, ranks in sorted(snapshot.ranks.items()):
        service = snapshot.services[name]
        lines.append(
            f"  {name.to_text()} ({service.policy}): {len(ranks.rankings)} ranking"
            f"{'s' if len(ranks.rankings) != 1 else ''} over {len(ranks.starts4)} IPv4 and "
            f"{len(ranks.starts6)} IPv6 ranges"
        )
    lines += dnssec_lines(snapshot)
    lines += load_lines(snapshot)
    return lines


def load_lines(snapshot: Snapshot) -> list[str]:
    """`gslb check`'s load source lines, saying where an interval was raised to a TTL."""
    lines = []
    for name, datacenter in snapshot.config.datacenters.items():
        source = datacenter.load
        if source is not None:
            interval, ttl = poll_interval(snapshot.config, name)
            raised = (
                f" (raised from {source.interval:g} s to the TTL {ttl} of its services)"
                if interval > source.interval
                else ""
            )
            lines.append(
                f"load: {name} polls {source.kind} {source.url} ({source.metric}) every {interval:g} s{raised}"
            )
    return lines


def dnssec_lines(snapshot: Snapshot) -> list[str]:
    """`gslb check`'s DNSSEC lines: which zones are signed, with which keys, how much ahead."""
    signing = snapshot.signing
    if signing is None:
        return []  # no zone has keys: nothing signed, nothing to say
    lines = []
    for signer in signing.signers.values():
        tags = ", ".join(f"{key.tag} (algorithm {key.algorithm})" for key in signer.keys)
        lines.append(f"dnssec: {signer.zone.origin} signed, key tag{'s' if len(signer.keys) > 1 else ''} {tags}")
    unsigned = [str(origin) for origin, zone in snapshot.zones.zones.items() if signing.signer(zone) is None]
    if unsigned:
        lines.append(f"dnssec: not signed (no keys): {', '.join(sorted(unsigned))}")
    sets = sum(signing.service_sets.values())
    lines.append(
        f"dnssec: {signing.presigned} signatures made ahead in {signing.seconds:.3f} s, {sets} of them "
        f"service answers; valid {snapshot.config.dnssec.validity // 86400} days, signed again after "
        f"{(signing.expiration - signing.refresh - signing.inception) / 86400:g} days"
    )
    for name in signing.first_use:
        lines.append(
            f"dnssec: {name} has more address sets than max_presigned "
            f"({snapshot.config.dnssec.max_presigned}): the rest are signed on first use"
        )
    return lines


def render_explain(result: dict[str, Any]) -> str:
    loc = result["location"]
    place = "/".join(p for p in (loc["country"], loc["subdivision"], loc["continent"]) if p) or "unknown"
    coords = f"({loc['latitude']:.2f}, {loc['longitude']:.2f})" if loc["latitude"] is not None else "(no coordinates)"
    lines = [
        f"{result['name']} {result['qtype']}",
        f"  located by   {result['located_by']}",
        f"  location     {place} {coords}{' ' + loc['city'] if loc['city'] else ''}",
        f"  network      {loc['network'] or '-'} [{loc['source']}]",
    ]
    record = result.get("database_record")
    if record is not None:
        said = ", ".join(str(v) for v in (record["country"] or "no country", record.get("city")) if v)
        radius = f" (within {record['accuracy_radius_km']} km)" if record.get("accuracy_radius_km") else ""
        lines.append(f"  database     {record['network'] or '-'}: {said}{radius}")
    if result["kind"] == "service":
        svc = result["service"]
        lines.append(f"  service      policy {svc['policy']}, answers {svc['answers']}, all down: {svc['all_down']}")
        lines.append("  candidates")
        for c in result["candidates"]:
            distance = f"{c['distance_km']:>6} km" if c["distance_km"] is not None else "       -"
            rank = f"rank {c['rank']}" if c["rank"] is not None else ""
            weight = f"weight {c['weight']:g}" if c["weight"] is not None else ""
            lines.append(
                f"    {c['name']:<10} {'up' if c['up'] else 'DOWN':<5} {distance}  {rank:<7} {weight:<10} {c['note']}"
            )
        lines.append(
            f"  answer       {', '.join(result['answer']) or '(none: NODATA)'}"
            f"{'  SERVFAIL' if result['rcode'] == 'SERVFAIL' else ''}"
        )
        lines.append(f"  ttl          {result['ttl']}")
    else:
        lines.append(f"  static       {result['rcode']}")
        for rr in result["answer"]:
            lines.append(f"    {rr}")
    shared = result.get("cluster")
    if shared is not None and not shared["etcd"]:
        lines.append(
            f"  cluster      {shared['name']}: etcd unreachable ({shared['error']}); health from the state file"
        )
    elif shared is not None:
        lines.append(
            f"  cluster      {shared['name']}: {len(shared['live'])} live instances "
            f"({', '.join(shared['live']) or 'none'}), read from {shared['endpoint']}"
        )
        for name, vote in shared["datacenters"].items():
            seen = ", ".join(f"{i} ({r})" for i, r in vote["reasons"].items()) or "nobody"
            lines.append(f"    {name:<10} seen down by {seen}{'  -> DOWN' if vote['down_by_vote'] else ''}")
    lines.append(f"  ECS scope    /{result['ecs_scope']}")
    lines.append(f"  why          {result['why']}")
    if result.get("spill"):
        lines.append(f"  spill        {result['spill']['why']}")
    return "\n".join(lines)


def drain_where(data: dict[str, Any]) -> str:
    """Where a drain or undrain took effect, with [cluster]."""
    shared = data.get("shared")
    if shared is None:
        return ""
    return (
        " on every instance (through etcd)"
        if shared
        else " on this instance; etcd is unreachable: the others get it once it is back"
    )


def render_status(status: dict[str, Any]) -> str:
    now = status["now"]
    queries = status["queries"]
    lines = [
        f"gslb {status['version']} on {' '.join(status['listen'])}, "
        f"up {_age(now - status['started'])}, "
        f"{queries['per_second']:g} queries/s ({queries['total']} since start), "
        f"reloads {status['reloads']['ok']} ok / {status['reloads']['failed']} failed",
        "",
        f"{'DATA CENTER':<12} {'STATE':<8} {'SINCE':>9}  {'LAST PROBE':<24} {'ANSWERS/S':>9}  REASON",
    ]
    for dc in status["datacenters"]:
        state = "drained" if dc["drained"] else "up" if dc["up"] else "DOWN"
        probe = dc["last_result"] or ("-" if dc["probe"] is None else "no probe yet")
        if dc["last_latency_ms"] is not None:
            probe += f" {dc['last_latency_ms']:.1f} ms"
        since = _age(now - dc["since"]) if dc["since"] else "-"
        drained_vips = [v["address"] for v in dc["vips"] if v["drained"]]
        if drained_vips:
            reason = f"{dc['reason']}; VIPs drained: {', '.join(drained_vips)}"
        else:
            reason = dc["reason"]
        lines.append(f"{dc['name']:<12} {state:<8} {since:>9}  {probe:<24} {dc['answers_per_second']:>9g}  {reason}")
    cluster = status.get("cluster")
    if cluster:
        lines += ["", *render_cluster(cluster, status["datacenters"])]
    lines += ["", f"{'SERVICE':<28} {'POLICY':<9} {'TTL':>5} {'ANSWERS/S':>9}  DATA CENTERS"]
    for svc in status["services"]:
        ttl = f"{svc['ttl_now']}{'*' if svc['degraded'] else ''}"
        lines.append(
            f"{svc['name']:<28} {svc['policy']:<9} {ttl:>5} "
            f"{svc['answers_per_second']:>9g}  {', '.join(svc['datacenters'])}"
        )
    if any(svc["degraded"] for svc in status["services"]):
        lines.append("* ttl_degraded: a member is down")
    if status["reloads"]["last_error"]:
        lines += ["", "last reload failed:", *(f"  {e}" for e in status["reloads"]["last_error"])]
    return "\n".join(lines)


def render_cluster(cluster: dict[str, Any], datacenters: list[dict[str, Any]]) -> list[str]:
    """The [cluster] part of `gslb status`: etcd, the live instances, and who sees what down."""
    etcd = (
        f"etcd at {cluster['endpoint']}"
        if cluster["etcd"]
        else "etcd UNREACHABLE: deciding on this instance's own observations"
    )
    names = ", ".join(f"{i['name']}{' (this one)' if i['self'] else ''}" for i in cluster["instances"])
    lines = [
        f"cluster {cluster['name']} as {cluster['instance']}: {etcd}; {cluster['live']} live "
        f"instance{'s' if cluster['live'] != 1 else ''} ({names}); down when more than "
        f"{cluster['down_quorum']:g} of them see it down"
    ]
    if cluster.get("pending_drains"):
        lines.append(f"  not yet shared: drains of {', '.join(cluster['pending_drains'])}")
    for dc in datacenters:
        vote = dc.get("vote")
        if vote is None:
            continue
        if not vote["voters"]:
            lines.append(f"  {dc['name']:<10} no instance has probed it yet")
            continue
        seen = (
            ", ".join(f"{name} ({o['reason']})" for name, o in dc["observations"].items() if o["state"] == "down")
            or "nobody"
        )
        lines.append(
            f"  {dc['name']:<10} {len(vote['down'])} of {vote['voters']} see it down: {seen}"
            f"{'  -> DOWN' if vote['down_by_vote'] else ''}"
        )
    return lines


def _age(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
