"""gslb against real GeoDNS servers, side by side on loopback: one command, one run.

    python tests/bench/run.py [--quick] [-l SECONDS] [--reps N] [--servers ...]

Installs what is missing (dnsperf, gdnsd, PowerDNS with the bind and geoip backends, Knot
with mod-geoip: Debian packages; mmdb-writer and maxminddb: pip), builds the test MMDB and
the query files, writes every server's configuration into tests/bench/run/ (git-ignored),
starts gdnsd, PowerDNS (LUA records), PowerDNS (geoip backend), Knot and gslb on 127.0.0.1
with the same zone, checks that they all answer the same, pins the servers to one CPU and
dnsperf to the other, and measures:

* throughput per scenario (dnsperf at its maximum rate), the server's CPU % over its whole
  process tree, QPS per server core, and the ratios gslb / peer;
* latency at a fixed 1,000 qps (average, p50, p99, p99.9 from dnsperf -v);
* lost queries at 80 % of gslb's measured peak;
* for a 100k-record zone: gslb's load time, memory, SIGHUP reload time, and queries lost
  while it reloads under load.

Prints markdown tables and writes results-<time>.{csv,json,md} into the run directory.
Every process it starts is stopped at the end, also on Ctrl-C or an error.  All traffic
goes to 127.0.0.1; the ECS networks in the query files are option bytes only.
See tests/bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import importlib.util
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import make_queries  # noqa: E402
import peer_configs  # noqa: E402

HZ = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")

DEB_PACKAGES = [
    "dnsperf",
    "gdnsd",
    "pdns-server",
    "pdns-backend-bind",
    "pdns-backend-geoip",
    "knot",
    "knot-module-geoip",
]
PY_MODULES = {"mmdb_writer": "mmdb-writer", "maxminddb": "maxminddb", "netaddr": "netaddr"}
PEERS = ["gdnsd", "knot", "pdns-geo", "pdns-lua"]

# name -> (dnsperf args relative to the query dir, rcode every answer must carry)
SCENARIOS: dict[str, tuple[list[str], str]] = {
    "static": (["-d", "static.txt"], "NOERROR"),
    "mix": (["-d", "mix.txt"], "NOERROR"),
    "www-ecs": (["-d", "www.txt", "-E", make_queries.ECS_FIXED_EU], "NOERROR"),
    "mix-ecsvar": (["-B", "-d", "mix-ecs-varied.bin"], "NOERROR"),
    "nxdomain": (["-d", "nxdomain.txt"], "NXDOMAIN"),
    "nx-repeat": (["-d", "nx-repeat.txt"], "NXDOMAIN"),
    "tcp": (["-m", "tcp", "-B", "-d", "mix-ecs-varied.bin"], "NOERROR"),
}
QUICK_SCENARIOS = ["static", "mix-ecsvar", "nxdomain", "tcp"]
# Several client sockets (source ports), as several resolvers would be: SO_REUSEPORT spreads
# queries over gslb's worker processes by source address and port, so with one socket every
# query would reach the same worker.  The same for every server.
UDP_CLIENTS = 8
OPEN_LOOP_OUTSTANDING = 20000  # dnsperf -q for the fixed-rate loss runs
# TCP: gslb closes a connection after 10,000 queries (server.TCP_MAX_QUERIES), and dnsperf
# 2.10 does not reconnect by itself: a long run on one connection stalls with 100 queries
# lost.  So every server gets 32 connections, each of which dnsperf replaces after 9,000
# queries (-O num-queries-per-conn), and the run is time-bounded like the UDP ones.
TCP_CLIENTS = 32
TCP_QUERIES_PER_CONN = 9000
# dnsperf socket buffers (KiB; capped by net.core.rmem_max/wmem_max), so that a busy client
# core does not drop answers in its own receive buffer
CLIENT_BUFFER_KB = 4096

# --------------------------------------------------------------------------- processes


class Procs:
    """Every process this script starts, so that all of them are stopped whatever happens."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.lock = threading.Lock()

    def start(
        self,
        name: str,
        cmd: list[str],
        *,
        log: Path | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdout: Any = None,
    ) -> subprocess.Popen[bytes]:
        out = open(log, "ab") if log is not None else (stdout or subprocess.DEVNULL)  # noqa: SIM115
        p = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT if log is not None else subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
        if log is not None:
            out.close()
        with self.lock:
            self.procs.append((name, p))
        return p

    def stop(self, p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """TERM the process group this script created (leader = p.pid), then KILL what is left."""
        targets = set(group_members(p.pid))
        if p.poll() is None:
            targets.add(p.pid)
        for pid in targets:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (p.poll() is None or group_members(p.pid)):
            time.sleep(0.05)
        for pid in set(group_members(p.pid)) | ({p.pid} if p.poll() is None else set()):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=5)
        with self.lock:
            self.procs = [(n, q) for n, q in self.procs if q is not p]

    def stop_all(self) -> None:
        for _name, p in list(reversed(self.procs)):
            self.stop(p)


PROCS = Procs()


def read_stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'
    return [str(pid), text[text.index("(") + 1 : text.rindex(")")], *text[text.rindex(")") + 2 :].split()]


def all_stats() -> dict[int, list[str]]:
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = read_stat(int(entry))
            if st is not None:
                out[int(entry)] = st
    return out


def group_members(pgid: int) -> list[int]:
    """Live processes in the process group `pgid` (groups this script created)."""
    return [pid for pid, st in all_stats().items() if int(st[4]) == pgid and st[2] != "Z"]


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    stats = all_stats()
    children: dict[int, list[int]] = {}
    for p, st in stats.items():
        children.setdefault(int(st[3]), []).append(p)
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        if p in stats:
            out.append(p)
            todo.extend(children.get(p, []))
    return out


def cpu_ticks(pids: list[int]) -> dict[int, int]:
    out = {}
    for p in pids:
        st = read_stat(p)
        if st is not None:
            out[p] = int(st[13]) + int(st[14])  # utime + stime, all threads
    return out


def status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def pss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def memory(pid: int) -> dict[str, float]:
    pids = tree(pid)
    return {
        "rss_mib": sum(status_kb(p, "VmRSS") for p in pids) / 1024,
        "pss_mib": sum(pss_kb(p) for p in pids) / 1024,
        "hwm_mib": sum(status_kb(p, "VmHWM") for p in pids) / 1024,
        "procs": len(pids),
    }


def affinities(pid: int) -> str:
    cpus = set()
    for p in tree(pid):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    for line in Path(f"/proc/{p}/task/{task}/status").read_text().splitlines():
                        if line.startswith("Cpus_allowed_list:"):
                            cpus.add(line.split()[1])
    return "+".join(sorted(cpus)) or "?"


