"""Worker processes: one that dies is replaced at once, and the others answer meanwhile."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import time
from pathlib import Path

import dns.message
import dns.rcode

from tests.conftest import EXAMPLE_ZONES, Server


def _workers(server: Server) -> list[int]:
    """The supervisor's worker processes (forks of it; not a passing helper like ldconfig)."""
    pid = server.proc.pid
    mine = Path(f"/proc/{pid}/cmdline").read_bytes()
    out = []
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        try:
            if Path(f"/proc/{child}/cmdline").read_bytes() == mine:
                out.append(int(child))
        except FileNotFoundError:  # gone meanwhile
            continue
    return out


def test_a_killed_worker_is_replaced_and_nothing_goes_unanswered(start_server: type[Server], tmp_path: Path) -> None:
    server = start_server(
        "--zones", str(EXAMPLE_ZONES), "--no-probes", "--state-file", str(tmp_path / "s.json"), "--workers", "2"
    )
    before = _workers(server)
    assert len(before) == 2
    wire = dns.message.make_query("static.example.com.", "A").to_wire()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.settimeout(2)
        client.connect(("127.0.0.1", server.port))
        mark = server.mark()
        os.kill(before[0], signal.SIGKILL)
        # Queries go on while the worker is replaced: the other one (and then the new one)
        # answers every one of them, in order.
        for i in range(400):
            client.send(struct.pack("!H", i) + wire[2:])
            reply = dns.message.from_wire(client.recv(4096))
            assert reply.id == i and reply.rcode() == dns.rcode.NOERROR
        line = server.wait_log(rf"worker \d \(pid {before[0]}\) exited with status -?\d+; restarting it", start=mark)
        assert line
        started = server.wait_log(r"worker \d started \(pid (\d+)\)", start=mark)
        replacement = int(re.search(r"pid (\d+)", started).group(1))  # type: ignore[union-attr]
    deadline = time.monotonic() + 5
    while sorted(_workers(server)) != sorted([before[1], replacement]):
        assert time.monotonic() < deadline, (_workers(server), before, replacement)
        time.sleep(0.05)
    assert server.query("static.example.com.").rcode() == dns.rcode.NOERROR
