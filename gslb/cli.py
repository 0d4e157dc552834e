"""The `gslb` command: serve, check, explain, and status/drain/undrain/reload over HTTP.

The only module that prints.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

import dns.exception
import dns.name

from gslb import __version__
from gslb.cluster.votes import check_instance
from gslb.config.model import ClusterConfig
from gslb.dns import keys
from gslb.dns.keys import ALGORITHMS, DEFAULT_ALGORITHM
from gslb.dns.server import DEFAULT_PORT, TCP_IDLE_TIMEOUT, TCP_MAX_CONNECTIONS, UDP_LOOPS, ListenAddress, udp_loop
from gslb.health.state import saved_view
from gslb.health.view import HealthView
from gslb.ops import logs
from gslb.ops.explain import explain_query
from gslb.ops.web import DEFAULT_HTTP, read_token
from gslb.snapshot import Snapshot, SnapshotError, Sources, build
from gslb.steering.spill import poll_interval

log = logging.getLogger("gslb")
STATE_FILE = ".gslb-state.json"  # beside the zones unless --state-file says otherwise


def _sources(args: argparse.Namespace) -> Sources:
    # Absolute, not resolved: a symbolic link re-pointed later (a new geo database, a new
    # zones release) is followed on the next reload.
    zones = Path(os.path.abspath(args.zones))
    config = Path(os.path.abspath(args.config)) if args.config else None
    geodb = Path(os.path.abspath(args.geodb)) if args.geodb else None
    # The compiled geo table is kept beside the state file (by default both beside the zones).
    state_file = getattr(args, "state_file", None)
    cache = Path(os.path.abspath(state_file)).parent if state_file else None
    return Sources(zones, config, geodb, cache)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zones", default="zones", metavar="DIR", help="directory of *.zone files (default: zones/)")
    parser.add_argument("--config", metavar="FILE", help="service config (default: DIR/gslb.toml when it exists)")
    parser.add_argument(
        "--geodb",
        metavar="FILE",
        help="a GeoLite2/GeoIP2/DB-IP .mmdb (default: the embedded GeoLite2-Country 2018 database)",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gslb", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gslb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="answer DNS queries")
    _add_source_args(serve)
    serve.add_argument(
        "--listen",
        action="append",
        metavar="HOST:PORT",
        help=f"address to serve UDP and TCP on, repeatable; [::1]:PORT for IPv6 "
        f"(default: 127.0.0.1:{DEFAULT_PORT}; port 0 picks a free one)",
    )
    serve.add_argument(
        "--state-file",
        metavar="FILE",
        help="where health verdicts are kept across restarts (default: .gslb-state.json beside the zones)",
    )
    serve.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        metavar="N",
        help="processes answering queries, forked by a supervisor that probes and "
        "reloads (default: one per core); 0: one process does everything",
    )
    serve.add_argument(
        "--tcp-idle-timeout",
        type=float,
        default=TCP_IDLE_TIMEOUT,
        metavar="SECONDS",
        help=f"close TCP connections idle this long (default {TCP_IDLE_TIMEOUT:g})",
    )
    serve.add_argument(
        "--tcp-max-connections",
        type=int,
        default=TCP_MAX_CONNECTIONS,
        metavar="N",
        help=f"TCP connections per process; more are closed at once (default {TCP_MAX_CONNECTIONS})",
    )
    serve.add_argument(
        "--udp-loop",
        default="auto",
        choices=UDP_LOOPS,
        help="compiled: batched receive and send with the common query answered in C "
        "(gslb.dns._fastudp, built at install when gcc and python3-dev are there); "
        "python: the pure-Python loop; auto (default): compiled when built",
    )
    serve.add_argument("--no-probes", action="store_true", help="do not probe; every data center is up")
    serve.add_argument(
        "--instance",
        metavar="NAME",
        help="this instance's name in the [cluster] (default: the host name and the first --listen port, host:port)",
    )
    serve.add_argument(
        "--probe-source",
        metavar="ADDRESS",
        help="the local address HTTP, HTTPS and TCP probes are sent from (multi-homed "
        "hosts); targets of the other address family are probed from the default",
    )
    serve.add_argument("--no-watch", action="store_true", help="reload on SIGHUP only, not on file changes")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format",
        default="text",
        choices=["text", "json"],
        help="json: one object per line (ts, level, logger, msg, fields)",
    )
    serve.add_argument(
        "--query-log",
        type=_rate,
        default=0.0,
        metavar="RATE",
        help="log this share of queries with answer, data center and reason "
        "(0: off, the default; 1: every query; 0.01: one in a hundred)",
    )
    _add_http_args(
        serve,
        "serve the status page, /metrics and the admin API on "
        f"(default {DEFAULT_HTTP}; port 0 picks a free one; 'off': none)",
    )

    status = commands.add_parser("status", help="print data center and service health from a running server")
    _add_http_args(status, f"the server's --http address (default {DEFAULT_HTTP})")
    status.add_argument("--json", action="store_true", help="print the JSON of /api/status")
    for verb, what in (
        ("drain", "answer as if NAME were down (reason 'drained') until undrained"),
        ("undrain", "end a drain"),
    ):
        command = commands.add_parser(verb, help=what)
        command.add_argument("name", help="a data center (eu) or one VIP (127.0.2.1)")
        _add_http_args(command, f"the server's --http address (default {DEFAULT_HTTP})")
    reload = commands.add_parser("reload", help="have a running server reload zones and config")
    _add_http_args(reload, f"the server's --http address (default {DEFAULT_HTTP})")

    check = commands.add_parser("check", help="validate zones and config; exit 1 on any problem")
    _add_source_args(check)

    key_commands = commands.add_parser("keys", help="DNSSEC keys: make a zone's key, print its DS")
    key_verbs = key_commands.add_subparsers(dest="verb", required=True)
    generate = key_verbs.add_parser("generate", help="make a combined signing key (CSK) for ZONE")
    generate.add_argument("zone", help="the zone, e.g. example.com")
    generate.add_argument("--algorithm", default=DEFAULT_ALGORITHM, type=str.lower, choices=sorted(ALGORITHMS))
    generate.add_argument("--zones", default="zones", metavar="DIR", help="the zones directory (keys go in DIR/keys/)")
    ds = key_verbs.add_parser("ds", help="print ZONE's DS records, for the parent zone (the registrar)")
    ds.add_argument("zone", help="the zone, e.g. example.com")
    ds.add_argument("--zones", default="zones", metavar="DIR", help="the zones directory (keys in DIR/keys/)")

    explain = commands.add_parser("explain", help="say which answer a client gets, and why")
    _add_source_args(explain)
    explain.add_argument("name", help="the name asked for, e.g. www.example.com")
    who = explain.add_mutually_exclusive_group()
    who.add_argument("--client", metavar="IP", help="the resolver's (or client's) address")
    who.add_argument("--subnet", metavar="CIDR", help="an EDNS Client Subnet, e.g. 192.0.2.0/24")
    explain.add_argument("--qtype", default="A", type=str.upper, choices=["A", "AAAA"])
    explain.add_argument("--json", action="store_true", help="print JSON")
    explain.add_argument(
        "--state-file",
        metavar="FILE",
        help="health verdicts saved by `gslb serve` (default: .gslb-state.json beside "
        "the zones); a running server's own explain is at /api/explain",
    )

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        return _check(args)
    if args.command == "explain":
        return _explain(args)
    if args.command == "keys":
        return _keys(args)
    return _remote(args)


def _keys(args: argparse.Namespace) -> int:
    try:
        zone = dns.name.from_text(args.zone)
    except dns.exception.DNSException as exc:
        print(f"{args.zone}: not a zone name: {exc}", file=sys.stderr)
        return 2
    directory = Path(args.zones)
    try:
        if args.verb == "generate":
            if not directory.is_dir():
                print(f"{directory}: not a directory", file=sys.stderr)
                return 1
            key = keys.generate(directory, zone, args.algorithm)
            print(f"{key.path.with_suffix('.key')}: {zone} DNSKEY 257 (CSK), algorithm {key.algorithm}, tag {key.tag}")
            print(f"{key.path}: the private key (mode 0600)")
            print(f"give the parent zone its DS: gslb keys ds {zone} --zones {directory}")
            return 0
        found = keys.load(directory).get(zone, [])
    except keys.KeyFileError as exc:
        print(exc, file=sys.stderr)
        return 1
    if not found:
        print(f"no keys for {zone} in {keys.directory(directory)}", file=sys.stderr)
        return 1
    for key in found:
        print(f"{zone} 3600 IN DS {key.ds().to_text()}")
    return 0


def _rate(text: str) -> float:
    try:
        rate = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= rate <= 1:
        raise argparse.ArgumentTypeError("a share between 0 and 1")
    return rate


def _add_http_args(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--http", default=DEFAULT_HTTP, metavar="HOST:PORT", help=help_text)
    parser.add_argument(
        "--token-file",
        metavar="FILE",
        help="the admin token's file (default: the GSLB_TOKEN environment "
        "variable); admin actions are refused without a token",
    )


def _token(args: argparse.Namespace) -> str | None:
    """The admin token from --token-file, else $GSLB_TOKEN; None if neither."""
    if args.token_file:
        return read_token(Path(args.token_file))
    return os.environ.get("GSLB_TOKEN", "").strip() or None


def _load(args: argparse.Namespace) -> Snapshot | None:
    try:
        return build(_sources(args))
    except SnapshotError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} found", file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    snapshot = _load(args)
    if snapshot is None:
        return 1
    zones = snapshot.zones
    meta = snapshot.geo.metadata
    probes = snapshot.config.probe_addresses
    print(
        f"ok: {len(zones.zones)} zone{'s' if len(zones.zones) != 1 else ''} "
        f"({zones.record_count} records), {len(snapshot.services)} services, "
        f"{len(snapshot.config.datacenters)} data centers; probes contact "
        f"{', '.join(probes) if probes else 'nothing'}; "
        f"geo database {meta.database_type} ({meta.path.name}, built {meta.build_date})"
    )
    table = snapshot.table
    print(
        f"geo table: {len(table.v4)} IPv4 and {len(table.v6)} IPv6 blocks, {len(table.locations)} places, "
        f"{table.seconds:.2f} s{' (from the cache)' if table.cached else ''}"
    )
    for name, ranks in sorted(snapshot.ranks.items()):
        service = snapshot.services[name]
        print(
            f"  {name.to_text()} ({service.policy}): {len(ranks.rankings)} ranking"
            f"{'s' if len(ranks.rankings) != 1 else ''} over {len(ranks.starts4)} IPv4 and "
            f"{len(ranks.starts6)} IPv6 ranges"
        )
    for line in _dnssec_lines(snapshot):
        print(line)
    for line in _load_lines(snapshot):
        print(line)
    return 0


def _load_lines(snapshot: Snapshot) -> list[str]:
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


def _dnssec_lines(snapshot: Snapshot) -> list[str]:
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


def _serve(args: argparse.Namespace) -> int:
    from gslb.app import serve
    from gslb.control import Options

    logs.setup(args.log_level, args.log_format)
    try:
        http = None if args.http.lower() in ("off", "none", "") else ListenAddress.parse(args.http)
        token = _token(args)
    except (OSError, ValueError) as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 2
    snapshot = _load(args)
    if snapshot is None:
        return 1
    sources = snapshot.sources
    try:
        listen = [ListenAddress.parse(text) for text in (args.listen or [f"127.0.0.1:{DEFAULT_PORT}"])]
    except ValueError as exc:
        print(f"gslb: --listen: {exc}", file=sys.stderr)
        return 2
    state_file = Path(args.state_file) if args.state_file else sources.zones / STATE_FILE
    if args.workers < 0:
        print("gslb: --workers must be 0 or more", file=sys.stderr)
        return 2
    if args.tcp_max_connections < 1:
        print("gslb: --tcp-max-connections must be 1 or more", file=sys.stderr)
        return 2
    if not args.tcp_idle_timeout > 0:
        print("gslb: --tcp-idle-timeout must be more than 0 seconds", file=sys.stderr)
        return 2
    try:
        udp_loop(args.udp_loop)
    except ValueError as exc:
        print(f"gslb: --udp-loop: {exc}", file=sys.stderr)
        return 2
    try:
        instance = check_instance(args.instance) if args.instance is not None else None
    except ValueError as exc:
        print(f"gslb: --instance: {exc}", file=sys.stderr)
        return 2
    try:
        probe_source = _probe_source(args.probe_source) if args.probe_source else None
    except (OSError, ValueError) as exc:
        print(f"gslb: --probe-source {args.probe_source}: {exc}", file=sys.stderr)
        return 2
    options = Options(
        sources,
        listen,
        state_file=state_file,
        watch=not args.no_watch,
        probes=not args.no_probes,
        workers=args.workers,
        tcp_idle_timeout=args.tcp_idle_timeout,
        tcp_max_connections=args.tcp_max_connections,
        http=http,
        token=token,
        query_log=args.query_log,
        udp_loop=args.udp_loop,
        instance=instance,
        probe_source=probe_source,
    )
    try:
        serve(options, snapshot)
    except OSError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    return 0


def _probe_source(text: str) -> str:
    """An address of this host that probes can be sent from (OSError or ValueError if not)."""
    address = ipaddress.ip_address(text)
    with socket.socket(socket.AF_INET6 if address.version == 6 else socket.AF_INET) as probe:
        try:
            probe.bind((str(address), 0))
        except OSError as exc:
            raise OSError(f"not an address of this host ({exc.strerror or exc})") from None
    return str(address)


def _explain(args: argparse.Namespace) -> int:
    snapshot = _load(args)
    if snapshot is None:
        return 1
    state_file = Path(args.state_file) if args.state_file else snapshot.sources.zones / STATE_FILE
    # The last verdicts the server saved (nothing is probed here; no file: all up).
    health = saved_view(snapshot.config.targets(), state_file)
    shared: dict[str, Any] | None = None
    if snapshot.config.cluster is not None:
        health, shared = _cluster_view(snapshot.config.cluster, health)
    try:
        result = explain_query(snapshot, args.name, args.qtype, args.client, args.subnet, health)
    except ValueError as exc:
        print(f"gslb explain: {exc}", file=sys.stderr)
        return 2
    if shared is not None:
        result["cluster"] = shared
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(render_explain(result))
    return 0


def _cluster_view(config: ClusterConfig, saved: HealthView) -> tuple[HealthView, dict[str, Any]]:
    """With [cluster]: health as the live instances vote it now, read from etcd; the state
    file's verdicts when etcd cannot be reached."""
    from gslb.cluster import member
    from gslb.cluster.etcd import EtcdError
    from gslb.cluster.votes import shared_view

    try:
        endpoint, records, drains = asyncio.run(member.read(config))
    except EtcdError as exc:
        return saved, {"name": config.name, "etcd": False, "error": str(exc)}
    view, votes = shared_view(config, records, drains, saved)
    return view, {
        "name": config.name,
        "etcd": True,
        "endpoint": endpoint,
        "live": sorted(records),
        "datacenters": votes,
    }


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


