"""The pure-Python ceiling: a bare blocking recvfrom/sendto loop, no lookup, no ECS echo.

Usage: python tests/bench/bare_udp.py PORT   (binds 127.0.0.1:PORT; prints "ready" once bound)

Every reply is the query's ID and question spliced into a fixed header and one A record by a
few slicing operations (the question ends at the first zero byte after the header, which
holds for the benchmark stream's names).  No cache, no parsing of the OPT record: this is
what the interpreter and the two system calls cost per datagram on this machine, and no
Python server can answer faster.  Not a DNS server: for the benchmark only.
"""

from __future__ import annotations

import contextlib
import socket
import sys

FLAGS_COUNTS = bytes.fromhex("84000001000100000000")  # QR AA, QD 1, AN 1
ANSWER = bytes.fromhex("c00c000100010000001e0004") + socket.inet_aton("192.0.2.1")


def serve(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind(("127.0.0.1", port))
    print("ready", flush=True)
    recvfrom, sendto, find = s.recvfrom, s.sendto, bytes.find
    flags, answer = FLAGS_COUNTS, ANSWER
    while True:
        data, addr = recvfrom(4096)
        end = find(data, b"\x00", 12) + 5
        if 16 < end <= len(data):
            sendto(data[:2] + flags + data[12:end] + answer, addr)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        serve(int(sys.argv[1]))
