"""Benchmark: CPU use and schedule drift of HealthMonitor probing many loopback targets.

Run: python tests/bench/bench_probes.py [--targets 1000] [--seconds 20] [--kind http|tcp]
                                        [--via-httpx] [--hanging 0.1]

A child process answers HTTP on a few 127.0.0.1 ports (and on a few 127.0.1.x addresses,
all loopback on Linux); this process runs one HealthMonitor over all targets and reports its
own CPU time per wall second and how late probes started against their schedule.
--via-httpx sends plain HTTP through httpx instead of the lean path (follow_redirects=True);
--hanging sends that fraction of the targets to ports that accept and never answer.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import logging
import multiprocessing
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from gslb.config.model import Check, Target
from gslb.health.monitor import HealthMonitor
from gslb.health.probe import ProbeResult
from gslb.health.view import HealthView

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


class _Responder(asyncio.Protocol):
    """Answers one request per connection with 200 and closes."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if b"\r\n\r\n" in self.buffer:
            self.transport.write(RESPONSE)  # type: ignore[attr-defined]
            self.transport.close()


class _Hang(asyncio.Protocol):
    """Accepts and never answers."""


def _serve(
    endpoints: list[tuple[str, int]],
    hanging: list[tuple[str, int]],
    ready: multiprocessing.synchronize.Event,
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        for protocol, where in ((_Responder, endpoints), (_Hang, hanging)):
            for host, port in where:
                await loop.create_server(protocol, host, port, backlog=1024, reuse_address=True)
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(main())


def _percentiles(values: list[float]) -> str:
    if not values:
        return "n/a"
    values = sorted(values)

    def at(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return f"p50 {at(0.50):.2f} ms, p99 {at(0.99):.2f} ms, max {values[-1] * 1000:.2f} ms"


async def _bench(targets: list[Target], seconds: float, warmup: float) -> None:
    lateness: list[float] = []
    latency: list[float] = []
    results: collections.Counter[str] = collections.Counter()
    measuring = False
    changes = 0

    def on_probe(target: Target, result: ProbeResult, late: float) -> None:
        if measuring:
            lateness.append(late)
            latency.append(result.latency)
            results[result.result] += 1

    def on_change(view: HealthView) -> None:
        nonlocal changes
        changes += 1

    monitor = HealthMonitor(targets, on_probe=on_probe, on_change=on_change)
    runner = asyncio.create_task(monitor.run())
    await asyncio.sleep(warmup)
    measuring = True
    cpu0, wall0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    measuring = False
    down = sum(not monitor.view.is_up(t.name) for t in targets)
    await monitor.close()
    await runner

    check = targets[0].check
    kind = check.kind
    if kind == "http":
        kind += " via httpx" if check.follow_redirects else " via the lean path"
    probes = sum(results.values())
    print(
        f"targets {len(targets)} ({kind}), interval {check.interval} s, "
        f"measured {wall:.1f} s after {warmup:.0f} s warm-up"
    )
    print(f"probes {probes} ({probes / wall:.0f}/s), results {dict(results)}")
    print(f"down at the end {down}, up/down changes {changes}")
    print(
        f"monitor CPU {cpu:.2f} s = {100 * cpu / wall:.1f} % of one core "
        f"({1e6 * cpu / max(probes, 1):.0f} µs per probe)"
    )
    print(f"start lateness (actual - scheduled): {_percentiles(lateness)}")
    print(f"probe latency: {_percentiles(latency)}")
    print(f"max RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--kind", choices=("http", "tcp"), default="http")
    parser.add_argument("--via-httpx", action="store_true")
    parser.add_argument("--hanging", type=float, default=0.0, metavar="FRACTION")
    parser.add_argument("--base-port", type=int, default=18_080)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # a thousand DOWN lines are not a result

    hosts = ["127.0.0.1", *(f"127.0.1.{i}" for i in range(1, 5))]
    endpoints = [(host, args.base_port + p) for host in hosts for p in range(4)]
    hanging = [(host, args.base_port + 10) for host in hosts]
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    server = ctx.Process(target=_serve, args=(endpoints, hanging, ready), daemon=True)
    server.start()
    try:
        if not ready.wait(10):
            raise SystemExit("responder did not start")
        check = Check(kind=args.kind, interval=args.interval, timeout=0.8, follow_redirects=args.via_httpx)
        n_hanging = round(args.targets * args.hanging)
        targets = []
        for i in range(args.targets):
            pool = hanging if i < n_hanging else endpoints
            host, port = pool[i % len(pool)]
            targets.append(Target(f"dc{i}", host, dataclasses.replace(check, port=port)))
        asyncio.run(_bench(targets, args.seconds, args.warmup))
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
