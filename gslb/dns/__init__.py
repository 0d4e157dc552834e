"""The DNS core: wire format, master files, zone data, the answerer, the cookie and RRL guards, the UDP/TCP server."""
