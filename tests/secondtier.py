"""A real second tier for end-to-end tests and the README demo: nginx per data center, two backends each.

    python -m tests.secondtier DIR    # starts it all on 127.0.{1,2,3}.1:8080 until Ctrl-C
"""

from __future__ import annotations

import contextlib
import http.server
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

DATACENTERS = {"us": "127.0.1.1", "eu": "127.0.2.1", "ap": "127.0.3.1"}
PORT = 8080

NGINX_CONF = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log stderr warn;
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
        location = /health {{ return 200 "ok {name}\\n"; }}
        location / {{ proxy_pass http://backends; }}
    }}
}}
"""


class Backend:
    """A small HTTP server on loopback that says which backend answered."""

    def __init__(self, label: str):
        label_bytes = f"backend {label}\n".encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Length", str(len(label_bytes)))
                self.end_headers()
                self.wfile.write(label_bytes)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Balancer:
    """One data center's nginx, on its VIP, proxying to two backends."""

    def __init__(self, name: str, directory: Path):
        self.name = name
        self.vip = DATACENTERS[name]
        self.directory = directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self.backends = [Backend(f"{name}-1"), Backend(f"{name}-2")]
        conf = NGINX_CONF.format(dir=self.directory, vip=self.vip, port=PORT, name=name,
                                 backend1=self.backends[0].port, backend2=self.backends[1].port)
        self.conf = self.directory / "nginx.conf"
        self.conf.write_text(conf)
        self.proc: subprocess.Popen[bytes] | None = None
        self.hang: socket.socket | None = None

    def start(self) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen([nginx, "-c", str(self.conf), "-p", str(self.directory)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.vip, PORT, up=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # fast shutdown: connections drop now
            self.proc.wait(timeout=10)
        self.proc = None
        _wait_port(self.vip, PORT, up=False)

    def start_hanging(self) -> None:
        """Accept connections on the VIP and never answer, like a wedged balancer."""
        self.stop()
        self.hang = socket.socket()
        self.hang.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.hang.bind((self.vip, PORT))
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


def _wait_port(host: str, port: int, up: bool, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not come {'up' if up else 'down'}")


def main() -> None:
    directory = Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gslb-secondtier")
    balancers = [Balancer(name, directory) for name in DATACENTERS]
    for balancer in balancers:
        balancer.start()
        print(f"{balancer.name}: nginx on {balancer.vip}:{PORT} -> backends "
              f"{', '.join(str(b.port) for b in balancer.backends)}")
    print("Ctrl-C stops them all")
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        for balancer in balancers:
            balancer.close()


if __name__ == "__main__":
    main()
