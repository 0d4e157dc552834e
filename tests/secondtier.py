"""A real second tier for end-to-end tests and the README demo: nginx per data center, two backends each.

    python -m tests.secondtier DIR    # starts it all on 127.0.{1,2,3}.1:8080 until Ctrl-C

Every run has a random token that only its nginx and its backends send, so a test that reaches
some other process listening on the address fails at once, saying so, instead of on its body.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

DATACENTERS = {"us": "127.0.1.1", "eu": "127.0.2.1", "ap": "127.0.3.1"}
PORT = 8080
START_TIMEOUT = 10.0  # seconds for nginx to serve our token


class SecondTierError(Exception):
    """nginx did not start, or something other than our second tier answers on its address."""


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream backends {{
        server 127.0.0.1:{backend1};
        server 127.0.0.1:{backend2};
    }}
    server {{
        listen {vip}:{port};
        location = /health {{ return 200 "ok {name} {token}\\n"; }}
        location / {{ proxy_pass http://backends; }}
    }}
{status}}}
"""
# The load source (gslb.health.load): nginx's stub_status on a port of its own, so that a test
# can take it away and leave the balancer serving.
STATUS_SERVER = """\
    server {{
        listen {vip}:{port};
        location = /stub_status {{ stub_status; }}
    }}
"""
_STUB_REQUESTS = re.compile(r"server accepts handled requests\s+\d+\s+\d+\s+(\d+)")