# -- talking to a running server ------------------------------------------------------------


def _remote(args: argparse.Namespace) -> int:
    import httpx

    try:
        address = ListenAddress.parse(args.http)
        token = _token(args)
    except (OSError, ValueError) as exc:
        print(f"gslb {args.command}: {exc}", file=sys.stderr)
        return 2
    base = f"http://{address}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # A reload may take a while (a big zone, a big geo database); nothing else should.
    timeout = httpx.Timeout(10, read=130 if args.command == "reload" else 10)
    try:
        with httpx.Client(base_url=base, headers=headers, trust_env=False, timeout=timeout) as client:
            if args.command == "status":
                response = client.get("/api/status")
            elif args.command == "reload":
                response = client.post("/api/reload")
            else:
                response = client.post(f"/api/{args.command}", json={"target": args.name})
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        print(f"gslb {args.command}: cannot reach gslb at {base}: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text.strip()}
    if response.status_code != 200:
        print(f"gslb {args.command}: {response.status_code} {data.get('error', '')}".rstrip(), file=sys.stderr)
        for problem in data.get("errors", []):
            print(f"  {problem}", file=sys.stderr)
        return 1
    if args.command == "status":
        print(json.dumps(data, indent=2) if args.json else render_status(data))
    elif args.command == "reload":
        print(f"reloaded: {data['zones']} zones, {data['services']} services")
    elif args.command == "drain":
        print(f"{data['drained']}: {'already drained' if data['already'] else 'drained'}{_where(data)}")
    else:
        print(f"{data['undrained']}: {'undrained' if data['was_drained'] else 'was not drained'}{_where(data)}")
    return 0


def _where(data: dict[str, Any]) -> str:
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


if __name__ == "__main__":
    sys.exit(main())
