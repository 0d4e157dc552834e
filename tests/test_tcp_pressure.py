"""DNS over TCP under pressure (RFC 7766 §6.2.3): idle connections make room, busy ones stay."""

from __future__ import annotations

import os
import re
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from tests.conftest import EXAMPLE_ZONES, Server
from tests.test_dns import _recv_exactly

CAP = 8  # --tcp-max-connections: small, so 3x the total cap is quick to open
WORKERS = 2


def _ask(sock: socket.socket, name: str = "static.example.com.") -> dns.message.Message:
    wire = dns.message.make_query(name, "A").to_wire()
    sock.sendall(struct.pack("!H", len(wire)) + wire)
    length = struct.unpack("!H", _recv_exactly(sock, 2))[0]
    return dns.message.from_wire(_recv_exactly(sock, length))


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _worker_pids(server: Server) -> list[int]:
    return [int(m.group(1)) for line in server.lines if (m := re.search(r"worker \d+ started \(pid (\d+)\)", line))]


def _closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    finally:
        sock.setblocking(True)


def test_idle_connections_make_room_for_new_clients(start_server: type[Server], tmp_path: Path) -> None:
    server = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        str(WORKERS),
        "--tcp-max-connections",
        str(CAP),
        "--tcp-idle-timeout",
        "30",
        "--state-file",
        str(tmp_path / "s.json"),
    )
    line = server.wait_log(r"TCP: at most \d+ connections per process")
    assert f"at most {CAP} connections per process ({CAP * WORKERS} in all)" in line
    workers = _worker_pids(server)
    assert len(workers) == WORKERS
    # Count the files each worker holds once it serves (its event loop, its sockets): a worker
    # still starting opens a few more after its fork.
    deadline = time.monotonic() + 10
    while sum("UDP on 127.0.0.1:" in line for line in server.lines) < WORKERS:
        assert time.monotonic() < deadline, "the workers did not start serving"
        time.sleep(0.02)
    assert server.query("static.example.com.", tcp=True).rcode() == dns.rcode.NOERROR
    baseline = {pid: _open_files(pid) for pid in workers}

    # Established clients that keep asking, all through the flood.
    busy = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(3)]
    for sock in busy:
        assert _ask(sock).rcode() == dns.rcode.NOERROR
    stop = threading.Event()
    answered: Counter[int] = Counter()
    failures: list[str] = []

    def keep_asking(index: int, sock: socket.socket) -> None:
        while not stop.is_set():
            try:
                assert _ask(sock).rcode() == dns.rcode.NOERROR
            except (OSError, AssertionError) as exc:
                failures.append(f"busy connection {index}: {exc!r}")
                return
            answered[index] += 1
            stop.wait(0.01)

    threads = [threading.Thread(target=keep_asking, args=(i, sock), daemon=True) for i, sock in enumerate(busy)]
    for thread in threads:
        thread.start()
    idle: list[socket.socket] = []
    try:
        # Three times the total cap of connections that never send a byte.
        for _ in range(3 * CAP * WORKERS):
            idle.append(socket.create_connection(("127.0.0.1", server.port), timeout=5))
        # A new client is answered at once, not after the idle timeout.
        started = time.monotonic()
        reply = server.query("static.example.com.", tcp=True, timeout=1)
        assert reply.rcode() == dns.rcode.NOERROR
        assert time.monotonic() - started < 1
        answered_during = sum(answered.values())
        # Each worker holds at most its cap of connections beside the files it had anyway
        # (asyncio accepts a burst before it runs their connection_made: wait for it to settle).
        deadline = time.monotonic() + 3
        while (held := {pid: _open_files(pid) - baseline[pid] for pid in workers}) and any(
            n > CAP for n in held.values()
        ):
            assert time.monotonic() < deadline, f"connections held beyond the cap of {CAP}: {held}"
            stop.wait(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=5)
    assert not failures, failures
    assert answered_during > 0 and len(answered) == len(busy)
    for sock in busy:  # never closed to make room: still answering on the same connection
        assert _ask(sock).rcode() == dns.rcode.NOERROR
    # The server closed the rest of the idle connections to make room.
    closed = sum(_closed_by_server(sock) for sock in idle)
    assert closed >= len(idle) - CAP * WORKERS
    for sock in [*busy, *idle]:
        sock.close()


def test_at_the_cap_the_longest_idle_connection_gives_way(start_server: type[Server], tmp_path: Path) -> None:
    """With every slot established, a newcomer closes the one idle longest (once it is not busy)."""
    server = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "0",
        "--tcp-max-connections",
        "4",
        "--tcp-idle-timeout",
        "30",
        "--state-file",
        str(tmp_path / "s.json"),
    )
    held = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(4)]
    for sock in held:  # held[0] asked first: the longest idle from here on
        assert _ask(sock).rcode() == dns.rcode.NOERROR
    deadline = time.monotonic() + 2
    while True:  # a slot that asked something a moment ago is busy: newcomers wait for that
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as newcomer:
            try:
                assert _ask(newcomer).rcode() == dns.rcode.NOERROR
                break
            except ConnectionError:
                assert time.monotonic() < deadline, "no room made for a new client"
    assert held[0].recv(1) == b""
    for sock in held[1:]:
        assert _ask(sock).rcode() == dns.rcode.NOERROR
    for sock in held:
        sock.close()


def test_idle_timeout_shortens_under_pressure(start_server: type[Server], tmp_path: Path) -> None:
    """Above 75 % of the cap, connections idle for a second are closed; below, the timeout holds."""
    server = start_server(
        "--zones",
        str(EXAMPLE_ZONES),
        "--no-probes",
        "--workers",
        "0",
        "--tcp-max-connections",
        str(CAP),
        "--tcp-idle-timeout",
        "30",
        "--state-file",
        str(tmp_path / "s.json"),
    )
    crowd = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(CAP - 1)]
    started = time.monotonic()
    for sock in crowd:
        assert sock.recv(1) == b""
    assert time.monotonic() - started < 3
    calm = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(2)]
    readable, _, _ = select.select(calm, [], [], 1.6)  # 2 of 8: the configured 30 s apply
    assert readable == []
    for sock in [*crowd, *calm]:
        sock.close()


def test_open_files_limit_is_raised_and_logged(tmp_path: Path) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 512:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to show")
    proc = subprocess.Popen(
        [
            "prlimit",
            f"--nofile=512:{hard}",
            sys.executable,
            "-m",
            "gslb",
            "serve",
            "--zones",
            str(EXAMPLE_ZONES),
            "--no-probes",
            "--http",
            "off",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--state-file",
            str(tmp_path / "s.json"),
        ],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    try:
        lines = []
        for line in proc.stderr:
            lines.append(line)
            if "serving" in line:
                break
        logged = "".join(lines)
        assert f"open files limit {hard} (raised from 512)" in logged, logged
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        proc.stderr.close()
