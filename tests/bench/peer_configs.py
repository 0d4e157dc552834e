"""Configurations for the servers run.py compares: the same zone, example.test, everywhere.

Adapted from the team's reference configs in shared/peers/ (gdnsd, PowerDNS with LUA
records, PowerDNS with the geoip backend, Knot with mod-geoip).  Differences from those:

* no health checks on any server (throughput runs): gdnsd's resource uses the built-in
  ``up`` service type, pdns's LUA records only test the continent, and gslb runs with
  ``--no-probes`` and no ``check`` on its data centers.  Nothing ever probes a VIP.
* the ECS test networks are public ranges (see build_mmdb.py), the same for every server.

The policy of ``www.example.test`` (TTL 30) on every server, by the client's continent:
NA, SA -> us; EU, AF -> eu; AS -> ap; OC -> ap; unknown -> us
(preference lists us,eu,ap / eu,us,ap / ap,eu,us / ap,us,eu; only the first matters while
every data center is up).
"""

from __future__ import annotations

import shutil
from pathlib import Path

SOA = "ns1.example.test. hostmaster.example.test. 2026112501 7200 1800 259200 300"

VIPS = {
    "us": ("192.0.2.1", "2001:db8:100::1"),
    "eu": ("198.51.100.1", "2001:db8:200::1"),
    "ap": ("203.0.113.1", "2001:db8:300::1"),
}
DC_PLACE = {
    "us": ("US", "NA", 39.04, -77.49),
    "eu": ("DE", "EU", 50.11, 8.68),
    "ap": ("JP", "AS", 35.69, 139.69),
}
ORDER = {
    "NA": ["us", "eu", "ap"],
    "SA": ["us", "eu", "ap"],
    "EU": ["eu", "us", "ap"],
    "AF": ["eu", "us", "ap"],
    "AS": ["ap", "eu", "us"],
    "OC": ["ap", "us", "eu"],
}
DEFAULT_ORDER = ["us", "eu", "ap"]

STATIC_ZONE = f"""$ORIGIN example.test.
$TTL 300
@        IN SOA  {SOA}
@        IN NS   ns1
ns1      IN A    127.0.0.1
static   IN A    192.0.2.10
static   IN AAAA 2001:db8::10
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------- gdnsd
def _gdnsd_options(port: int, base: Path, extra: str = "") -> str:
    """gdnsd's options: one UDP and one TCP thread on 127.0.0.1:port, ECS on, dirs under base."""
    return f"""options => {{{extra}
  listen => [ 127.0.0.1:{port} ]
  udp_threads => 1
  tcp_threads => 1
  edns_client_subnet => true
  run_dir => {base}/run
  state_dir => {base}/state
}}"""


def _gdnsd_dcmap() -> str:
    return "\n".join(
        f"          {dc} => {{ addrs_v4 => [ {v4} ], addrs_v6 => [ {v6} ] }}" for dc, (v4, v6) in VIPS.items()
    )


def gdnsd(run: Path, port: int, mmdb: Path, extra_zone: Path | None = None) -> list[str]:
    etc = run / "gdnsd" / "etc"
    (run / "gdnsd" / "run").mkdir(parents=True, exist_ok=True)
    (run / "gdnsd" / "state").mkdir(parents=True, exist_ok=True)
    (etc / "geoip").mkdir(parents=True, exist_ok=True)
    (etc / "geoip" / "test-city.mmdb").write_bytes(mmdb.read_bytes())
    geomap = "\n".join(f"          {cont} => [ {', '.join(order)} ]" for cont, order in ORDER.items())
    write(
        etc / "config",
        f"""# written by tests/bench/run.py
{_gdnsd_options(port, run / "gdnsd")}
plugins => {{
  geoip => {{
    maps => {{
      geo_map => {{
        geoip2_db => test-city.mmdb
        datacenters => [ us, eu, ap ]
        map => {{
          default => [ {", ".join(DEFAULT_ORDER)} ]
{geomap}
        }}
      }}
    }}
    resources => {{
      www => {{
        map => geo_map
        # "up": no monitoring at all (the default service type would probe the VIPs)
        service_types => up
        dcmap => {{
{_gdnsd_dcmap()}
        }}
      }}
    }}
  }}
}}
""",
    )
    write(etc / "zones" / "example.test", STATIC_ZONE + "www      30 DYNA geoip!www\n")
    if extra_zone is not None:  # file name = zone name for gdnsd
        shutil.copyfile(extra_zone, etc / "zones" / extra_zone.name.removesuffix(".zone"))
    return ["gdnsd", "-c", str(etc), "start"]


