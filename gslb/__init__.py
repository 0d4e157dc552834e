"""gslb: an authoritative DNS server that load-balances names across data centers."""

__version__ = "0.1.0"
