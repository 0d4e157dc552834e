"""The `gslb` command: serve, check, explain. The only module that prints."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from gslb import __version__
from gslb.explain import explain_query
from gslb.server import DEFAULT_PORT, TCP_IDLE_TIMEOUT, TCP_MAX_CONNECTIONS, ListenAddress
from gslb.snapshot import Snapshot, SnapshotError, Sources, build

log = logging.getLogger("gslb")


def _sources(args: argparse.Namespace) -> Sources:
    zones = Path(args.zones).resolve()
    config = Path(args.config).resolve() if args.config else None
    geodb = Path(args.geodb).resolve() if args.geodb else None
    return Sources(zones, config, geodb)


def _add_source_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--zones", default="zones", metavar="DIR",
                        help="directory of *.zone files (default: zones/)")
    parser.add_argument("--config", metavar="FILE",
                        help="service config (default: DIR/gslb.toml when it exists)")
    parser.add_argument("--geodb", metavar="FILE",
                        help="a GeoLite2/GeoIP2/DB-IP .mmdb (default: the embedded geodb/ database)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gslb", description=__doc__)
    parser.add_argument("--version", action="version", version=f"gslb {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="answer DNS queries")
    _add_source_args(serve)
    serve.add_argument("--listen", action="append", metavar="HOST:PORT",
                       help=f"address to serve UDP and TCP on, repeatable; [::1]:PORT for IPv6 "
                            f"(default: 127.0.0.1:{DEFAULT_PORT}; port 0 picks a free one)")
    serve.add_argument("--state-file", metavar="FILE",
                       help="where health verdicts are kept across restarts "
                            "(default: .gslb-state.json beside the zones)")
    serve.add_argument("--workers", type=int, default=os.cpu_count() or 1, metavar="N",
                       help="processes answering queries on the same port (SO_REUSEPORT); "
                            "default: one per core. With 1, one process does everything")
    serve.add_argument("--tcp-idle-timeout", type=float, default=TCP_IDLE_TIMEOUT, metavar="SECONDS",
                       help=f"close TCP connections idle this long (default {TCP_IDLE_TIMEOUT:g})")
    serve.add_argument("--tcp-max-connections", type=int, default=TCP_MAX_CONNECTIONS, metavar="N",
                       help=f"TCP connections per process; more are closed at once "
                            f"(default {TCP_MAX_CONNECTIONS})")
    serve.add_argument("--no-probes", action="store_true", help="do not probe; every data center is up")
    serve.add_argument("--no-watch", action="store_true", help="reload on SIGHUP only, not on file changes")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])

    check = commands.add_parser("check", help="validate zones and config; exit 1 on any problem")
    _add_source_args(check)

    explain = commands.add_parser("explain", help="say which answer a client gets, and why")
    _add_source_args(explain)
    explain.add_argument("name", help="the name asked for, e.g. www.example.com")
    who = explain.add_mutually_exclusive_group()
    who.add_argument("--client", metavar="IP", help="the resolver's (or client's) address")
    who.add_argument("--subnet", metavar="CIDR", help="an EDNS Client Subnet, e.g. 192.0.2.0/24")
    explain.add_argument("--qtype", default="A", type=str.upper, choices=["A", "AAAA"])
    explain.add_argument("--json", action="store_true", help="print JSON")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args)
    if args.command == "check":
        return _check(args)
    return _explain(args)


def _load(args: argparse.Namespace) -> Snapshot | None:
    try:
        return build(_sources(args))
    except SnapshotError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        print(f"{len(exc.problems)} problem{'s' if len(exc.problems) != 1 else ''} found",
              file=sys.stderr)
        return None


def _check(args: argparse.Namespace) -> int:
    snapshot = _load(args)
    if snapshot is None:
        return 1
    zones = snapshot.zones
    meta = snapshot.geo.metadata
    probes = snapshot.config.probe_addresses
    print(f"ok: {len(zones.zones)} zone{'s' if len(zones.zones) != 1 else ''} "
          f"({zones.record_count} records), {len(snapshot.services)} services, "
          f"{len(snapshot.config.datacenters)} data centers; probes contact "
          f"{', '.join(probes) if probes else 'nothing'}; geo database {meta.database_type} ({meta.path.name}, built {meta.build_date})")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from gslb.app import Options, serve

    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    snapshot = _load(args)
    if snapshot is None:
        return 1
    sources = snapshot.sources
    try:
        listen = [ListenAddress.parse(text) for text in (args.listen or [f"127.0.0.1:{DEFAULT_PORT}"])]
    except ValueError as exc:
        print(f"gslb: --listen: {exc}", file=sys.stderr)
        return 2
    state_file = Path(args.state_file) if args.state_file else sources.zones / ".gslb-state.json"
    if args.workers < 1:
        print("gslb: --workers must be at least 1", file=sys.stderr)
        return 2
    options = Options(sources, listen, state_file=state_file, watch=not args.no_watch,
                      probes=not args.no_probes, workers=args.workers,
                      tcp_idle_timeout=args.tcp_idle_timeout, tcp_max_connections=args.tcp_max_connections)
    try:
        serve(options, snapshot)
    except OSError as exc:
        print(f"gslb: {exc}", file=sys.stderr)
        return 1
    return 0


def _explain(args: argparse.Namespace) -> int:
    snapshot = _load(args)
    if snapshot is None:
        return 1
    try:
        result = explain_query(snapshot, args.name, args.qtype, args.client, args.subnet)
    except ValueError as exc:
        print(f"gslb explain: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(render_explain(result))
    return 0


def render_explain(result: dict[str, Any]) -> str:
    loc = result["location"]
    place = "/".join(p for p in (loc["country"], loc["subdivision"], loc["continent"]) if p) or "unknown"
    coords = (f"({loc['latitude']:.2f}, {loc['longitude']:.2f})"
              if loc["latitude"] is not None else "(no coordinates)")
    lines = [
        f"{result['name']} {result['qtype']}",
        f"  located by   {result['located_by']}",
        f"  location     {place} {coords}{' ' + loc['city'] if loc['city'] else ''}",
        f"  network      {loc['network'] or '-'} [{loc['source']}]",
    ]
    if result["kind"] == "service":
        svc = result["service"]
        lines.append(f"  service      policy {svc['policy']}, answers {svc['answers']}, "
                     f"all down: {svc['all_down']}")
        lines.append("  candidates")
        for c in result["candidates"]:
            distance = f"{c['distance_km']:>6} km" if c["distance_km"] is not None else "       -"
            rank = f"rank {c['rank']}" if c["rank"] is not None else ""
            weight = f"weight {c['weight']:g}" if c["weight"] is not None else ""
            lines.append(f"    {c['name']:<10} {'up' if c['up'] else 'DOWN':<5} {distance}  "
                         f"{rank:<7} {weight:<10} {c['note']}")
        lines.append(f"  answer       {', '.join(result['answer']) or '(none: NODATA)'}"
                     f"{'  SERVFAIL' if result['rcode'] == 'SERVFAIL' else ''}")
        lines.append(f"  ttl          {result['ttl']}")
    else:
        lines.append(f"  static       {result['rcode']}")
        for rr in result["answer"]:
            lines.append(f"    {rr}")
    lines.append(f"  ECS scope    /{result['ecs_scope']}")
    lines.append(f"  why          {result['why']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