# ------------------------------------------------------------------------- PowerDNS common
def _pdns_common(run_sub: Path, port: int) -> str:
    return f"""local-address=127.0.0.1:{port}
edns-subnet-processing=yes
receiver-threads=1
distributor-threads=1
reuseport=yes
daemon=no
guardian=no
disable-syslog=yes
log-timestamp=yes
loglevel=4
socket-dir={run_sub}
webserver=no
api=no
# no security-status DNS poll: it would resolve a name under powerdns.com via the
# system resolver, i.e. send traffic off this machine
security-poll-suffix=
cache-ttl=20
query-cache-ttl=20
negquery-cache-ttl=60
# the default is 20; the TCP scenario opens 32 connections at once
max-tcp-connections=64
"""


def _lua(qtype: str) -> str:
    fam = 0 if qtype == "A" else 1
    first = {cont: VIPS[order[0]][fam] for cont, order in ORDER.items()}
    return (
        f"\";if continent({{'EU','AF'}}) then return '{first['EU']}' "
        f"elseif continent({{'AS','OC'}}) then return '{first['AS']}' "
        f"else return '{VIPS[DEFAULT_ORDER[0]][fam]}' end\""
    )


def pdns_lua(run: Path, port: int, mmdb: Path, extra_zone: Path | None = None) -> list[str]:
    d = run / "pdns-lua"
    d.mkdir(parents=True, exist_ok=True)
    (d / "test-city.mmdb").write_bytes(mmdb.read_bytes())
    write(
        d / "example.test.zone",
        STATIC_ZONE + f"www      30 IN LUA A    {_lua('A')}\n" + f"www      30 IN LUA AAAA {_lua('AAAA')}\n",
    )
    extra = (
        f'zone "{extra_zone.name.removesuffix(".zone")}" {{ type master; file "{extra_zone}"; }};\n'
        if extra_zone is not None
        else ""
    )
    write(
        d / "named.conf",
        f'options {{ directory "{d}"; }};\n'
        f'zone "example.test" {{ type master; file "{d}/example.test.zone"; }};\n' + extra,
    )
    # The geoip backend serves no zone; it is launched so LUA's continent() can read the DB.
    write(d / "geoip-zones.yaml", "domains: []\n")
    write(
        d / "pdns.conf",
        f"""# written by tests/bench/run.py: bind backend + LUA records
launch=bind,geoip
bind-config={d}/named.conf
geoip-database-files=mmdb:{d}/test-city.mmdb
geoip-zones-file={d}/geoip-zones.yaml
enable-lua-records=yes
"""
        + _pdns_common(d, port),
    )
    return ["pdns_server", f"--config-dir={d}"]


def pdns_geo(run: Path, port: int, mmdb: Path) -> list[str]:
    d = run / "pdns-geo"
    d.mkdir(parents=True, exist_ok=True)
    (d / "test-city.mmdb").write_bytes(mmdb.read_bytes())

    def rrs(dc: str) -> str:
        v4, v6 = VIPS[dc]
        return f'      - a: {{ content: {v4}, ttl: 30 }}\n      - aaaa: {{ content: "{v6}", ttl: 30 }}\n'

    conts = "".join(f"    {cont.lower()}.www.example.test:\n{rrs(order[0])}" for cont, order in ORDER.items())
    write(
        d / "example.test.yaml",
        f"""# written by tests/bench/run.py: geoip backend, %cn service
domains:
- domain: example.test
  ttl: 300
  records:
    example.test:
      - soa: {SOA.replace(".example.test.", ".example.test")}
      - ns: ns1.example.test
    ns1.example.test:
      - a: 127.0.0.1
    static.example.test:
      - a: 192.0.2.10
      - aaaa: 2001:db8::10
{conts}    default.www.example.test:
{rrs(DEFAULT_ORDER[0])}  services:
    www.example.test: [ '%cn.www.example.test', 'default.www.example.test' ]
""",
    )
    write(
        d / "pdns.conf",
        f"""# written by tests/bench/run.py: geoip backend only
launch=geoip
geoip-database-files=mmdb:{d}/test-city.mmdb
geoip-zones-file={d}/example.test.yaml
"""
        + _pdns_common(d, port),
    )
    return ["pdns_server", f"--config-dir={d}"]