def pin_tree(pid: int, cpu: int) -> None:
    # Knot pins its workers itself (peers README, pitfall 1): re-pin every thread.
    for p in tree(pid):
        subprocess.run(
            ["taskset", "-a", "-p", "-c", str(cpu), str(p)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )


def cpu_busy() -> dict[int, tuple[int, int]]:
    """Per CPU: (busy jiffies, total jiffies) from /proc/stat."""
    out = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith("cpu") and line[3].isdigit():
            f = line.split()
            vals = [int(x) for x in f[1:9]]
            idle = vals[3] + vals[4]  # idle + iowait
            out[int(f[0][3:])] = (sum(vals) - idle, sum(vals))
    return out


def busy_pct(before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], cpu: int) -> float:
    b0, t0 = before.get(cpu, (0, 0))
    b1, t1 = after.get(cpu, (0, 0))
    return (b1 - b0) * 100 / (t1 - t0) if t1 > t0 else math.nan


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped on the sockets bound to 127.0.0.1:port (receive buffer full)."""
    total = 0
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                f = line.split()
                if int(f[1].rsplit(":", 1)[1], 16) == port:
                    total += int(f[-1])
    return total


def rcvbuf_errors() -> int:
    """All UDP receive-buffer drops on this machine (server, client and anyone else)."""
    lines = [line.split() for line in Path("/proc/net/snmp").read_text().splitlines() if line.startswith("Udp:")]
    return int(lines[1][lines[0].index("RcvbufErrors")])


def cpu_model() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "?")


def load1() -> float:
    return float(Path("/proc/loadavg").read_text().split()[0])


# --------------------------------------------------------------------------- setup


def ensure_packages(install: bool) -> dict[str, str]:
    def installed(pkg: str) -> str | None:
        r = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}\t${Version}", pkg], capture_output=True, text=True, check=False
        )
        if r.returncode == 0 and "install ok installed" in r.stdout:
            return r.stdout.split("\t")[1]
        return None

    missing = [p for p in DEB_PACKAGES if installed(p) is None]
    if missing:
        if not install:
            raise SystemExit(f"missing packages: {' '.join(missing)} (run without --no-install)")
        print(f"installing: {' '.join(missing)}", flush=True)
        apt = ["apt-get", "install", "-y", *missing]
        if os.geteuid() != 0:
            apt = ["sudo", *apt]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(apt, env=env, stdout=subprocess.DEVNULL, check=False, timeout=900).returncode != 0:
            subprocess.run(
                [*apt[: apt.index("install")], "update"], env=env, stdout=subprocess.DEVNULL, check=False, timeout=600
            )
            subprocess.run(apt, env=env, stdout=subprocess.DEVNULL, check=True, timeout=900)
    for tool in ("taskset", "dnsperf", "gdnsd", "pdns_server", "knotd"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} not found after installing packages")
    need = [pip for mod, pip in PY_MODULES.items() if importlib.util.find_spec(mod) is None]
    if need:
        if not install:
            raise SystemExit(f"missing Python packages: {' '.join(need)}")
        print(f"pip installing: {' '.join(need)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *need], check=True, timeout=600)
    return {p: installed(p) or "?" for p in DEB_PACKAGES}


def port_free(port: int) -> bool:
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        with socket.socket(socket.AF_INET, kind) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_ports(n: int, start: int = 5451) -> list[int]:
    out, port = [], start
    while len(out) < n and port < 65000:
        if port_free(port):
            out.append(port)
        port += 1
    return out


def serve_help(src: Path = REPO) -> str:
    """`gslb serve --help` of the gslb source in `src`."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    cmd = [sys.executable, "-m", "gslb", "serve", "--help"]
    return subprocess.run(cmd, cwd=src, env=env, capture_output=True, text=True, check=False, timeout=60).stdout


def gslb_has_workers() -> bool:
    return "--workers" in serve_help()


def git_rev() -> str:
    r = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no", "gslb"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return r.stdout.strip() + ("+uncommitted changes in gslb/" if dirty else "")


# --------------------------------------------------------------------------- DNS checks


def dns_query(
    port: int, name: str, qtype: str, ecs: str | None = None, tcp: bool = False, timeout: float = 2.0
) -> tuple[str, list[str]]:
    import dns.edns
    import dns.message
    import dns.query
    import dns.rcode

    options = []
    if ecs is not None:
        addr, plen = ecs.split("/")
        options.append(dns.edns.ECSOption(addr, int(plen)))
    q = dns.message.make_query(name, qtype, use_edns=0 if options else None, options=options or None)
    q.flags = 0  # no RD, as a resolver asking an authority
    fn = dns.query.tcp if tcp else dns.query.udp
    r = fn(q, "127.0.0.1", port=port, timeout=timeout)
    answers = sorted(rd.to_text() for rrset in r.answer for rd in rrset)
    return dns.rcode.to_text(r.rcode()), answers


US4, US6 = peer_configs.VIPS["us"]
EU4, EU6 = peer_configs.VIPS["eu"]
AP4, AP6 = peer_configs.VIPS["ap"]
CHECKS: list[tuple[str, str, str | None, str, list[str]]] = [
    # name, qtype, ECS, rcode, answers
    ("www.example.test", "A", "1.1.0.0/24", "NOERROR", [US4]),
    ("www.example.test", "A", "2.2.0.0/24", "NOERROR", [EU4]),
    ("www.example.test", "A", "3.3.7.0/24", "NOERROR", [AP4]),
    ("www.example.test", "A", "4.4.0.0/24", "NOERROR", [US4]),
    ("www.example.test", "A", "5.5.0.0/24", "NOERROR", [AP4]),
    ("www.example.test", "A", "6.6.9.0/24", "NOERROR", [EU4]),
    ("www.example.test", "A", "7.7.0.0/24", "NOERROR", [AP4]),
    ("www.example.test", "A", "44.4.4.0/24", "NOERROR", [US4]),  # public, not in the DB
    ("www.example.test", "A", None, "NOERROR", [US4]),  # 127.0.0.1: unknown -> us
    ("www.example.test", "AAAA", "2a02:2:2:100::/56", "NOERROR", [EU6]),
    ("www.example.test", "AAAA", "2400:3:3:ff00::/56", "NOERROR", [AP6]),
    ("www.example.test", "AAAA", "2600:1:1:5500::/56", "NOERROR", [US6]),
    ("static.example.test", "A", None, "NOERROR", ["192.0.2.10"]),
    ("static.example.test", "AAAA", "2.2.0.0/24", "NOERROR", ["2001:db8::10"]),
    ("nx-check-0001.example.test", "A", None, "NXDOMAIN", []),
]


def check_answers(port: int, *, tcp_too: bool = True, timeout: float = 2.0) -> list[str]:
    """The mismatches (empty: every check answered as expected)."""
    bad = []
    for name, qtype, ecs, rcode, want in CHECKS:
        for tcp in (False, True) if tcp_too else (False,):
            try:
                got_rcode, got = dns_query(port, name, qtype, ecs, tcp=tcp, timeout=timeout)
            except Exception as exc:  # timeouts and connection errors are findings too
                bad.append(f"{name} {qtype} ecs={ecs} {'tcp' if tcp else 'udp'}: {type(exc).__name__} {exc}")
                continue
            if got_rcode != rcode or got != sorted(want):
                bad.append(
                    f"{name} {qtype} ecs={ecs} {'tcp' if tcp else 'udp'}: {got_rcode} {got}, expected {rcode} {want}"
                )
    return bad


def wait_answering(port: int, p: subprocess.Popen[bytes], timeout: float, zone: str = "example.test") -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if p.poll() is not None:
            raise RuntimeError(f"exited with status {p.returncode}")
        try:
            rcode, _ = dns_query(port, zone, "SOA", timeout=0.1)
            if rcode == "NOERROR":
                return time.monotonic() - start
        except Exception:
            pass
        time.sleep(0.02)
    raise RuntimeError(f"no answer on port {port} within {timeout:.0f} s")


