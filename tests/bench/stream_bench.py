"""gslb against gdnsd on the never-repeating stream: the real case, one command.

    python tests/bench/stream_bench.py [-l SECONDS] [--reps N] [--runs cold,warm,flip,scope]

Both servers answer ``www.example.com`` by "nearest" (great-circle distance from the
client's location in the real GeoLite2-City database to three data centers) with the same
data centers, coordinates and VIPs (peer_configs.gslb_nearest / gdnsd_nearest).  gslb runs
in its default mode: one worker (``--workers 1``), its prober watching three loopback HTTP
endpoints this script serves.  Each server is pinned to one core (taskset), the sender
(blast.c, batched; or dnsperf -B with ``--sender dnsperf``) and this script to the other,
and every run starts each server afresh (cold):

* cold   the never-repeating stream (stream.py: every query its own public /24 or /48,
         a third with a client cookie) at the sender's maximum rate for -l seconds, against
         gslb, gslb with ``--udp-loop python`` (the pure-Python fallback, when gslb has the
         option), the bare Python loop (bare_udp.py: recvfrom/sendto, the ceiling of any
         pure-Python server) and gdnsd;
* warm   a 60,000-query stream replayed three times (pass 1 cold, passes 2 and 3 warm);
* flip   the cold stream while the "us" data center's verdict flips every 2 s: gslb's
         probe endpoint for us answers 503 / 200 in turn (the real prober notices: 0.5 s
         interval, fall 2, rise 1); gdnsd gets ``geoip/www/us => DOWN`` in its admin_state
         file and then an empty file (gdnsd applies it at once; its own monitors cannot
         probe more often than every 2 s);
* scope  1,000 random public /24s asked of both servers: the ECS scope each returns,
         against the database network (maxminddb get_with_prefix_len).

After each maximum-rate run, the same server process gets a latency run at a fixed rate
(half the server's own peak in that run, open loop) on queries whose networks no run uses
(cold, flip) or on the same 60,000 (warm); p50 / p99 come from blast's histogram (dnsperf:
its -v lines).  Memory is the RSS of the server's process tree 1 s after its first answer
and after the runs.  Start time is process start to the first answer; the first gslb start
of an invocation uses a new state and zones directory (nothing cached on disk beside
either), later ones are restarts.

gslb is the committed code of ``--gslb-rev`` (default HEAD; git archive into the run
directory, its compiled extension built there with ``setup.py build_ext --inplace``), so
uncommitted edits in a shared working tree do not leak in; ``--gslb-rev worktree`` measures
the working tree as it is.

Prints markdown tables, writes stream-results-<time>.{md,json} into the run directory.
All traffic goes to 127.0.0.1; the ECS networks are option bytes only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.server
import ipaddress
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import peer_configs  # noqa: E402
import run as bench  # noqa: E402
import stream  # noqa: E402

RUNS = ("cold", "warm", "flip", "soak", "scope")
FLIP_DC = "us"
_WWW = f"www.{peer_configs.NEAREST_ZONE}"
# checked on every start, before measuring: (name, type, ECS, rcode, answers); the places are
# GeoLite2-City's (GB, US, JP, JP, DE), the answers the nearest data center's VIP
CHECKS: list[tuple[str, str, str | None, str, list[str]]] = [
    (_WWW, "A", "81.2.69.0/24", "NOERROR", [peer_configs.VIPS["eu"][0]]),
    (_WWW, "A", "8.8.8.0/24", "NOERROR", [peer_configs.VIPS["us"][0]]),
    (_WWW, "A", "1.0.16.0/24", "NOERROR", [peer_configs.VIPS["ap"][0]]),
    (_WWW, "AAAA", "2001:200::/48", "NOERROR", [peer_configs.VIPS["ap"][1]]),
    (_WWW, "AAAA", "2a02:2e0::/48", "NOERROR", [peer_configs.VIPS["eu"][1]]),
    (f"nx-check.{peer_configs.NEAREST_ZONE}", "A", "8.8.8.0/24", "NXDOMAIN", []),
]
DEB = ("dnsperf", "gdnsd")


# --------------------------------------------------------------------------- probe endpoints


class Health:
    """Loopback HTTP endpoints gslb's prober watches, one per data center; `down` ones answer 503."""

    def __init__(self, names: list[str]) -> None:
        self.down: set[str] = set()
        self.hits: dict[str, int] = dict.fromkeys(names, 0)
        self.servers: dict[str, http.server.ThreadingHTTPServer] = {}
        for name in names:
            self.servers[name] = self._serve(name)

    def _serve(self, name: str) -> http.server.ThreadingHTTPServer:
        health = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                health.hits[name] += 1
                code = 503 if name in health.down else 200
                body = b"down\n" if code == 503 else b"ok\n"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        srv.daemon_threads = True
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        return srv

    def ports(self) -> dict[str, int]:
        return {name: srv.server_address[1] for name, srv in self.servers.items()}

    def close(self) -> None:
        for srv in self.servers.values():
            srv.shutdown()
            srv.server_close()