# ----------------------------------------------------------------------------------- knot
def knot(run: Path, port: int, mmdb: Path, extra_zone: Path | None = None) -> list[str]:
    d = run / "knot"
    (d / "db").mkdir(parents=True, exist_ok=True)
    (d / "zones").mkdir(parents=True, exist_ok=True)
    (d / "test-city.mmdb").write_bytes(mmdb.read_bytes())
    us4, us6 = VIPS[DEFAULT_ORDER[0]]
    # The zone's own www records are the answer for clients of unknown location.
    write(d / "zones" / "example.test.zone", STATIC_ZONE + f"www  30  A    {us4}\nwww  30  AAAA {us6}\n")
    geo = "".join(
        f'  - geo: "{cont}"\n    A: {VIPS[order[0]][0]}\n    AAAA: {VIPS[order[0]][1]}\n'
        for cont, order in ORDER.items()
    )
    write(d / "geo.conf", "www.example.test:\n" + geo)
    extra = ""
    if extra_zone is not None:
        shutil.copyfile(extra_zone, d / "zones" / extra_zone.name)
        extra = f"  - domain: {extra_zone.name.removesuffix('.zone')}\n"
    write(
        d / "knot.conf",
        f"""# written by tests/bench/run.py
server:
    rundir: "{d}"
    listen: 127.0.0.1@{port}
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
    # without this, mod-geoip ignores ECS and uses the source address
    edns-client-subnet: on
database:
    storage: "{d}/db"
log:
  - target: stderr
    any: info
mod-geoip:
  - id: geo
    config-file: "{d}/geo.conf"
    ttl: 30
    mode: geodb
    geodb-file: "{d}/test-city.mmdb"
    geodb-key: [ continent/code ]
template:
  - id: default
    storage: "{d}/zones"
    file: "%s.zone"
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
zone:
  - domain: example.test
    module: mod-geoip/geo
"""
        + extra,
    )
    return ["knotd", "-c", str(d / "knot.conf")]


# ----------------------------------------------------------------------------------- gslb
def gslb_zones(zones: Path) -> Path:
    """zones/example.test.zone + gslb.toml: the www service as a continent map ("geo")."""
    write(zones / "example.test.zone", STATIC_ZONE)
    dcs = "".join(
        f'[datacenters.{dc}]\nvips = ["{VIPS[dc][0]}", "{VIPS[dc][1]}"]\n'
        f'country = "{c}"\ncontinent = "{k}"\nlatitude = {lat}\nlongitude = {lon}\n\n'
        for dc, (c, k, lat, lon) in DC_PLACE.items()
    )

    def toml_list(names: list[str]) -> str:
        return "[" + ", ".join(f'"{x}"' for x in names) + "]"

    rules = "".join(
        f'    {{ match = "continent:{cont}", order = {toml_list(order)} }},\n' for cont, order in ORDER.items()
    )
    default = ", ".join(f'"{x}"' for x in DEFAULT_ORDER)
    write(
        zones / "gslb.toml",
        f"""# written by tests/bench/run.py
# No checks on any data center: nothing is probed (the server also runs with --no-probes).
[geo]
no_ecs = "resolver"
default = {{ country = "US", continent = "NA", latitude = 39.04, longitude = -77.49 }}

{dcs}[services."www.example.test."]
datacenters = ["us", "eu", "ap"]
policy = "geo"
ttl = 30
map = [
{rules}]
default = [{default}]
""",
    )
    return zones


# ------------------------------------------------------ the never-repeating stream (stream.py)
# The same service on gdnsd and gslb: www.example.com, "nearest" by great-circle distance
# from the client's location in GeoLite2-City to the data centers' coordinates (DC_PLACE).
NEAREST_ZONE = "example.com"
NEAREST_STATIC = f"""$ORIGIN {NEAREST_ZONE}.
$TTL 300
@        IN SOA  ns1.{NEAREST_ZONE}. hostmaster.{NEAREST_ZONE}. 2026120101 7200 1800 259200 300
@        IN NS   ns1
ns1      IN A    127.0.0.1
"""