# --------------------------------------------------------------------------- dnsperf


@dataclass
class Perf:
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    avg_ms: float = math.nan
    max_ms: float = math.nan
    runtime: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    error: str = ""
    percentiles: dict[float, float] = field(default_factory=dict)  # ms, when the sender computed them

    def pct(self, q: float) -> float:
        if q in self.percentiles:
            return self.percentiles[q]
        if not self.latencies:
            return math.nan
        v = sorted(self.latencies)
        return v[max(0, math.ceil(len(v) * q / 100) - 1)] * 1000


def parse_dnsperf(text: str) -> Perf:
    def num(pattern: str, cast: Any = float, default: Any = 0) -> Any:
        m = re.search(pattern, text)
        return cast(m.group(1)) if m else default

    p = Perf(
        sent=num(r"Queries sent:\s+(\d+)", int),
        completed=num(r"Queries completed:\s+(\d+)", int),
        lost=num(r"Queries lost:\s+(\d+)", int),
        qps=num(r"Queries per second:\s+([\d.]+)"),
        avg_ms=num(r"Average Latency \(s\):\s+([\d.]+)", float, math.nan) * 1000,
        max_ms=num(r"Average Latency \(s\):.*max ([\d.]+)\)", float, math.nan) * 1000,
        runtime=num(r"Run time \(s\):\s+([\d.]+)"),
    )
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        p.rcodes = {k: int(v) for k, v in re.findall(r"([A-Z]+) (\d+) \(", m.group(1))}
    for line in text.splitlines():
        if line.startswith("> "):
            with contextlib.suppress(ValueError):
                p.latencies.append(float(line.rsplit(None, 1)[1]))
    if "Queries per second" not in text:
        p.error = "\n".join(line for line in text.splitlines() if not line.startswith("> "))[-800:]
    return p


def parse_blast(text: str) -> Perf:
    """blast.c's "key value" lines."""
    kv = dict(line.split(None, 1) for line in text.splitlines() if " " in line)

    def num(key: str) -> float:
        try:
            return float(kv.get(key, "nan"))
        except ValueError:
            return math.nan

    if "qps" not in kv:
        return Perf(error=text[-800:])
    return Perf(
        sent=int(num("sent")),
        completed=int(num("completed")),
        lost=int(num("lost")),
        qps=num("qps"),
        avg_ms=num("avg_ms"),
        max_ms=num("max_ms"),
        runtime=num("runtime"),
        rcodes={k: int(v) for k, v in (x.split(":") for x in kv.get("rcodes", "").split())},
        percentiles={50: num("p50_ms"), 99: num("p99_ms"), 99.9: num("p999_ms")},
    )


class Bench:
    def __init__(self, args: argparse.Namespace, qdir: Path):
        self.args = args
        self.qdir = qdir
        self.blast_path: Path | None = None  # the compiled blast.c, for send(sender="blast")

    def blast(
        self, port: int, extra: list[str], *, seconds: float | None, rate: int | None = None, outstanding: int = 100
    ) -> Perf:
        """blast.c: batched sends and receives; `extra` names the file (-f) and passes (-n)."""
        assert self.blast_path is not None
        cmd = ["taskset", "-c", str(self.args.client_cpu), str(self.blast_path), "-s", "127.0.0.1"]
        cmd += ["-p", str(port), "-q", str(outstanding), "-c", str(UDP_CLIENTS), "-l", f"{seconds or 60:g}", *extra]
        if rate:
            cmd += ["-Q", str(int(rate))]
        limit = (seconds or 60) + 60
        try:
            r = subprocess.run(cmd, cwd=self.qdir, capture_output=True, text=True, timeout=limit, check=False)
        except subprocess.TimeoutExpired:
            return Perf(error=f"blast did not finish within {limit:.0f} s")
        return parse_blast(r.stdout + r.stderr)

    def dnsperf(
        self,
        port: int,
        extra: list[str],
        *,
        seconds: float | None,
        rate: int | None = None,
        verbose: bool = False,
        during: Any = None,
        outstanding: int = 100,
    ) -> Perf:
        cmd = [
            "taskset",
            "-c",
            str(self.args.client_cpu),
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-q",
            str(outstanding),
            *extra,
        ]
        if "-c" not in extra:
            cmd += ["-c", str(UDP_CLIENTS)]
        cmd += ["-b", str(CLIENT_BUFFER_KB)]
        if seconds is not None:
            cmd += ["-l", f"{seconds:g}"]
        if rate:
            cmd += ["-Q", str(int(rate))]
        if verbose:
            cmd.append("-v")
        p = PROCS.start("dnsperf", cmd, cwd=self.qdir, stdout=subprocess.PIPE)
        worker = None
        if during is not None:
            worker = threading.Thread(target=during, daemon=True)
            worker.start()
        limit = (seconds or 60) * 3 + 60
        try:
            out, err = p.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            PROCS.stop(p)
            return Perf(error=f"dnsperf did not finish within {limit:.0f} s")
        finally:
            if worker is not None:
                worker.join(timeout=30)
        with PROCS.lock:
            PROCS.procs = [(n, q) for n, q in PROCS.procs if q is not p]
        return parse_dnsperf(out.decode(errors="replace") + err.decode(errors="replace"))


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str
    label: str
    port: int
    cmd: list[str]
    log: Path
    cwd: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    ready_s: float = math.nan
    problems: list[str] = field(default_factory=list)
    workers: int | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, cpu: int) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")
        self.started = time.monotonic()
        self.proc = PROCS.start(
            self.name, ["taskset", "-c", str(cpu), *self.cmd], log=self.log, cwd=self.cwd, env=self.env
        )

    def stop(self) -> None:
        if self.proc is not None:
            PROCS.stop(self.proc)
            self.proc = None

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""


def gslb_server(name: str, label: str, port: int, zones: Path, mmdb: Path, run: Path, workers: int | None) -> Server:
    cmd = [
        sys.executable,
        "-m",
        "gslb",
        "serve",
        "--zones",
        str(zones),
        "--geodb",
        str(mmdb),
        "--listen",
        f"127.0.0.1:{port}",
        "--no-probes",
        "--http",
        "off",
        "--state-file",
        str(run / f"{name}.state.json"),
    ]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    s = Server(name, label, port, cmd, run / f"{name}.log", cwd=REPO, env=env)
    s.workers = workers
    return s


# --------------------------------------------------------------------------- measurement


def fmt_k(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v / 1000:.1f}k" if v >= 1000 else f"{v:.0f}"


