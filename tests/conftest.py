"""Shared fixtures: a real `gslb serve` process on loopback, and clients (dig, dnspython) for it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rrset
import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ZONES = ROOT / "zones"


class Server:
    """A `gslb serve` subprocess; its log lines are collected and can be waited on."""

    def __init__(self, args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None):
        self.args = args
        self.lines: list[str] = []
        self._cond = threading.Condition()
        # No status page unless a test asks for one: they would all want port 8053.
        http = [] if "--http" in args else ["--http", "off"]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gslb", "serve", "--listen", "127.0.0.1:0", *http, *args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=cwd,
            env={**os.environ, **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_log(r"listening on 127\.0\.0\.1:(\d+)", timeout=20)
        match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        assert match
        self.port = int(match.group(1))
        self.wait_log(r"serving \d+ zones", timeout=20)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()

    def wait_log(self, pattern: str, timeout: float = 10, start: int = 0) -> str:
        """Wait for a log line matching `pattern` (from line index `start`)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines[start:]:
                    if regex.search(line):
                        return line
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no log line matching {pattern!r}; log:\n" + "\n".join(self.lines))
                self._cond.wait(remaining)

    def mark(self) -> int:
        with self._cond:
            return len(self.lines)

    def query(
        self, name: str, rdtype: str = "A", *, tcp: bool = False, timeout: float = 3, **make: object
    ) -> dns.message.Message:
        message = dns.message.make_query(name, rdtype, **make)  # type: ignore[arg-type]
        return self.send(message, tcp=tcp, timeout=timeout)

    def send(self, message: dns.message.Message, *, tcp: bool = False, timeout: float = 3) -> dns.message.Message:
        if tcp:
            return dns.query.tcp(message, "127.0.0.1", port=self.port, timeout=timeout)
        return dns.query.udp(message, "127.0.0.1", port=self.port, timeout=timeout, ignore_trailing=False)

    def dig(self, *args: str) -> str:
        out = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(self.port), "+time=2", "+tries=1", *args],
            capture_output=True,
            text=True,
            timeout=15,
        )
        return out.stdout

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


@pytest.fixture
def start_server() -> Iterator[type[Server]]:
    servers: list[Server] = []

    def start(*args: str, **kw: object) -> Server:
        server = Server(list(args), **kw)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        server.stop()


@pytest.fixture(scope="session")
def example_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The example zones, with probes off (every data center up)."""
    state = tmp_path_factory.mktemp("state") / "state.json"
    server = Server(["--zones", str(EXAMPLE_ZONES), "--no-probes", "--state-file", str(state)])
    yield server
    assert server.stop() == 0


def rrsets(text: str) -> list[dns.rrset.RRset]:
    """RRsets written in zone syntax (absolute names), one record per line."""
    out: dict[tuple[str, str], dns.rrset.RRset] = {}
    for line in text.strip().splitlines():
        name, ttl, rdclass, rdtype, *rdata = line.split(None, 4)
        rrset = dns.rrset.from_text(name, int(ttl), rdclass, rdtype, " ".join(rdata))
        key = (name.lower(), rdtype)
        if key in out:
            out[key].union_update(rrset)
        else:
            out[key] = rrset
    return list(out.values())


def same_rrsets(got: list[dns.rrset.RRset], expected: str) -> bool:
    want = rrsets(expected)
    if len(got) != len(want):
        return False
    return all(any(g == w and g.ttl == w.ttl for g in got) for w in want)


def need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.fail(f"{tool} is not installed: run the README's test command, which installs it")