# the maximum gdnsd takes: with the OS default (208 KiB) it drops bursts of the batched sender
GDNSD_RCVBUF = "\n  udp_rcvbuf => 1048576"


def gdnsd_nearest(run: Path, port: int, mmdb: Path) -> list[str]:
    """gdnsd: geoip plugin, a map with auto_dc_coords (nearest by coordinates), no monitoring.

    A data center's verdict is flipped through ``state/admin_state`` (``geoip/www/DC =>
    DOWN``), which gdnsd watches and applies at once; see :func:`gdnsd_admin_state`.
    """
    base = run / "gdnsd-nearest"
    etc = base / "etc"
    for sub in ("run", "state"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    (etc / "geoip").mkdir(parents=True, exist_ok=True)
    (base / "state" / "admin_state").write_text("")
    db = etc / "geoip" / mmdb.name
    db.unlink(missing_ok=True)
    db.symlink_to(mmdb.resolve())
    coords = "\n".join(f"          {dc} => [ {lat}, {lon} ]" for dc, (_c, _k, lat, lon) in DC_PLACE.items())
    write(
        etc / "config",
        f"""# written by tests/bench/stream_bench.py
{_gdnsd_options(port, base, GDNSD_RCVBUF)}
plugins => {{
  geoip => {{
    maps => {{
      nearest => {{
        geoip2_db => {mmdb.name}
        datacenters => [ {", ".join(DC_PLACE)} ]
        auto_dc_coords => {{
{coords}
        }}
      }}
    }}
    resources => {{
      www => {{
        map => nearest
        service_types => up
        dcmap => {{
{_gdnsd_dcmap()}
        }}
      }}
    }}
  }}
}}
""",
    )
    write(etc / "zones" / NEAREST_ZONE, NEAREST_STATIC + "www      30 DYNA geoip!www\n")
    return ["gdnsd", "-c", str(etc), "start"]


def gdnsd_admin_state(run: Path, down: list[str]) -> None:
    """Force these data centers of www down in gdnsd (an empty list: all back to monitored)."""
    path = run / "gdnsd-nearest" / "state" / "admin_state"
    tmp = path.with_name(".admin_state.tmp")
    tmp.write_text("".join(f"geoip/www/{dc} => DOWN\n" for dc in down))
    tmp.replace(path)


def gslb_nearest(zones: Path, probe_ports: dict[str, int]) -> Path:
    """zones/example.com.zone + gslb.toml: www.example.com, policy nearest, real probes.

    Every data center has an HTTP check on 127.0.0.1:probe_ports[dc] (a server the benchmark
    runs), probed every 0.5 s; two failures mark it down, one success up again: gslb runs in
    its default mode, with the prober, and a toggled endpoint flips the verdict within about
    1 s (down) or 0.5 s (up).  fall = 2 because the endpoints share the client's busy core, so
    one reply can be late.
    """
    write(zones / f"{NEAREST_ZONE}.zone", NEAREST_STATIC)
    checks = "".join(
        f'[checks.{dc}]\nkind = "http"\nport = {probe_ports[dc]}\npath = "/health"\n'
        "interval = 0.5\ntimeout = 0.45\nfall = 2\nrise = 1\njitter = 0\n\n"
        for dc in DC_PLACE
    )
    dcs = "".join(
        f'[datacenters.{dc}]\nvips = ["{VIPS[dc][0]}", "{VIPS[dc][1]}"]\n'
        f'country = "{c}"\ncontinent = "{k}"\nlatitude = {lat}\nlongitude = {lon}\n'
        f'check = "{dc}"\nprobe = "127.0.0.1"\n\n'
        for dc, (c, k, lat, lon) in DC_PLACE.items()
    )
    us = DC_PLACE["us"]
    write(
        zones / "gslb.toml",
        f"""# written by tests/bench/stream_bench.py
[geo]
default = {{ country = "{us[0]}", continent = "{us[1]}", latitude = {us[2]}, longitude = {us[3]} }}

{checks}{dcs}[services."www.{NEAREST_ZONE}."]
datacenters = [{", ".join(f'"{dc}"' for dc in DC_PLACE)}]
policy = "nearest"
ttl = 30
""",
    )
    return zones
