"""Signed against unsigned in the same run, DO set on every query: what DNSSEC costs gslb.

    python tests/bench/dnssec_bench.py [-l SECONDS] [--reps N] [--mixes mix,static,www,nx-repeat]

Two copies of the example zones: as they are (unsigned), and with a key made by `gslb keys
generate` (signed), both locating clients in the real GeoLite2-City (PyPI maxminddb-geolite2;
--geodb for another database).  Two gslb servers (the working tree, --workers 1, the compiled loop, probes
off), one for each, both pinned to one core (taskset), blast.c on the other; each mix is sent at
the sender's maximum rate in short runs that alternate unsigned / signed, so that whatever else
the machine does falls on both alike.  The table gives medians of qps and of queries per CPU
second of the server's processes (user + system, from /proc: the figure that other load on a
shared machine disturbs least), and the medians of the ratios signed / unsigned of each pair of
neighbouring runs.  Every query has EDNS (payload 1232) with DO set, so the signed server
answers each with its RRSIGs (and NSEC proofs) and the unsigned one with today's bytes.

Mixes (-B files, every query a new random public /24 as ECS where it says so):
  mix        make_queries' mix over example.com: 50% www A, 10% www AAAA, 30% static A/AAAA,
             10% SOA/NS; every query its own ECS /24 (the never-repeating case)
  static     static.example.com A
  www        www.example.com A, every query its own ECS /24
  nx-repeat  1,000 names that do not exist, again and again (signed denials are per name:
             each is signed on its first query, then answered from what was kept)

Also prints how many signatures the example needs and how long they take (built in process).
All traffic goes to 127.0.0.1; the ECS networks are option bytes only.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dns.edns
import dns.flags
import dns.message

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT))

MIXES = ("mix", "static", "www", "nx-repeat")
SERVE = ["--workers", "1", "--no-probes", "--http", "off", "--log-level", "info"]
MIX = [("www", "A")] * 50 + [("www", "AAAA")] * 10 + [("static", "A")] * 20 + [("static", "AAAA")] * 10
MIX += [("", "SOA")] * 5 + [("", "NS")] * 5


def public_24(rng: random.Random) -> str:
    while True:
        first = rng.randrange(1, 224)
        if first not in (10, 127, 100, 169, 172, 192, 198, 203):
            return f"{first}.{rng.randrange(256)}.{rng.randrange(256)}.0"


def queries(mix: str, count: int, rng: random.Random) -> list[bytes]:
    out = []
    missing = [f"nx{rng.getrandbits(40):x}.example.com." for _ in range(1000)]
    for i in range(count):
        options: list[dns.edns.Option] = []
        if mix == "static":
            name, rdtype = "static.example.com.", "A"
        elif mix == "nx-repeat":
            name, rdtype = missing[i % len(missing)], "A"
        else:
            label, rdtype = rng.choice(MIX) if mix == "mix" else ("www", "A")
            name = f"{label}.example.com." if label else "example.com."
            options = [dns.edns.ECSOption(public_24(rng), 24)]
        message = dns.message.make_query(name, rdtype, use_edns=0, payload=1232, options=options)
        message.ednsflags |= dns.flags.DO
        out.append(message.to_wire())
    return out


def write_bin(path: Path, messages: list[bytes]) -> None:
    path.write_bytes(b"".join(struct.pack("!H", len(m)) + m for m in messages))


def build_blast(directory: Path) -> Path:
    out = directory / "blast"
    subprocess.run(["gcc", "-O2", "-Wall", "-o", str(out), str(HERE / "blast.c")], check=True)
    return out


def cores() -> tuple[list[str], list[str]]:
    """taskset prefixes: the server on core 0, the sender on core 1 (nothing when one core)."""
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        return [], []
    return ["taskset", "-c", "0"], ["taskset", "-c", "1"]


class Server:
    def __init__(self, zones: Path, pin: list[str], geodb: Path):
        serve = ["serve", "--zones", str(zones), "--geodb", str(geodb), "--listen", "127.0.0.1:0", *SERVE]
        self.proc = subprocess.Popen(
            [*pin, sys.executable, "-m", "gslb", *serve],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self.port = 0
        self.seen: list[str] = []
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            self.seen.append(line)
            if "listening on 127.0.0.1:" in line:
                self.port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
            if "compiled loop" in line and self.port:
                return
        raise RuntimeError("gslb did not start:\n" + "".join(self.seen))

    def cpu(self) -> float:
        """CPU seconds (user + system) of the server's processes so far: the supervisor and its worker."""
        total = 0.0
        pids = [self.proc.pid]
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        if children.exists():
            pids += [int(p) for p in children.read_text().split()]
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        return total

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def blast(binary: Path, pin: list[str], port: int, qfile: Path, seconds: float) -> dict[str, float]:
    done = subprocess.run(
        [*pin, str(binary), "-s", "127.0.0.1", "-p", str(port), "-f", str(qfile), "-l", str(seconds), "-q", "256"],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    values: dict[str, float] = {}
    for line in done.stdout.splitlines():
        key, _, value = line.partition(" ")
        try:
            values[key] = float(value.split()[0])
        except (ValueError, IndexError):
            continue
    return values


def signing_figures(zones: Path) -> str:
    from gslb.snapshot import Sources, build

    snapshot = build(Sources(zones))
    signing = snapshot.signing
    assert signing is not None
    services = sum(signing.service_sets.values())
    return (
        f"the example needs {signing.presigned} signatures made ahead ({services} of them service answers), "
        f"made in {signing.seconds * 1000:.1f} ms"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-l", "--duration", type=float, default=2.0, help="seconds per run (default 2)")
    ap.add_argument("--reps", type=int, default=7, help="runs per server and mix (default 7)")
    ap.add_argument("--mixes", default=",".join(MIXES), help=f"comma list from {','.join(MIXES)}")
    ap.add_argument("--queries", type=int, default=300_000, help="queries per mix file (default 300,000)")
    ap.add_argument("--geodb", type=Path, help="the MMDB both servers read (default: GeoLite2-City)")
    a = ap.parse_args()
    from tests.bench.stream import geolite2_city

    geodb = a.geodb or geolite2_city()
    mixes = [m for m in a.mixes.split(",") if m]
    work = Path(tempfile.mkdtemp(prefix="gslb-dnssec-bench-"))
    try:
        unsigned, signed = work / "unsigned", work / "signed"
        shutil.copytree(ROOT / "zones", unsigned)
        shutil.copytree(ROOT / "zones", signed)
        made = subprocess.run(
            [sys.executable, "-m", "gslb", "keys", "generate", "example.com", "--zones", str(signed)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        print(made.stdout.splitlines()[0], flush=True)
        print(signing_figures(signed), flush=True)
        binary = build_blast(work)
        server_pin, sender_pin = cores()
        rng = random.Random(4035)
        files = {}
        for mix in mixes:
            files[mix] = work / f"{mix}.bin"
            write_bin(files[mix], queries(mix, a.queries, rng))
        both = (("unsigned", unsigned), ("signed", signed))
        servers = {label: Server(zones, server_pin, geodb) for label, zones in both}
        qps: dict[tuple[str, str], list[float]] = {}
        per_cpu: dict[tuple[str, str], list[float]] = {}
        try:
            for mix in mixes:
                for server in servers.values():  # a warm-up: the per-name signatures, the caches
                    blast(binary, sender_pin, server.port, files[mix], 1.0)
                for rep in range(a.reps):
                    for label, server in servers.items():
                        before = server.cpu()
                        got = blast(binary, sender_pin, server.port, files[mix], a.duration)
                        used = server.cpu() - before
                        qps.setdefault((mix, label), []).append(got.get("qps", 0.0))
                        per_cpu.setdefault((mix, label), []).append(got.get("completed", 0.0) / used if used else 0.0)
                        print(f"rep {rep + 1} {label:8} {mix:9} {got.get('qps', 0.0):9.0f} qps  {used:5.2f} cpu s")
        finally:
            for server in servers.values():
                server.stop()
        print()
        print("| mix | unsigned qps | signed qps | ratio | unsigned q/cpu-s | signed q/cpu-s | ratio |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for mix in mixes:
            cells = []
            for table in (qps, per_cpu):
                u, s = table[(mix, "unsigned")], table[(mix, "signed")]
                ratio = statistics.median(b / a if a else math.nan for a, b in zip(u, s, strict=True))
                cells += [f"{statistics.median(u):,.0f}", f"{statistics.median(s):,.0f}", f"{ratio:.2f}"]
            print(f"| {mix} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