class Backend:
    """A small HTTP server that answers every GET with one body (by default, on loopback port 0)."""

    def __init__(self, body: str, host: str = "127.0.0.1", port: int = 0):
        body_bytes = body.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(body_bytes)))
                self.end_headers()
                self.wfile.write(body_bytes)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Balancer:
    """One data center's nginx, on its VIP, proxying to two backends."""

    def __init__(
        self,
        name: str,
        directory: Path,
        vip: str | None = None,
        port: int = PORT,
        token: str | None = None,
        status_port: int | None = None,
    ):
        self.name = name
        self.vip = vip or DATACENTERS[name]
        self.port = port
        self.status_port = status_port  # stub_status at http://VIP:status_port/stub_status; None: none
        self.token = token or secrets.token_hex(8)
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        # Each says which backend answered, and the run's token.
        self.backends = [Backend(f"backend {name}-{i} {self.token}\n") for i in (1, 2)]
        self.conf = self.directory / "nginx.conf"
        self._write_conf(status_port is not None)
        self.error_log = self.directory / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.hang: socket.socket | None = None

    def _write_conf(self, status: bool) -> None:
        self.conf.write_text(
            NGINX_CONF.format(
                dir=self.directory,
                vip=self.vip,
                port=self.port,
                name=self.name,
                token=self.token,
                backend1=self.backends[0].port,
                backend2=self.backends[1].port,
                status=STATUS_SERVER.format(vip=self.vip, port=self.status_port) if status else "",
            )
        )

    @property
    def status_url(self) -> str:
        return f"http://{self.vip}:{self.status_port}/stub_status"

    def requests(self) -> int:
        """nginx's request counter, read from its stub_status (each read counts one more)."""
        assert self.status_port is not None
        body = _get(self.vip, self.status_port, "/stub_status", timeout=2)
        found = _STUB_REQUESTS.search(body or "")
        if found is None:
            raise SecondTierError(f"{self.status_url} answered {body!r}, not a stub_status page")
        return int(found.group(1))

    def stop_status(self) -> None:
        """Take the stub_status server away (nginx reloads its configuration); the VIP keeps serving."""
        assert self.proc is not None and self.status_port is not None
        self._write_conf(False)
        self.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + START_TIMEOUT
        while _listening(self.vip, self.status_port):
            if time.monotonic() > deadline:
                raise SecondTierError(f"nginx for {self.name} still serves {self.status_url}: {self._errors()}")
            time.sleep(0.02)

    @property
    def health_body(self) -> str:
        return f"ok {self.name} {self.token}\n"

    def start(self) -> None:
        """Start nginx and return once it serves this run's token; SecondTierError if not."""
        if _listening(self.vip, self.port):
            raise SecondTierError(f"{self.vip}:{self.port} is taken by another process: not starting nginx there")
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        with (self.directory / "nginx.stderr").open("wb") as stderr:
            # -e: nginx's own errors go to our file from the start, not to /var/log/nginx.
            self.proc = subprocess.Popen(
                [nginx, "-c", str(self.conf), "-p", str(self.directory), "-e", str(self.error_log)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            status = self.proc.poll()
            if status is not None:
                self.proc = None
                raise SecondTierError(f"nginx for {self.name} exited with status {status}: {self._errors()}")
            body = _get(self.vip, self.port, "/health")
            if body == self.health_body:
                return
            if body is not None:  # a listener that is not ours
                self.stop()
                raise SecondTierError(f"{self.vip}:{self.port} answers {body!r}, not our nginx for {self.name}")
            if time.monotonic() > deadline:
                self.stop()
                raise SecondTierError(
                    f"nginx for {self.name} did not serve {self.vip}:{self.port} in "
                    f"{START_TIMEOUT:.0f} s: {self._errors()}"
                )
            time.sleep(0.02)

    def _errors(self) -> str:
        for path in (self.error_log, self.directory / "nginx.stderr"):  # stderr: before the log opened
            text = path.read_text(errors="replace").strip() if path.exists() else ""
            if text:
                return text
        return "(nothing in its error log)"

    def fetch(self, path: str = "/") -> str:
        """GET through this nginx; SecondTierError unless the body is our backends' (or nginx's)."""
        body = _get(self.vip, self.port, path, timeout=5)
        if body is None or not body.rstrip("\n").endswith(self.token):
            raise SecondTierError(f"{self.vip}:{self.port}{path} answered {body!r}: not this run's second tier")
        return body

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: connections drop now
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        # Once the master has exited its listening socket is closed: nothing to wait for.
        self.proc = None

    def start_hanging(self) -> None:
        """Accept connections on the VIP and never answer, like a wedged balancer."""
        self.stop()
        self.hang = socket.socket()
        self.hang.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.hang.bind((self.vip, self.port))
        self.hang.listen(128)  # the kernel completes handshakes; nobody ever reads

    def stop_hanging(self) -> None:
        if self.hang is not None:
            self.hang.close()
            self.hang = None

    def close(self) -> None:
        self.stop_hanging()
        with contextlib.suppress(Exception):
            self.stop()
        for backend in self.backends:
            backend.close()


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def _get(host: str, port: int, path: str, timeout: float = 0.5) -> str | None:
    """The body of GET `path`, or None when nothing answers HTTP there."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().read().decode(errors="replace")
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def free_addresses(count: int, rng: random.Random | None = None) -> tuple[list[str], int]:
    """`count` loopback addresses in a /16 of 127/8 chosen at random, and a TCP port free on all.

    Other software on the machine listens on 127.0.0.1 and, in the README's demo, on
    127.0.x.1:8080; a second octet of 100-254 and a port the kernel hands out stay clear of both
    and of another test run at the same time. The port is checked free on every address.
    """
    rng = rng or random.Random()
    for _ in range(50):
        second = rng.randrange(100, 255)
        addresses = [f"127.{second}.{third}.1" for third in range(1, count + 1)]
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = probe.getsockname()[1]
        if all(_bindable(address, port) for address in addresses):
            return addresses, port
    raise SecondTierError("no loopback addresses with a free port found")


def free_port(addresses: list[str]) -> int:
    """Another TCP port free on every one of `addresses` (from free_addresses)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((addresses[0], 0))
            port = int(probe.getsockname()[1])
        if all(_bindable(address, port) for address in addresses[1:]):
            return port
    raise SecondTierError(f"no port free on all of {', '.join(addresses)}")


@contextlib.contextmanager
def running(directory: Path, status: bool = False) -> Iterator[dict[str, Balancer]]:
    """nginx for us, eu and ap on loopback addresses and a port chosen for this run, started;
    with `status`, each with stub_status on a second port of its own."""
    addresses, port = free_addresses(len(DATACENTERS))
    status_port = free_port(addresses) if status else None
    token = secrets.token_hex(8)
    started = {
        name: Balancer(name, directory, vip=vip, port=port, token=token, status_port=status_port)
        for name, vip in zip(DATACENTERS, addresses, strict=True)
    }
    try:
        for balancer in started.values():
            balancer.start()
        yield started
    finally:
        for balancer in started.values():
            balancer.close()


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return not _listening(host, port)


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gslb-secondtier")
    token = secrets.token_hex(4)
    balancers = [Balancer(name, directory, token=token) for name in DATACENTERS]
    for balancer in balancers:
        balancer.start()
        print(
            f"{balancer.name}: nginx on {balancer.vip}:{balancer.port} -> backends "
            f"{', '.join(str(b.port) for b in balancer.backends)}"
        )
    print(f"every body ends in this run's token, {token}; Ctrl-C stops them all")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for balancer in balancers:
            balancer.close()


if __name__ == "__main__":
    main()
