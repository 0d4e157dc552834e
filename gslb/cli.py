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

from gslb import __version__, report
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
    for line in report.check_lines(snapshot):
        print(line)
    return 0


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
    print(report.render_explain(result))
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
    where = report.drain_where(data)
    if args.command == "status":
        print(json.dumps(data, indent=2) if args.json else report.render_status(data))
    elif args.command == "reload":
        print(f"reloaded: {data['zones']} zones, {data['services']} services")
    elif args.command == "drain":
        print(f"{data['drained']}: {'already drained' if data['already'] else 'drained'}{where}")
    else:
        print(f"{data['undrained']}: {'undrained' if data['was_drained'] else 'was not drained'}{where}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