# --------------------------------------------------------------------------- the runner


def div(a: Any, b: Any) -> float:
    return a / b if a is not None and b else math.nan


def fmt_k(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v / 1000:.1f}k"


def fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}"


class StreamBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.run = args.run_dir
        self.sdir = self.run / "stream"
        self.stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        # everything a server keeps between its starts in this invocation (gslb's state file and
        # zones, gdnsd's run and state directories): a concurrent invocation has its own
        self.state_dir = self.sdir / f"gslb-state-{self.stamp}"
        # bench.Runner only for its measure(): dnsperf at max or fixed rate, CPU, drops
        ns = argparse.Namespace(
            run_dir=self.run, client_cpu=args.client_cpu, server_cpu=args.server_cpu, duration=args.duration
        )
        self.runner = bench.Runner(ns)
        self.runner.bench.qdir = self.sdir  # dnsperf's working directory
        self.rows: list[dict[str, Any]] = []
        self.rep = 1
        self.starts: list[dict[str, Any]] = []
        self.scope: dict[str, Any] = {}
        self.notes: list[str] = []
        self.health: Health | None = None
        self.mmdb = args.geodb or stream.geolite2_city()

    def note(self, text: str) -> None:
        print(f"NOTE: {text}", flush=True)
        self.notes.append(text)

    # -- setup ----------------------------------------------------------------------------

    def lock(self) -> None:
        """One invocation at a time on this machine: two would share the server core."""
        import fcntl

        self.sdir.mkdir(parents=True, exist_ok=True)
        self.lock_file = (self.sdir / ".lock").open("a+")
        try:
            fcntl.flock(self.lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock_file.seek(0)
            print(f"another stream_bench.py is running ({self.lock_file.read().strip()}); waiting", flush=True)
            fcntl.flock(self.lock_file, fcntl.LOCK_EX)
        self.lock_file.seek(0)
        self.lock_file.truncate()
        self.lock_file.write(f"pid {os.getpid()}, since {datetime.datetime.now(datetime.UTC):%H:%M:%S} UTC\n")
        self.lock_file.flush()

    def prepare(self) -> None:
        self.lock()
        missing = [p for p in DEB if shutil.which(p) is None]
        if missing:
            if self.a.no_install:
                raise SystemExit(f"missing: {' '.join(missing)} (apt-get install {' '.join(DEB)})")
            print(f"installing {' '.join(DEB)}", flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            sudo = [] if os.geteuid() == 0 else ["sudo"]
            if subprocess.run([*sudo, "apt-get", "install", "-y", *DEB], env=env, check=False).returncode:
                subprocess.run([*sudo, "apt-get", "update"], env=env, check=False)
                subprocess.run([*sudo, "apt-get", "install", "-y", *DEB], env=env, check=True)
        t = time.monotonic()
        print(f"query streams (GeoLite2-City {self.mmdb}) ...", flush=True)
        self.cold, self.cold_latency = stream.cached(
            self.sdir, [self.a.queries, self.a.latency_queries], seed=self.a.seed, mmdb=self.mmdb
        )
        (self.warm,) = stream.cached(self.sdir, [self.a.warm_queries], seed=self.a.seed + 1, mmdb=self.mmdb)
        print(f"  ready in {time.monotonic() - t:.1f} s: {self.cold.name}, {self.warm.name}", flush=True)
        for kind in ("gslb-state-*", "src-*"):  # keep the last few of what earlier invocations left
            for old in sorted(self.sdir.glob(kind), key=lambda q: q.stat().st_mtime)[:-3]:
                shutil.rmtree(old, ignore_errors=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.src = self.export()
        self.has_py_loop = "--udp-loop" in bench.serve_help(self.src)
        if self.a.sender == "blast":
            self.build_blast()
        self.health = Health(list(peer_configs.DC_PLACE))
        # per invocation, as the state directory: gslb may keep its compiled geo table beside
        # either, and the first start must not find one
        self.zones = peer_configs.gslb_nearest(self.state_dir / "zones", self.health.ports())

    def build_blast(self) -> None:
        """Compile blast.c into the run directory (dnsperf instead, with a note, without gcc)."""
        out = self.sdir / "blast"
        src = HERE / "blast.c"
        if not out.exists() or out.stat().st_mtime < src.stat().st_mtime:
            cc = shutil.which("gcc") or shutil.which("cc")
            r = (
                subprocess.run(
                    [cc or "gcc", "-O2", "-Wall", "-o", str(out), str(src)], capture_output=True, text=True, check=False
                )
                if cc
                else None
            )
            if r is None or r.returncode:
                self.note(f"blast.c did not build ({r.stderr[-300:] if r else 'no C compiler'}): dnsperf sends")
                self.a.sender, self.a.outstanding = "dnsperf", 100
                return
        self.runner.bench.blast_path = out

    def export(self) -> Path:
        """The gslb source to measure: a git archive of --gslb-rev with its extension built."""
        rev = self.a.gslb_rev
        if rev == "worktree":
            self.rev = bench.git_rev()
            return bench.REPO
        r = subprocess.run(
            ["git", "-C", str(bench.REPO), "rev-parse", "--short", rev], capture_output=True, text=True, check=True
        )
        self.rev = r.stdout.strip()
        dest = self.sdir / f"src-{self.rev}"
        if not (dest / ".built").exists():
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            archive = subprocess.run(
                ["git", "-C", str(bench.REPO), "archive", "--format=tar", rev], capture_output=True, check=True
            )
            subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
            if (dest / "setup.py").exists():
                build = [sys.executable, "setup.py", "-q", "build_ext", "--inplace"]
                b = subprocess.run(build, cwd=dest, capture_output=True, text=True, check=False)
                if b.returncode or "WARNING" in b.stderr:
                    self.note(f"building the extension of {self.rev}: {(b.stdout + b.stderr)[-600:]}")
            (dest / ".built").write_text("")
        built = sorted(p.name for p in (dest / "gslb").glob("_*.so"))
        print(f"  gslb {self.rev} from {dest} (compiled: {', '.join(built) or 'none'})", flush=True)
        return dest

    # -- servers --------------------------------------------------------------------------

    def server(self, name: str, run: str) -> bench.Server:
        port = bench.free_ports(1, start=5471)[0]
        log = self.sdir / f"{name}-{run}.log"
        if name == "gdnsd":
            cmd = peer_configs.gdnsd_nearest(self.state_dir, port, self.mmdb)
            return bench.Server(name, "gdnsd 3.8", port, cmd, log, cwd=self.sdir)
        if name == "bare":
            cmd = [sys.executable, str(HERE / "bare_udp.py"), str(port)]
            return bench.Server(name, "bare Python loop", port, cmd, log, cwd=self.sdir)
        state = self.state_dir / "gslb.state.json"
        state.unlink(missing_ok=True)  # verdicts start fresh; anything else cached there stays
        serve = [sys.executable, "-m", "gslb", "serve", "--zones", str(self.zones), "--geodb", str(self.mmdb)]
        options = ["--listen", f"127.0.0.1:{port}", "--http", "off", "--workers", "1", "--state-file", str(state)]
        cmd = [*serve, *options, *self.a.gslb_arg]
        if name == "gslb-py":
            cmd += ["--udp-loop", "python"]
        env = {**os.environ, "PYTHONPATH": str(self.src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        label = "gslb, --udp-loop python" if name == "gslb-py" else "gslb (1 worker)"
        return bench.Server(name, label, port, cmd, log, cwd=self.src, env=env)

    def start(self, name: str, run: str) -> bench.Server:
        s = self.server(name, run)
        s.start(self.a.server_cpu)
        assert s.proc is not None
        ready = bench.wait_answering(s.port, s.proc, self.a.start_timeout, zone=peer_configs.NEAREST_ZONE)
        n = sum(1 for r in self.starts if r["server"] == name)
        self.starts.append({"server": name, "run": run, "n": n + 1, "start_s": round(ready, 3)})
        time.sleep(1.0)  # the first probe round (gslb), late threads and processes
        bench.pin_tree(s.pid, self.a.server_cpu)
        s.ready_s = ready
        if name != "bare":
            self.check(s, run)
        return s

    def check(self, s: bench.Server, run: str) -> None:
        """Note every answer of CHECKS that is not the expected one (the run goes on)."""
        bad = []
        for qname, qtype, ecs, rcode, want in CHECKS:
            try:
                got_rcode, got = bench.dns_query(s.port, qname, qtype, ecs)
            except Exception as exc:
                bad.append(f"{qname} {qtype} {ecs}: {type(exc).__name__}")
                continue
            if (got_rcode, got) != (rcode, sorted(want)):
                bad.append(f"{qname} {qtype} {ecs}: {got_rcode} {got}, expected {rcode} {want}")
        if bad:
            self.note(f"{s.label} ({run}) answers WRONGLY: " + "; ".join(bad) + f"; log: {s.log_text()[-300:]}")

    # -- measurement ----------------------------------------------------------------------

    def queries(self, qfile: Path, passes: int | None = None) -> list[str]:
        """The sender's arguments for a -B query file (read at most `passes` times)."""
        args = ["-f", str(qfile)] if self.a.sender == "blast" else ["-B", "-d", str(qfile)]
        return args + (["-n", str(passes)] if passes else [])

    def measure(
        self, s: bench.Server, run: str, label: str, extra: list[str], *, seconds: float | None, during: Any = None
    ) -> dict[str, Any]:
        row = self.runner.measure(
            s,
            run,
            label,
            self.rep,
            extra,
            seconds=seconds,
            during=during,
            sender=self.a.sender,
            outstanding=self.a.outstanding,
        )
        row["run"] = run
        self.rows.append(row)
        return row

    def latency(self, s: bench.Server, run: str, qfile: Path, rate: int, during: Any = None) -> dict[str, Any]:
        # blast: open loop (it keeps the rate while answers are late); dnsperf: -v lines
        blast = self.a.sender == "blast"
        row = self.runner.measure(
            s,
            run,
            "latency",
            self.rep,
            self.queries(qfile),
            seconds=self.a.latency_seconds,
            rate=rate,
            verbose=not blast,
            during=during,
            sender=self.a.sender,
            outstanding=bench.OPEN_LOOP_OUTSTANDING if blast else 100,
        )
        row["run"] = run
        self.rows.append(row)
        return row

    def finish(self, s: bench.Server, run: str, rss0: float) -> None:
        mem = bench.memory(s.pid) if s.proc is not None and s.proc.poll() is None else {}
        self.rows.append(
            {
                "phase": run,
                "run": run,
                "server": s.name,
                "scenario": "memory",
                "rep": self.rep,
                "rss_start_mib": round(rss0, 1),
                "rss_end_mib": round(mem.get("rss_mib", math.nan), 1),
                "pss_end_mib": round(mem.get("pss_mib", math.nan), 1),
                "procs": mem.get("procs", 0),
                # the verdicts gslb's log says changed, by data center (only the flip run flips any)
                "verdicts": verdict_changes(s.log_text()) if s.name.startswith("gslb") else {},
            }
        )
        s.stop()

    def rate_for(self, run: str, server: str) -> int:
        """The fixed rate of a latency measurement: half the server's own peak in that run."""
        q = [
            r["qps"]
            for r in self.rows
            if r["run"] == run
            and r["server"] == server
            and r["rep"] == self.rep
            and r["scenario"] not in ("latency", "memory")
        ]
        return max(1000, int(min(q) / 2)) if q else self.a.latency_rate

    def one(self, name: str, run: str) -> None:
        cold = self.queries(self.cold)
        s = self.start(name, run)
        rss0 = bench.memory(s.pid)["rss_mib"]
        try:
            if run == "warm":
                for i in (1, 2, 3):
                    row = self.measure(s, run, f"pass {i}", self.queries(self.warm, 1), seconds=15)
                    if row["sent"] < self.a.warm_queries:
                        self.note(f"{s.label}: warm pass {i} stopped at 15 s, after {row['sent']:,} queries")
                self.latency(s, run, self.warm, self.rate_for(run, name))
            elif run == "soak":
                # 80 % of this server's own cold peak in this rep, open loop, with faults
                peak = [
                    r["qps"]
                    for r in self.rows
                    if r["run"] == "cold" and r["server"] == name and r["rep"] == self.rep and r["scenario"] == "stream"
                ]
                rate = int(0.8 * min(peak)) if peak else self.a.soak_rate
                faults = Faults(self, s, seconds=self.a.soak_seconds)
                row = self.runner.measure(
                    s,
                    run,
                    "soak",
                    self.rep,
                    self.queries(self.cold_latency),
                    seconds=self.a.soak_seconds,
                    rate=rate,
                    during=faults.run,
                    sender=self.a.sender,
                    outstanding=bench.OPEN_LOOP_OUTSTANDING if self.a.sender == "blast" else 100,
                )
                row["run"] = run
                row.update(faults.result())
                row["loss_pct"] = round(100 * row["lost"] / row["sent"], 4) if row["sent"] else math.nan
                self.rows.append(row)
            elif run == "flip":
                flipper = Flipper(self, s)
                self.measure(s, run, "flip", cold, seconds=self.a.duration, during=flipper.run)
                row = self.rows[-1]
                row.update(flipper.result())
                flipper = Flipper(self, s, seconds=self.a.latency_seconds)
                self.latency(s, run, self.cold_latency, self.rate_for(run, name), during=flipper.run)
            else:
                self.measure(s, run, "stream", cold, seconds=self.a.duration)
                self.latency(s, run, self.cold_latency, self.rate_for(run, name))
        finally:
            self.finish(s, run, rss0)

    # -- ECS scopes -----------------------------------------------------------------------

    def scopes(self) -> None:
        import dns.edns
        import dns.message
        import dns.query
        import maxminddb

        rnd = random.Random(self.a.seed + 2)
        v4 = stream.PublicV4(rnd)
        nets = [ipaddress.IPv4Network((v4.draw() << 8, 24)) for _ in range(self.a.scope_samples)]
        with maxminddb.open_database(str(self.mmdb)) as reader:
            db = [reader.get_with_prefix_len(str(n.network_address))[1] for n in nets]
        got: dict[str, list[tuple[int, str]]] = {}
        for name in ("gslb", "gdnsd"):
            s = self.start(name, "scope")
            out = []
            try:
                for n in nets:
                    q = dns.message.make_query(
                        f"www.{peer_configs.NEAREST_ZONE}",
                        "A",
                        use_edns=0,
                        options=[dns.edns.ECSOption(str(n.network_address), 24)],
                    )
                    q.flags = 0
                    r = dns.query.udp(q, "127.0.0.1", port=s.port, timeout=2)
                    scope = next((o.scopelen for o in r.options if isinstance(o, dns.edns.ECSOption)), -1)
                    answer = ",".join(sorted(rd.to_text() for rr in r.answer for rd in rr))
                    out.append((scope, answer))
            finally:
                s.stop()
            got[name] = out
        g, d = got["gslb"], got["gdnsd"]
        narrower = [i for i in range(len(nets)) if db[i] <= 24 and g[i][0] > db[i]]
        self.scope = {
            "samples": len(nets),
            "median_gslb": statistics.median_low(x[0] for x in g),
            "median_gdnsd": statistics.median_low(x[0] for x in d),
            "median_db": statistics.median_low(db),
            "gslb_narrower_than_db": len(narrower),
            "gdnsd_narrower_than_db": sum(1 for i in range(len(nets)) if db[i] <= 24 and d[i][0] > db[i]),
            "db_finer_than_24": sum(1 for x in db if x > 24),
            "gslb_wider_than_gdnsd": sum(1 for i in range(len(nets)) if g[i][0] < d[i][0]),
            "gslb_narrower_than_gdnsd": sum(1 for i in range(len(nets)) if g[i][0] > d[i][0]),
            "answers_differ": sum(1 for i in range(len(nets)) if g[i][1] != d[i][1]),
            "examples_narrower": [f"{nets[i]}: gslb /{g[i][0]}, database /{db[i]}" for i in narrower[:5]],
            "examples_differ": [
                f"{nets[i]}: gslb {g[i][1]} /{g[i][0]}, gdnsd {d[i][1]} /{d[i][0]}"
                for i in range(len(nets))
                if g[i][1] != d[i][1]
            ][:5],
        }
        print(f"  scope: {json.dumps(self.scope)}", flush=True)

    # -- report ---------------------------------------------------------------------------

    @staticmethod
    def _is(row: dict[str, Any], run: str, server: str, scenario: str) -> bool:
        return bool(row.get("run") == run and row["server"] == server and row["scenario"] == scenario)

    def cell(self, run: str, server: str, scenario: str, key: str) -> Any:
        """The median over the reps (the first value when it is not a number)."""
        vals = [r.get(key) for r in self.rows if self._is(r, run, server, scenario)]
        nums = [v for v in vals if isinstance(v, int | float) and not (isinstance(v, float) and math.isnan(v))]
        if nums:
            return statistics.median(nums)
        return vals[0] if vals else None

    def ratio(self, run: str, server: str, scenario: str, key: str) -> float:
        """The median over the reps of server / gdnsd, each rep against gdnsd in the same rep."""
        ref = {r["rep"]: r.get(key) for r in self.rows if self._is(r, run, "gdnsd", scenario)}
        out = [div(r.get(key), ref.get(r["rep"])) for r in self.rows if self._is(r, run, server, scenario)]
        out = [x for x in out if not math.isnan(x)]
        return statistics.median(out) if out else math.nan

    def report(self) -> str:
        out: list[str] = []
        w = out.append
        a = self.a
        m = self.meta
        w(f"# gslb vs gdnsd, never-repeating stream: {m['date_utc']}")
        w("")
        w(
            f"{m['cpus']} CPUs ({m['cpu_model']}), kernel {m['kernel']}; servers on CPU {a.server_cpu}, "
            f"{a.sender} on CPU {a.client_cpu}; load1 {m['load1_start']} at start, {m.get('load1_end', '-')} at end. "
            f"gslb {m['gslb_rev']}, Python {m['python']}, {m['gdnsd']}, {m['dnsperf']}. Database "
            f"{self.mmdb.name} (build {m['db_build']}). Stream: {a.queries:,} queries (cold), "
            f"{a.warm_queries:,} (warm); {a.duration:g} s per run; {a.reps} rep(s), medians; "
            f"{m['wall_s']:.0f} s in all."
        )
        w("")
        w("## Throughput: qps, ratio to gdnsd in the same invocation, latency at a fixed rate")
        w("")
        how = (
            f"blast (tests/bench/blast.c) -q {a.outstanding} -c 8 at its maximum rate; latency: blast at half "
            "the server's own peak (the `at` column, open loop)"
            if a.sender == "blast"
            else f"dnsperf -B -q {a.outstanding} -c 8 at its maximum rate; latency: dnsperf -v at half the "
            "server's own peak (the `at` column)"
        )
        w(
            how + " on the same process right after, on networks not seen before (warm: the same 60,000 "
            "queries). Ratios are per rep against gdnsd in the same rep; with the client core near 100 % and "
            "the server's well below, the sender set the pace: compare qps per server core."
        )
        w("")
        w(
            "| run | server | qps | ratio to gdnsd | server CPU % | qps per server core (ratio) | client core % | "
            "answered | lost | at qps | p50 ms | p99 ms | RSS start / end (PSS end) MiB |"
        )
        w("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for run in [r for r in ("cold", "warm", "flip") if r in a.runs]:
            scen = ["pass 1", "pass 2", "pass 3"] if run == "warm" else ["flip" if run == "flip" else "stream"]
            servers = ["gslb", "gslb-py", "bare", "gdnsd"]
            for sc in scen:
                for srv in servers:
                    q = self.cell(run, srv, sc, "qps")
                    if q is None:
                        continue
                    ratio = self.ratio(run, srv, sc, "qps")
                    pc, pratio = self.cell(run, srv, sc, "qps_per_core"), self.ratio(run, srv, sc, "qps_per_core")
                    lr = {k: self.cell(run, srv, "latency", k) for k in ("rate", "p50_ms", "p99_ms")}
                    if sc != scen[-1] or lr["rate"] is None:
                        lr = {}
                    mem = [self.cell(run, srv, "memory", k) for k in ("rss_start_mib", "rss_end_mib", "pss_end_mib")]
                    label = f"{run} ({sc})" if run == "warm" else run
                    w(
                        f"| {label} | {srv} | **{q:,.0f}** | {fmt(ratio)} | "
                        f"{fmt(self.cell(run, srv, sc, 'cpu_pct'), 0)} | {fmt_k(pc)} ({fmt(pratio)}) | "
                        f"{fmt(self.cell(run, srv, sc, 'client_core_pct'), 0)} | "
                        f"{self.cell(run, srv, sc, 'completed'):,.0f} | {self.cell(run, srv, sc, 'lost'):.0f} | "
                        f"{fmt(lr.get('rate'), 0)} | {fmt(lr.get('p50_ms'), 3)} | {fmt(lr.get('p99_ms'), 3)} | "
                        f"{fmt(mem[0], 0)} / {fmt(mem[1], 0)} ({fmt(mem[2], 0)}) |"
                    )
        soaks = [r for r in self.rows if r.get("run") == "soak" and r["scenario"] == "soak"]
        if soaks:
            w("")
            w("## Soak: 80 % of each server's own cold peak, open loop, with faults")
            w("")
            w("| server | rep | rate | sent | lost | loss % | faults |")
            w("|---|---|---|---|---|---|---|")
            for r in soaks:
                w(
                    f"| {r['server']} | {r['rep']} | {r['rate']:,} | {r['sent']:,} | {r['lost']:,} | "
                    f"{fmt(r['loss_pct'], 4)} | {r['faults']} |"
                )
        flips = [r for r in self.rows if r.get("run") == "flip" and r["scenario"] == "flip"]
        if flips:
            w("")
            w("Verdict flips during the flip run (us down/up every 2 s):")
            w("")
            for r in flips:
                w(
                    f"* {r['server']} (rep {r['rep']}): {r.get('flips', 0)} flips made ({r.get('flip_how', '')}); "
                    f"{r.get('verdict_changes', '-')} verdict changes in its log"
                )
        spurious = {}
        for r in self.rows:
            if r["scenario"] == "memory" and r.get("verdicts"):
                other = {dc: n for dc, n in r["verdicts"].items() if r["run"] != "flip" or dc != FLIP_DC}
                spurious[f"{r['run']} ({r['server']}, rep {r['rep']})"] = other
        spurious = {k: v for k, v in spurious.items() if v}
        if spurious:
            w("")
            w(f"Verdict changes nobody asked for (a probe reply late on the busy client core): {spurious}")
        gs = [self.cell("cold", "gslb-py", "stream", k) for k in ("qps", "qps_per_core")]
        bs = [self.cell("cold", "bare", "stream", k) for k in ("qps", "qps_per_core")]
        if gs[0] and bs[0]:
            w("")
            w(
                f"gslb's pure-Python loop / the bare Python loop, cold stream: {fmt(div(gs[0], bs[0]))} in qps, "
                f"{fmt(div(gs[1], bs[1]))} per server core (medians)."
            )
        if self.starts:
            w("")
            w("## Start: process start to first answer (GeoLite2-City)")
            w("")
            w("| server | starts | first s | later starts: median s (min-max) |")
            w("|---|---|---|---|")
            for srv in ("gslb", "gslb-py", "gdnsd", "bare"):
                t = [r["start_s"] for r in self.starts if r["server"] == srv]
                if not t:
                    continue
                rest = t[1:]
                later = f"{statistics.median(rest):.2f} ({min(rest):.2f}-{max(rest):.2f})" if rest else "-"
                w(f"| {srv} | {len(t)} | {t[0]:.2f} | {later} |")
            w("")
            w(
                "gslb's first start uses a new state and zones directory, so nothing an earlier invocation "
                "compiled is cached beside either; the later starts are restarts with what the first kept."
            )
        if self.scope:
            sc = self.scope
            w("")
            w(f"## ECS scope over {sc['samples']} random public /24s (www A)")
            w("")
            w("| | gslb | gdnsd | database network |")
            w("|---|---|---|---|")
            w(f"| median scope | /{sc['median_gslb']:g} | /{sc['median_gdnsd']:g} | /{sc['median_db']:g} |")
            w(
                f"| narrower than the database network | {sc['gslb_narrower_than_db']} | "
                f"{sc['gdnsd_narrower_than_db']} | |"
            )
            w("")
            w(
                f"gslb wider than gdnsd for {sc['gslb_wider_than_gdnsd']}, narrower for "
                f"{sc['gslb_narrower_than_gdnsd']}; answers differ for {sc['answers_differ']}; database "
                f"networks finer than /24: {sc['db_finer_than_24']} (not counted as narrower)."
            )
            for e in sc["examples_narrower"] + sc["examples_differ"]:
                w(f"* {e}")
        if self.notes:
            w("")
            w("## Notes")
            w("")
            for n in self.notes:
                w("* " + n.replace("\n", " ")[:1500])
        return "\n".join(out)

    def save(self, text: str) -> None:
        base = self.run / f"stream-results-{self.stamp}"
        bench.save_json_md(
            base, text, meta=self.meta, notes=self.notes, starts=self.starts, scope=self.scope, rows=self.rows
        )
        print(f"\nwrote {base}.md and {base}.json", flush=True)

    @staticmethod
    def version(package: str) -> str:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=False)
        return f"{package} {r.stdout.strip() or '?'}"

    def main(self) -> int:
        t0 = time.monotonic()
        self.prepare()
        import maxminddb

        with maxminddb.open_database(str(self.mmdb)) as reader:
            build = datetime.datetime.fromtimestamp(reader.metadata().build_epoch, datetime.UTC).date()
        self.meta = {
            "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "cpus": os.cpu_count(),
            "cpu_model": bench.cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "gslb_rev": self.rev,
            "gdnsd": self.version("gdnsd"),
            "dnsperf": self.version("dnsperf"),
            "db_build": str(build),
            "load1_start": bench.load1(),
            "args": {k: str(v) for k, v in vars(self.a).items()},
        }
        for rep in range(1, self.a.reps + 1):
            self.rep = rep
            for run in self.a.runs:
                print(f"run {run} (rep {self.rep}):", flush=True)
                if run == "scope":
                    if self.rep == 1:
                        self.scopes()
                elif run == "cold":
                    for name in ("gslb", "gslb-py", "bare", "gdnsd"):
                        if name != "gslb-py" or self.has_py_loop:
                            self.one(name, run)
                else:
                    self.one("gslb", run)
                    self.one("gdnsd", run)
        self.meta["load1_end"] = bench.load1()
        self.meta["wall_s"] = time.monotonic() - t0
        text = self.report()
        print("\n" + text, flush=True)
        self.save(text)
        return 0


def verdict_changes(log: str) -> dict[str, int]:
    """Data center -> how many DOWN and UP verdicts a gslb log has."""
    out: dict[str, int] = {}
    for line in log.splitlines():
        if "gslb.health:" in line and (" DOWN: " in line or " UP: " in line):
            dc = line.split("gslb.health:", 1)[1].split()[0]
            out[dc] = out.get(dc, 0) + 1
    return out


class Flipper:
    """Flips FLIP_DC's verdict every `every` seconds while a measurement runs."""

    def __init__(self, sb: StreamBench, s: bench.Server, seconds: float | None = None) -> None:
        self.sb, self.s = sb, s
        self.seconds = seconds if seconds is not None else sb.a.duration
        self.flips = 0
        self.log_offset = len(s.log_text())

    def set_down(self, down: bool) -> None:
        if self.s.name == "gslb":
            assert self.sb.health is not None
            if down:
                self.sb.health.down.add(FLIP_DC)
            else:
                self.sb.health.down.discard(FLIP_DC)
        else:
            peer_configs.gdnsd_admin_state(self.sb.state_dir, [FLIP_DC] if down else [])

    def run(self) -> None:
        end = time.monotonic() + self.seconds
        down = False
        every = self.sb.a.flip_every
        try:
            while time.monotonic() + every < end + 0.01:
                time.sleep(every)
                down = not down
                self.set_down(down)
                self.flips += 1
            time.sleep(max(0.0, end - time.monotonic()))
        finally:
            self.set_down(False)

    def result(self) -> dict[str, Any]:
        text = self.s.log_text()[self.log_offset :]
        if self.s.name == "gslb":
            changes = verdict_changes(text).get(FLIP_DC, 0)
            how = f"probe endpoint of {FLIP_DC} 503/200"
        else:
            changes = sum(1 for line in text.splitlines() if "admin_state: (re-)loading" in line)
            how = f"admin_state geoip/www/{FLIP_DC} => DOWN / empty"
        return {"flips": self.flips, "verdict_changes": changes, "flip_how": how}


class Faults(Flipper):
    """The soak's faults: FLIP_DC flipped every `every` seconds and, for gslb, a reload
    (SIGHUP: a new generation of workers) every 4 s and one worker killed outright midway."""

    def __init__(self, sb: StreamBench, s: bench.Server, seconds: float) -> None:
        super().__init__(sb, s, seconds)
        self.reloads = 0
        self.killed = 0

    def workers(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.s.pid}/task/{self.s.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def run(self) -> None:
        if self.s.name != "gslb":
            super().run()
            return
        end = time.monotonic() + self.seconds
        started = time.monotonic()
        next_flip, next_reload, down = started + self.sb.a.flip_every, started + 4.0, False
        kill_at = started + self.seconds / 2
        try:
            while (now := time.monotonic()) < end - 0.05:
                if now >= next_flip:
                    down = not down
                    self.set_down(down)
                    self.flips += 1
                    next_flip += self.sb.a.flip_every
                if "reload" in self.sb.a.soak_faults and now >= next_reload and now < end - 2:
                    os.kill(self.s.pid, signal.SIGHUP)
                    self.reloads += 1
                    next_reload += 4.0
                if "kill" in self.sb.a.soak_faults and kill_at and now >= kill_at:
                    workers = self.workers()
                    if workers:
                        os.kill(workers[0], signal.SIGKILL)
                        self.killed += 1
                    kill_at = 0
                time.sleep(0.02)
        finally:
            self.set_down(False)

    def result(self) -> dict[str, Any]:
        out = super().result()
        faults = f"{self.flips} flips"
        if self.s.name == "gslb":
            faults += f", {self.reloads} reloads (SIGHUP), {self.killed} worker killed (SIGKILL)"
        out["faults"] = faults
        return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-l", "--duration", type=float, default=10.0, help="seconds per maximum-rate run (default 10)")
    ap.add_argument(
        "--sender",
        choices=("blast", "dnsperf"),
        default="blast",
        help="load generator: blast (blast.c, batched; built with gcc, the default) or dnsperf -B",
    )
    ap.add_argument("--outstanding", type=int, help="queries in flight at most (default: blast 256, dnsperf 100)")
    ap.add_argument("--reps", type=int, default=1, help="repeat the runs (scope once); tables give medians")
    ap.add_argument("--runs", default=",".join(RUNS), help=f"comma list from {','.join(RUNS)} (default: all)")
    ap.add_argument("--queries", type=int, default=3_000_000, help="cold stream length (default 3,000,000)")
    ap.add_argument("--latency-queries", type=int, default=200_000, help="networks kept for the latency runs")
    ap.add_argument("--warm-queries", type=int, default=60_000, help="the replayed stream (default 60,000)")
    ap.add_argument("--latency-seconds", type=float, default=3.0, help="length of each fixed-rate run (default 3)")
    ap.add_argument("--latency-rate", type=int, default=5000, help="fixed rate when gslb was not measured")
    ap.add_argument("--flip-every", type=float, default=2.0, help="seconds between verdict flips (default 2)")
    ap.add_argument("--soak-seconds", type=float, default=15.0, help="length of the soak run (default 15)")
    ap.add_argument("--soak-rate", type=int, default=50_000, help="soak rate when no cold run measured the peak")
    ap.add_argument(
        "--soak-faults",
        default="flip,reload,kill",
        help="faults during the soak, from flip,reload,kill (default: all; flips always)",
    )
    ap.add_argument("--scope-samples", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--geodb", type=Path, help="default: GeoLite2-City from the PyPI package maxminddb-geolite2")
    ap.add_argument("--gslb-arg", action="append", default=[], help="extra argument for `gslb serve` (repeatable)")
    ap.add_argument("--gslb-rev", default="HEAD", help="git revision of gslb to measure, or 'worktree'")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="seconds a server may take to answer")
    ap.add_argument("--server-cpu", type=int, default=1)
    ap.add_argument("--client-cpu", type=int, default=0)
    ap.add_argument("--run-dir", type=Path, default=HERE / "run")
    ap.add_argument("--no-install", action="store_true", help="fail instead of apt-installing dnsperf and gdnsd")
    a = ap.parse_args(argv)
    a.runs = [r for r in a.runs.split(",") if r]
    for r in a.runs:
        if r not in RUNS:
            ap.error(f"unknown run {r!r}")
    if a.duration > 15 or a.latency_seconds > 15 or a.soak_seconds > 15:
        ap.error("keep each run at 15 s or less (the machine is shared)")
    a.run_dir = a.run_dir.resolve()
    a.outstanding = a.outstanding or (256 if a.sender == "blast" else 100)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bench.take_client_cpu(args)
    sb = StreamBench(args)
    try:
        return sb.main()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process started", file=sys.stderr)
        return 130
    finally:
        bench.PROCS.stop_all()
        if sb.health is not None:
            with contextlib.suppress(Exception):
                sb.health.close()


if __name__ == "__main__":
    sys.exit(main())