def fmt(v: float, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


def median(vals: list[float]) -> float:
    v = [x for x in vals if x is not None and not math.isnan(x)]
    return statistics.median(v) if v else math.nan


def save_json_md(base: Path, text: str, **parts: Any) -> None:
    """base.md (the report) and base.json (the parts; NaN written as null, rows row by row)."""

    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and math.isnan(v) else v

    if "rows" in parts:
        parts["rows"] = [{k: clean(v) for k, v in r.items()} for r in parts["rows"]]
    Path(f"{base}.json").write_text(json.dumps(parts, indent=1))
    Path(f"{base}.md").write_text(text + "\n")


class Runner:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.run = args.run_dir
        self.qdir = self.run / "queries"
        self.mmdb = self.run / "test-city.mmdb"
        self.bench = Bench(args, self.qdir)
        self.rows: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.meta: dict[str, Any] = {}
        self.stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.started: list[Server] = []

    def note(self, text: str) -> None:
        print(f"NOTE: {text}", flush=True)
        self.notes.append(text)

    # -- setup ----------------------------------------------------------------------------

    def prepare(self) -> None:
        a = self.args
        versions = ensure_packages(not a.no_install)
        self.run.mkdir(parents=True, exist_ok=True)
        for sub in ("gdnsd", "pdns-lua", "pdns-geo", "knot", "gslb-zones", "bigzone", "queries"):
            shutil.rmtree(self.run / sub, ignore_errors=True)
        import build_mmdb

        build_mmdb.build(self.mmdb)
        make_queries.write_queries(self.qdir)
        self.has_workers = gslb_has_workers()
        import dns.version
        import maxminddb

        self.meta = {
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "host": platform.node(),
            "kernel": platform.release(),
            "cpus_online": os.cpu_count(),
            "cpu_model": cpu_model(),
            "python": platform.python_version(),
            "dnspython": dns.version.version,
            "maxminddb": getattr(maxminddb, "__version__", "?"),
            "packages": versions,
            "gslb_rev": git_rev(),
            "gslb_workers_option": self.has_workers,
            "server_cpu": a.server_cpu,
            "client_cpu": a.client_cpu,
            "duration_s": a.duration,
            "reps": a.reps,
            "quick": a.quick,
            "scenarios": a.scenarios,
            "load1_start": load1(),
        }
        if not self.has_workers:
            self.note("`gslb serve --help` has no --workers option: measured the single-process server only")

    def servers(self) -> list[Server]:
        a = self.args
        want = a.servers
        gslb_variants: list[tuple[str, str, int | None]] = []
        if "gslb" in want:
            gslb_variants.append(
                ("gslb", "gslb (1 worker)" if self.has_workers else "gslb", 1 if self.has_workers else None)
            )
        if "gslb-w2" in want and self.has_workers:
            gslb_variants.append(("gslb-w2", "gslb (--workers 2)", 2))
        peers = [p for p in PEERS if p in want]
        ports = free_ports(len(peers) + len(gslb_variants))
        out: list[Server] = []
        labels = {
            "gdnsd": "gdnsd 3.8 geoip",
            "pdns-lua": "pdns 4.7 LUA records",
            "pdns-geo": "pdns 4.7 geoip backend",
            "knot": "knot 3.2 mod-geoip",
        }
        for name in peers:
            port = ports.pop(0)
            cmd = getattr(peer_configs, name.replace("-", "_"))(self.run, port, self.mmdb)
            out.append(Server(name, labels[name], port, cmd, self.run / f"{name}.log", cwd=self.run))
        zones = peer_configs.gslb_zones(self.run / "gslb-zones")
        for name, label, workers in gslb_variants:
            out.append(gslb_server(name, label, ports.pop(0), zones, self.mmdb, self.run, workers))
        return out

    def start_all(self, servers: list[Server], timeout: float = 60) -> list[Server]:
        for s in servers:
            print(f"starting {s.label} on 127.0.0.1:{s.port}", flush=True)
            s.start(self.args.server_cpu)
        errors: dict[str, str] = {}

        def wait(s: Server) -> None:
            assert s.proc is not None
            try:
                wait_answering(s.port, s.proc, timeout)
                s.ready_s = time.monotonic() - s.started
            except RuntimeError as exc:
                errors[s.name] = str(exc)

        threads = [threading.Thread(target=wait, args=(s,), daemon=True) for s in servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for s in servers:
            if s.name in errors:
                self.note(f"{s.label} did not start: {errors[s.name]}; log: {s.log_text()[-1500:]}")
                s.stop()
        alive = [s for s in servers if s.name not in errors]
        time.sleep(0.5)  # let late worker threads and processes appear before re-pinning
        for s in alive:
            pin_tree(s.pid, self.args.server_cpu)
        return alive

    # -- one measurement ------------------------------------------------------------------

    def measure(
        self,
        s: Server,
        phase: str,
        scenario: str,
        rep: int,
        extra: list[str],
        *,
        seconds: float | None,
        rate: int | None = None,
        verbose: bool = False,
        expect_rcode: str | None = None,
        during: Any = None,
        open_loop: bool = False,
        sender: str = "dnsperf",
        outstanding: int | None = None,
    ) -> dict[str, Any]:
        pids = tree(s.pid)
        ld = load1()
        c0 = cpu_ticks(pids)
        b0 = cpu_busy()
        d0, e0 = udp_drops(s.port), rcvbuf_errors()
        t0 = time.monotonic()
        # open_loop: a fixed rate that dnsperf keeps up even when answers stall (as resolvers
        # do), so a stalled server loses queries instead of silently slowing the client down.
        window = outstanding or (OPEN_LOOP_OUTSTANDING if open_loop else 100)
        if sender == "blast":
            worker = threading.Thread(target=during, daemon=True) if during is not None else None
            if worker is not None:
                worker.start()
            perf = self.bench.blast(s.port, extra, seconds=seconds, rate=rate, outstanding=window)
            if worker is not None:
                worker.join(timeout=30)
        else:
            perf = self.bench.dnsperf(
                s.port, extra, seconds=seconds, rate=rate, verbose=verbose, during=during, outstanding=window
            )
        t1 = time.monotonic()
        b1 = cpu_busy()
        d1, e1 = udp_drops(s.port), rcvbuf_errors()
        c1 = cpu_ticks(tree(s.pid))
        ticks = sum(v - c0.get(p, 0) for p, v in c1.items())
        cpu = ticks / HZ / (t1 - t0) * 100 if t1 > t0 else math.nan
        alive = s.proc is not None and s.proc.poll() is None
        row: dict[str, Any] = {
            "phase": phase,
            "server": s.name,
            "label": s.label,
            "scenario": scenario,
            "rep": rep,
            "rate": rate or "max",
            "qps": round(perf.qps, 1),
            "cpu_pct": round(cpu, 1),
            "qps_per_core": round(perf.qps * 100 / cpu, 1) if cpu >= 5 else math.nan,
            "avg_ms": round(perf.avg_ms, 3),
            "max_ms": round(perf.max_ms, 3),
            "p50_ms": round(perf.pct(50), 3),
            "p99_ms": round(perf.pct(99), 3),
            "p999_ms": round(perf.pct(99.9), 3),
            "asked": int(rate * seconds) if rate and seconds else "",
            "sent": perf.sent,
            "completed": perf.completed,
            "lost": perf.lost,
            # lost queries the kernel dropped at the server's sockets, and UDP buffer drops on
            # the whole machine (the rest were dropped by the client's sockets or elsewhere)
            "srv_drops": d1 - d0,
            "rcvbuf_errors": e1 - e0,
            "rcodes": " ".join(f"{k}:{v}" for k, v in sorted(perf.rcodes.items())),
            # how busy each core was in all (server + everything else on it; dnsperf + the rest):
            # client near 100 % = the client limited the run; server core well above the
            # server's own CPU % = other processes took part of its core
            "client_core_pct": round(busy_pct(b0, b1, self.args.client_cpu), 1),
            "server_core_pct": round(busy_pct(b0, b1, self.args.server_cpu), 1),
            "load1": ld,
            "affinity": affinities(s.pid) if alive else "",
            "wall_s": round(t1 - t0, 2),
            "error": perf.error,
            "alive": alive,
        }
        if perf.error:
            self.note(f"{s.label} {scenario}: dnsperf failed: {perf.error[-300:]}")
        if expect_rcode and perf.rcodes and set(perf.rcodes) != {expect_rcode}:
            self.note(f"{s.label} {scenario}: unexpected response codes {row['rcodes']} (want {expect_rcode})")
        if not alive:
            self.note(f"{s.label} died during {scenario}: {s.log_text()[-1500:]}")
        self.rows.append(row)
        print(
            f"  {phase:8} {s.name:11} {scenario:11} rep {rep}: qps {perf.qps:9.0f}  cpu {cpu:5.1f}%  "
            f"lost {perf.lost:6d}  avg {perf.avg_ms:7.3f} ms  cores c/s {row['client_core_pct']:3.0f}/"
            f"{row['server_core_pct']:3.0f}%  load {ld}  {row['rcodes']}  [{row['affinity']}]",
            flush=True,
        )
        return row

    def scenario_args(self, scenario: str) -> tuple[list[str], str, float | None]:
        extra, rcode = SCENARIOS[scenario]
        seconds: float | None = self.args.duration
        if scenario == "tcp":
            extra = [*extra, "-c", str(TCP_CLIENTS), "-O", f"num-queries-per-conn={TCP_QUERIES_PER_CONN}"]
        return list(extra), rcode, seconds

    def under_load_checker(self, s: Server, scenario: str) -> Any:
        """Spot-check answers while dnsperf hammers the server (timeouts are only counted)."""
        result: dict[str, Any] = {}

        def work() -> None:
            time.sleep(min(1.0, self.args.duration / 3))
            bad = check_answers(s.port, tcp_too=False, timeout=3.0)
            wrong = [b for b in bad if "expected" in b]
            result["wrong"] = wrong
            result["timeouts"] = len(bad) - len(wrong)
            if wrong:
                self.note(f"{s.label} answered WRONGLY under load ({scenario}): {wrong}")

        return work, result

    # -- phases ---------------------------------------------------------------------------

    def warm_up(self, servers: list[Server]) -> None:
        """One untimed pass over each cacheable query file, so the runs measure a warm server.

        nxdomain.txt is left out on purpose: 100,000 random names stand for a random-subdomain
        flood, which no cache of answers helps with.
        """
        for s in servers:
            for scenario in ("static", "mix", "www-ecs", "mix-ecsvar", "nx-repeat"):
                extra, _rcode = SCENARIOS[scenario]
                n = ["-n", "1"] if scenario in ("mix-ecsvar", "nx-repeat") else ["-n", "20"]
                self.bench.dnsperf(s.port, [*extra, *n], seconds=30)

    def matrix(self, servers: list[Server]) -> None:
        a = self.args
        for rep in range(1, a.reps + 1):
            for scenario in a.scenarios:
                extra, rcode, seconds = self.scenario_args(scenario)
                order = servers if rep % 2 else list(reversed(servers))
                for s in order:
                    if s.proc is None or s.proc.poll() is not None:
                        continue
                    work = result = None
                    if scenario == "mix-ecsvar":
                        work, result = self.under_load_checker(s, scenario)
                    row = self.measure(
                        s, "matrix", scenario, rep, extra, seconds=seconds, expect_rcode=rcode, during=work
                    )
                    if result is not None:
                        row["under_load_wrong"] = len(result.get("wrong", []))
                        row["under_load_timeouts"] = result.get("timeouts", 0)

    def latency(self, servers: list[Server]) -> None:
        extra, rcode, _ = self.scenario_args("mix-ecsvar")
        for s in servers:
            if s.proc is None or s.proc.poll() is not None:
                continue
            self.measure(
                s,
                "latency",
                "mix-ecsvar",
                1,
                extra,
                seconds=self.args.latency_seconds,
                rate=1000,
                verbose=True,
                expect_rcode=rcode,
            )

    def peak(self, name: str, scenario: str = "mix-ecsvar") -> float:
        return median(
            [
                r["qps"]
                for r in self.rows
                if r["phase"] == "matrix" and r["server"] == name and r["scenario"] == scenario
            ]
        )

    def lost_at_80(self, servers: list[Server]) -> None:
        extra, rcode, _ = self.scenario_args("mix-ecsvar")
        for s in servers:
            if not s.name.startswith("gslb") or s.proc is None or s.proc.poll() is not None:
                continue
            peak = self.peak(s.name)
            if math.isnan(peak) or peak <= 0:
                continue
            # as the peak was measured (at most 100 queries in flight: dnsperf waits for a slow
            # server), and open loop (up to 20,000 in flight: it keeps sending, as resolvers do)
            for mode, open_loop in (("-q 100", False), (f"-q {OPEN_LOOP_OUTSTANDING}", True)):
                self.measure(
                    s,
                    "lost@80%",
                    mode,
                    1,
                    extra,
                    seconds=self.args.duration,
                    rate=int(peak * 0.8),
                    expect_rcode=rcode,
                    open_loop=open_loop,
                )

    def footprint(self, servers: list[Server]) -> None:
        for s in servers:
            if s.proc is None or s.proc.poll() is not None:
                continue
            mem = memory(s.pid)
            self.rows.append(
                {
                    "phase": "memory",
                    "server": s.name,
                    "label": s.label,
                    "scenario": "example.test",
                    "rss_mib": round(mem["rss_mib"], 1),
                    "pss_mib": round(mem["pss_mib"], 1),
                    "procs": mem["procs"],
                    "ready_s": round(s.ready_s, 2),
                }
            )

    def correctness(self, servers: list[Server], when: str) -> None:
        for s in servers:
            if s.proc is None or s.proc.poll() is not None:
                continue
            bad = check_answers(s.port)
            s.problems += [f"{when}: {b}" for b in bad]
            status = "all answers as expected" if not bad else f"{len(bad)} WRONG: " + "; ".join(bad)
            print(f"  check {when:6} {s.label:24} {status}", flush=True)
            self.rows.append(
                {
                    "phase": "check",
                    "server": s.name,
                    "label": s.label,
                    "scenario": when,
                    "wrong": len(bad),
                    "error": "; ".join(bad),
                }
            )
            if bad:
                self.note(f"{s.label} answers differ from the expected ones ({when}): {bad}")

    # -- the 100k-record zone -------------------------------------------------------------

    def big_zone(self) -> None:
        a = self.args
        variants: list[tuple[str, str, int | None]] = []
        if "gslb" in a.servers:
            variants.append(
                ("gslb-big", "gslb (1 worker)" if self.has_workers else "gslb", 1 if self.has_workers else None)
            )
        if "gslb-w2" in a.servers and self.has_workers:
            variants.append(("gslb-big-w2", "gslb (--workers 2)", 2))
        if a.big_records <= 0:
            return
        zones = self.run / "bigzone" / "zones"
        peer_configs.gslb_zones(zones)
        t = time.monotonic()
        make_queries.write_big_zone(zones / "big.test.zone", self.qdir / "bigzone.txt", a.big_records)
        size = (zones / "big.test.zone").stat().st_size
        print(
            f"big zone: {a.big_records} records, {size / 1e6:.1f} MB, written in {time.monotonic() - t:.1f} s",
            flush=True,
        )
        labels = {"gdnsd": "gdnsd 3.8", "knot": "knot 3.2", "pdns-lua": "pdns 4.7 bind backend"}
        for peer in ("gdnsd", "knot", "pdns-lua"):
            if peer not in a.servers:
                continue
            port = free_ports(1)[0]
            cmd = getattr(peer_configs, peer.replace("-", "_"))(
                self.run / "bigzone", port, self.mmdb, extra_zone=zones / "big.test.zone"
            )
            s = Server(
                f"{peer}-big", labels[peer], port, cmd, self.run / "bigzone" / f"{peer}.log", cwd=self.run / "bigzone"
            )
            print(f"starting {s.label} with the {a.big_records}-record zone on 127.0.0.1:{port}", flush=True)
            s.start(a.server_cpu)
            try:
                self._big_zone_peer(s, a.big_records)
            finally:
                s.stop()
        for name, label, workers in variants:
            port = free_ports(1)[0]
            s = gslb_server(name, label, port, zones, self.mmdb, self.run, workers)
            print(f"starting {label} with the {a.big_records}-record zone on 127.0.0.1:{port}", flush=True)
            s.start(a.server_cpu)
            try:
                self._big_zone_one(s, a.big_records)
            finally:
                s.stop()

    def _wait_log(self, s: Server, pattern: str, after: int, timeout: float, count: int = 1) -> list[float]:
        """Monotonic times at which `count` new lines matching pattern appeared after byte `after`."""
        seen: list[float] = []
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(seen) < count:
            text = s.log_text()[after:]
            n = len(rx.findall(text))
            now = time.monotonic()
            while len(seen) < n:
                seen.append(now)
            if s.proc is not None and s.proc.poll() is not None:
                break
            time.sleep(0.02)
        return seen

    @staticmethod
    def _big_zone_row(s: Server, records: int) -> dict[str, Any]:
        return {"phase": "bigzone", "server": s.name, "label": s.label, "scenario": "big.test", "records": records}

    def _big_zone_peer(self, s: Server, records: int) -> None:
        """A peer's load time and memory with the same large zone, for comparison."""
        assert s.proc is not None
        row = self._big_zone_row(s, records)
        try:
            wait_answering(s.port, s.proc, self.args.big_timeout, zone="big.test")
            row["first_answer_s"] = round(time.monotonic() - s.started, 2)
            time.sleep(0.5)
            mem = memory(s.pid)
            row.update(rss_mib=round(mem["rss_mib"], 1), pss_mib=round(mem["pss_mib"], 1), procs=mem["procs"])
            rcode, got = dns_query(s.port, f"{make_queries.big_name(4)}.big.test", "A")
            row["answers_ok"] = rcode == "NOERROR" and got == ["198.18.0.4"]
        except Exception as exc:
            row["error"] = str(exc)
            self.note(f"{s.label} with the big zone: {exc}; log: {s.log_text()[-800:]}")
        self.rows.append(row)
        print(
            f"  bigzone  {s.name}: first answer {row.get('first_answer_s')} s, RSS {row.get('rss_mib')} MiB", flush=True
        )

    def _big_zone_one(self, s: Server, records: int) -> None:
        a = self.args
        assert s.proc is not None
        row = self._big_zone_row(s, records)
        serving = self._wait_log(s, r"serving \d+ zones", 0, a.big_timeout)
        if not serving:
            self.note(
                f"{s.label}: no 'serving N zones' within {a.big_timeout:.0f} s with the big zone; "
                f"log: {s.log_text()[-1500:]}"
            )
            row["error"] = "did not load"
            self.rows.append(row)
            return
        row["load_s"] = round(serving[0] - s.started, 2)
        try:
            wait_answering(s.port, s.proc, 60, zone="big.test")
            row["first_answer_s"] = round(time.monotonic() - s.started, 2)
        except RuntimeError as exc:
            row["error"] = f"no answer: {exc}"
            self.rows.append(row)
            return
        time.sleep(0.5)
        pin_tree(s.pid, a.server_cpu)
        mem = memory(s.pid)
        row.update(rss_mib=round(mem["rss_mib"], 1), pss_mib=round(mem["pss_mib"], 1), procs=mem["procs"])
        m = re.search(r"(\d+) records", s.log_text())
        # a name from the big zone, and the geo service, must answer correctly
        try:
            rcode, got = dns_query(s.port, f"{make_queries.big_name(4)}.big.test", "A")
            ok = rcode == "NOERROR" and got == ["198.18.0.4"]
            _rcode2, got2 = dns_query(s.port, "www.example.test", "A", "2.2.0.0/24")
            ok = ok and got2 == [EU4]
        except Exception as exc:
            ok, got = False, [str(exc)]
        row["answers_ok"] = ok
        if not ok:
            self.note(f"{s.label} with the big zone answered wrongly: {got}")
        # reload while idle
        offset = len(s.log_text())
        t0 = time.monotonic()
        os.kill(s.pid, signal.SIGHUP)
        want = 1  # one line, also with workers: the supervisor logs once every worker has reloaded
        done = self._wait_log(s, r"reloaded \(SIGHUP\)", offset, a.big_timeout, count=want)
        if not done:
            self.note(f"{s.label}: no 'reloaded (SIGHUP)' line within {a.big_timeout:.0f} s")
            row["reload_s"] = math.nan
        else:
            row["reload_s"] = round(done[-1] - t0, 2)
            row["reload_lines"] = len(done)
            logged = re.findall(r"reloaded \(SIGHUP\).* in ([\d.]+) s", s.log_text()[offset:])
            row["reload_logged_s"] = ",".join(logged)
        if m:
            row["records_logged"] = m.group(1)
        mem = memory(s.pid)
        row.update(
            rss_after_reload_mib=round(mem["rss_mib"], 1),
            pss_after_reload_mib=round(mem["pss_mib"], 1),
            hwm_mib=round(mem["hwm_mib"], 1),
        )
        self.rows.append(row)
        print(
            f"  bigzone  {s.name}: load {row['load_s']} s, first answer {row['first_answer_s']} s, "
            f"RSS {row['rss_mib']} MiB (PSS {row['pss_mib']}), reload {row['reload_s']} s, "
            f"peak RSS {row['hwm_mib']} MiB",
            flush=True,
        )
        # queries lost during a reload under load, and the same load without a reload
        reload_s = row["reload_s"] if not math.isnan(row["reload_s"]) else 5.0
        seconds = max(a.reload_seconds, math.ceil(reload_s * 1.5 + 4))
        extra = ["-d", "bigzone.txt"]
        # warm: one closed-loop pass over the names, so "steady" is the server with its
        # answer cache filled (a reload starts a new, empty one)
        self.bench.dnsperf(s.port, [*extra, "-n", "1"], seconds=120)
        self.measure(s, "reload", "steady", 1, extra, seconds=seconds, rate=a.reload_qps, open_loop=True)

        hup: dict[str, Any] = {}

        def send_hup() -> None:
            time.sleep(seconds / 2 - reload_s / 2 if seconds / 2 > reload_s / 2 else 1)
            hup["offset"] = len(s.log_text())
            hup["t"] = time.monotonic()
            os.kill(s.pid, signal.SIGHUP)
            got = self._wait_log(s, r"reloaded \(SIGHUP\)", hup["offset"], seconds + 60, count=want)
            hup["reload_s"] = round(got[-1] - hup["t"], 2) if got else math.nan

        r = self.measure(
            s, "reload", "SIGHUP", 1, extra, seconds=seconds, rate=a.reload_qps, during=send_hup, open_loop=True
        )
        r["reload_s"] = hup.get("reload_s", math.nan)
        if s.proc is not None and s.proc.poll() is None:
            try:
                rcode, got = dns_query(s.port, f"{make_queries.big_name(4)}.big.test", "A")
                r["answers_ok_after"] = rcode == "NOERROR" and got == ["198.18.0.4"]
            except Exception:
                r["answers_ok_after"] = False

    # -- report ---------------------------------------------------------------------------

    def report(self, servers: list[Server]) -> str:
        a = self.args
        out: list[str] = []
        w = out.append
        names = [s.name for s in servers]
        labels = {s.name: s.label for s in servers}
        mrows = [r for r in self.rows if r["phase"] == "matrix"]

        def cell(name: str, sc: str, key: str) -> float:
            return median([r[key] for r in mrows if r["server"] == name and r["scenario"] == sc])

        m = self.meta
        w(f"# gslb vs GeoDNS peers: {m['date_utc']}")
        w("")
        w(
            f"Machine: {m['cpus_online']} CPUs ({m['cpu_model']}), kernel {m['kernel']}; servers on CPU "
            f"{a.server_cpu}, dnsperf on CPU {a.client_cpu}; load1 at start {m['load1_start']}. "
            f"gslb {m['gslb_rev']}, Python {m['python']}. {a.reps} rep(s), {a.duration:g} s per UDP run"
            f"{' (--quick)' if a.quick else ''}."
        )
        w("")
        w("## Throughput (dnsperf max rate, -q 100, -c 8 sockets, -b 4096; TCP: -c 32)")
        w("")
        w("Cell: **QPS** / server CPU % (whole process tree) / QPS per server core. Median over reps.")
        w("")
        scen = [sc for sc in a.scenarios if any(r["scenario"] == sc for r in mrows)]
        w("| server | " + " | ".join(scen) + " |")
        w("|---" * (len(scen) + 1) + "|")
        for n in names:
            cells = []
            for sc in scen:
                q, c, pc = cell(n, sc, "qps"), cell(n, sc, "cpu_pct"), cell(n, sc, "qps_per_core")
                lost = sum(r["lost"] for r in mrows if r["server"] == n and r["scenario"] == sc)
                cells.append(f"**{fmt_k(q)}** / {fmt(c, 0)}% / {fmt_k(pc)}" + (f" (lost {lost})" if lost else ""))
            w(f"| {labels[n]} | " + " | ".join(cells) + " |")
        w("")
        w(
            "Busy % of the client core (dnsperf) / of the server core (the server and anything else "
            "running there) during the same runs. A client core near 100 % means dnsperf, not the "
            "server, set the QPS; compare QPS per core then."
        )
        w("")
        w("| server | " + " | ".join(scen) + " |")
        w("|---" * (len(scen) + 1) + "|")
        for n in names:
            w(
                f"| {labels[n]} | "
                + " | ".join(
                    f"{fmt(cell(n, sc, 'client_core_pct'), 0)} / {fmt(cell(n, sc, 'server_core_pct'), 0)}"
                    for sc in scen
                )
                + " |"
            )
        w("")
        gslbs = [n for n in names if n.startswith("gslb")]
        peers = [n for n in names if not n.startswith("gslb")]
        if gslbs and peers:
            w("## Ratios gslb / peer")
            w("")
            w("Cell: QPS ratio (QPS-per-core ratio). Above 1: gslb is faster.")
            w("")
            w("| gslb | peer | " + " | ".join(scen) + " |")
            w("|---" * (len(scen) + 2) + "|")
            for g in gslbs:
                for p in peers:
                    cells = []
                    for sc in scen:
                        q = cell(g, sc, "qps") / cell(p, sc, "qps") if cell(p, sc, "qps") else math.nan
                        c = (
                            cell(g, sc, "qps_per_core") / cell(p, sc, "qps_per_core")
                            if cell(p, sc, "qps_per_core")
                            else math.nan
                        )
                        cells.append(f"{fmt(q)} ({fmt(c)})")
                    w(f"| {labels[g]} | {labels[p]} | " + " | ".join(cells) + " |")
            w("")
        lrows = [r for r in self.rows if r["phase"] == "latency"]
        if lrows:
            w(f"## Latency at a fixed 1,000 qps (mix-ecsvar, {a.latency_seconds:g} s, dnsperf -v)")
            w("")
            w("| server | avg ms | p50 ms | p99 ms | p99.9 ms | max ms | lost | server CPU % |")
            w("|---|---|---|---|---|---|---|---|")
            for r in lrows:
                w(
                    f"| {r['label']} | {fmt(r['avg_ms'], 3)} | {fmt(r['p50_ms'], 3)} | {fmt(r['p99_ms'], 3)} | "
                    f"{fmt(r['p999_ms'], 3)} | {fmt(r['max_ms'], 2)} | {r['lost']} | {fmt(r['cpu_pct'], 1)} |"
                )
            w("")
        l80 = [r for r in self.rows if r["phase"] == "lost@80%"]
        if l80:
            w(f"## Lost queries at 80 % of gslb's peak (mix-ecsvar, {a.duration:g} s)")
            w("")
            w(
                "| server | in flight | peak QPS | asked QPS | got QPS | sent | lost | dropped at server socket | "
                "avg ms | max ms | server CPU % | client core busy % |"
            )
            w("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in l80:
                w(
                    f"| {r['label']} | {r['scenario']} | {fmt_k(self.peak(r['server']))} | {fmt_k(r['rate'])} | "
                    f"{fmt_k(r['qps'])} | "
                    f"{r['sent']} | **{r['lost']}** | {r['srv_drops']} | {fmt(r['avg_ms'], 3)} | "
                    f"{fmt(r['max_ms'], 1)} | {fmt(r['cpu_pct'], 0)} | {fmt(r['client_core_pct'], 0)} |"
                )
            w("")
        mem = [r for r in self.rows if r["phase"] == "memory"]
        big = [r for r in self.rows if r["phase"] == "bigzone"]
        rel = [r for r in self.rows if r["phase"] == "reload"]
        if mem:
            w("## Memory with the benchmark zone (example.test, after the runs)")
            w("")
            w("| server | RSS MiB | PSS MiB | processes | start to first answer s |")
            w("|---|---|---|---|---|")
            for r in mem:
                w(
                    f"| {r['label']} | {fmt(r['rss_mib'], 1)} | {fmt(r['pss_mib'], 1)} | {r['procs']} | "
                    f"{fmt(r['ready_s'], 2)} |"
                )
            w("")
        if big:
            w(f"## gslb with a {a.big_records:,}-record zone (big.test: A/AAAA/TXT/MX, plus example.test)")
            w("")
            w(
                '| server | load s (start to "serving") | first answer s | RSS MiB | PSS MiB | reload s '
                '(SIGHUP to "reloaded") | reload as logged s | peak RSS MiB | RSS / PSS after reload MiB |'
            )
            w("|---|---|---|---|---|---|---|---|---|")
            for r in big:
                w(
                    f"| {r['label']} | {fmt(r.get('load_s'), 2)} | {fmt(r.get('first_answer_s'), 2)} | "
                    f"{fmt(r.get('rss_mib'), 1)} | {fmt(r.get('pss_mib'), 1)} | {fmt(r.get('reload_s'), 2)} | "
                    f"{r.get('reload_logged_s', '-')} | {fmt(r.get('hwm_mib'), 1)} | "
                    f"{fmt(r.get('rss_after_reload_mib'), 1)} / {fmt(r.get('pss_after_reload_mib'), 1)} |"
                )
            w("")
        if rel:
            w(f"## Queries lost during a reload under load (big.test names, {a.reload_qps:,} qps)")
            w("")
            w(
                "| server | run | seconds | asked | sent | lost | dropped at server socket | got QPS | "
                "avg ms | max ms | reload s | server CPU % |"
            )
            w("|---|---|---|---|---|---|---|---|---|---|---|---|")
            for r in rel:
                w(
                    f"| {r['label']} | {r['scenario']} | {r['wall_s']} | {r['asked']} | {r['sent']} | "
                    f"**{r['lost']}** | {r['srv_drops']} | "
                    f"{fmt_k(r['qps'])} | {fmt(r['avg_ms'], 3)} | {fmt(r['max_ms'], 1)} | "
                    f"{fmt(r.get('reload_s', math.nan), 2)} | {fmt(r['cpu_pct'], 0)} |"
                )
            w("")
        checks = [r for r in self.rows if r["phase"] == "check"]
        if checks:
            w("## Answer checks (dnspython, UDP and TCP, before and after the runs)")
            w("")
            for n in names:
                bad = [r for r in checks if r["server"] == n and r["wrong"]]
                ul = [r for r in mrows if r["server"] == n and r.get("under_load_wrong")]
                w(
                    f"* {labels[n]}: "
                    + (
                        "all as expected"
                        if not bad and not ul
                        else "; ".join(f"{r['scenario']}: {r['error']}" for r in bad)
                        + (f"; wrong under load in {len(ul)} run(s)" if ul else "")
                    )
                )
            w("")
        affs = sorted({r["affinity"] for r in self.rows if r.get("affinity")})
        if affs != [str(a.server_cpu)]:
            self.notes.append(f"server thread affinities seen: {affs} (expected only {a.server_cpu})")
        if self.notes:
            w("## Notes")
            w("")
            for n in self.notes:
                w("* " + n.replace("\n", " ")[:2000])
            w("")
        return "\n".join(out)

    def save(self, text: str) -> None:
        base = self.run / f"results-{self.stamp}"
        keys: list[str] = []
        for r in self.rows:
            for k in r:
                if k not in keys:
                    keys.append(k)
        with open(f"{base}.csv", "w", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=keys)
            wr.writeheader()
            wr.writerows(self.rows)

        save_json_md(base, text, meta=self.meta, notes=self.notes, rows=self.rows)
        print(f"\nwrote {base}.csv, {base}.json and {base}.md", flush=True)

    # -- main -----------------------------------------------------------------------------

    def main(self) -> int:
        a = self.args
        self.prepare()
        servers = self.servers()
        alive = self.start_all(servers)
        self.started = alive
        # warm-up is part of the check: the first answers fill gslb's caches
        print("answer checks before measuring:", flush=True)
        self.correctness(alive, "before")
        print("warming up (one pass over each cacheable query file)", flush=True)
        self.warm_up(alive)
        print(f"throughput matrix: {len(alive)} servers x {len(a.scenarios)} scenarios x {a.reps} rep(s)", flush=True)
        self.matrix(alive)
        if not a.skip_latency:
            print("latency at 1,000 qps:", flush=True)
            self.latency(alive)
        print("lost queries at 80 % of gslb's peak:", flush=True)
        self.lost_at_80(alive)
        self.footprint(alive)
        print("answer checks after measuring:", flush=True)
        self.correctness(alive, "after")
        for s in alive:
            s.stop()
        if a.big_records > 0:
            self.big_zone()
        self.meta["load1_end"] = load1()
        text = self.report(alive)
        print("\n" + text, flush=True)
        self.save(text)
        return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--quick", action="store_true", help=f"3 s runs, scenarios {','.join(QUICK_SCENARIOS)}, 3 s latency run"
    )
    ap.add_argument("-l", "--duration", type=float, help="seconds per dnsperf run (default 10; --quick 3)")
    ap.add_argument("--reps", type=int, default=1, help="repetitions of the throughput matrix (median)")
    ap.add_argument("--scenarios", help=f"comma list from {','.join(SCENARIOS)}")
    ap.add_argument(
        "--servers",
        default="gdnsd,knot,pdns-geo,pdns-lua,gslb,gslb-w2",
        help="comma list (default: all; gslb-w2 needs `gslb serve --workers`)",
    )
    ap.add_argument("--big-records", type=int, default=100_000, help="records in the large zone (0: skip that part)")
    ap.add_argument("--big-timeout", type=float, default=600, help="seconds to wait for the big zone to load")
    ap.add_argument("--reload-qps", type=int, default=20_000, help="fixed rate for the reload-under-load runs")
    ap.add_argument("--reload-seconds", type=float, help="length of the reload-under-load runs (default 10)")
    ap.add_argument("--latency-seconds", type=float, help="length of the 1,000 qps run (default 10; --quick 3)")
    ap.add_argument("--skip-latency", action="store_true")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--run-dir", type=Path, default=HERE / "run")
    ap.add_argument("--no-install", action="store_true", help="fail instead of installing missing packages")
    a = ap.parse_args(argv)
    a.duration = a.duration or (3.0 if a.quick else 10.0)
    a.latency_seconds = a.latency_seconds or (3.0 if a.quick else 10.0)
    a.reload_seconds = a.reload_seconds or (6.0 if a.quick else 10.0)
    a.scenarios = a.scenarios.split(",") if a.scenarios else (QUICK_SCENARIOS if a.quick else list(SCENARIOS))
    for sc in a.scenarios:
        if sc not in SCENARIOS:
            ap.error(f"unknown scenario {sc!r}")
    a.servers = a.servers.split(",")
    a.run_dir = a.run_dir.resolve()
    return a


def take_client_cpu(args: argparse.Namespace) -> None:
    """Pin this script to the client's CPU, and turn SIGINT, SIGTERM and SIGHUP into KeyboardInterrupt."""
    cpus = os.sched_getaffinity(0)
    if args.server_cpu not in cpus or args.client_cpu not in cpus or args.server_cpu == args.client_cpu:
        raise SystemExit(f"need two distinct CPUs for --server-cpu/--client-cpu; this process may use {sorted(cpus)}")
    # This script and its checks share the client's CPU, never the servers'.
    os.sched_setaffinity(0, {args.client_cpu})

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    # SIGINT too: also when started in the background (SIGINT ignored)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_term)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    take_client_cpu(args)
    runner = Runner(args)
    try:
        return runner.main()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        if runner.rows:
            with contextlib.suppress(Exception):
                runner.notes.append("interrupted: partial results")
                runner.save(runner.report(runner.started))
        return 130
    finally:
        PROCS.stop_all()


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
