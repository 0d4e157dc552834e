"""DNSSEC key files: a zone's combined signing keys (CSK) under <zones>/keys/, made, read and turned into DS.

Each key is two files named as BIND names them: `K<zone>+<algorithm>+<tag>.key` holds the
DNSKEY record in zone syntax (public), `K<zone>+<algorithm>+<tag>.pem` the private key as
PKCS#8 PEM, readable by its owner only. A zone is signed exactly when it has a key here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import dns.dnssec
import dns.dnssectypes
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.DNSKEY
import dns.rdtypes.ANY.DS
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

KEYS_DIRECTORY: Final = "keys"
CSK_FLAGS: Final = 257  # ZONE | SEP: one key signs everything and is the one the parent's DS names
ALGORITHMS: Final = {
    "ecdsap256sha256": dns.dnssectypes.Algorithm.ECDSAP256SHA256,
    "ed25519": dns.dnssectypes.Algorithm.ED25519,
}
DEFAULT_ALGORITHM: Final = "ecdsap256sha256"

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyFileError(Exception):
    """A key file that cannot be used, with its path."""


@dataclass(frozen=True, slots=True)
class ZoneKey:
    """One signing key of a zone: its DNSKEY, tag and private half."""

    zone: dns.name.Name
    dnskey: dns.rdtypes.ANY.DNSKEY.DNSKEY
    private: PrivateKey
    path: Path  # the .pem file

    @property
    def tag(self) -> int:
        return dns.dnssec.key_id(self.dnskey)

    @property
    def algorithm(self) -> int:
        return int(self.dnskey.algorithm)

    def ds(self) -> dns.rdtypes.ANY.DS.DS:
        """The DS record for the parent zone (digest SHA-256, RFC 4509)."""
        return dns.dnssec.make_ds(self.zone, self.dnskey, "SHA256")


def directory(zones: Path) -> Path:
    return zones / KEYS_DIRECTORY


def _stem(zone: dns.name.Name, algorithm: int, tag: int) -> str:
    return f"K{zone.to_text().lower()}+{algorithm:03d}+{tag:05d}"


def generate(zones: Path, zone: dns.name.Name, algorithm: str = DEFAULT_ALGORITHM) -> ZoneKey:
    """Make a new CSK for `zone` under <zones>/keys/; the private file is created 0600."""
    number = ALGORITHMS.get(algorithm.lower())
    if number is None:
        raise KeyFileError(f"unknown algorithm {algorithm!r}: one of {', '.join(ALGORITHMS)}")
    private: PrivateKey = (
        ec.generate_private_key(ec.SECP256R1())
        if number == dns.dnssectypes.Algorithm.ECDSAP256SHA256
        else ed25519.Ed25519PrivateKey.generate()
    )
    dnskey = dns.dnssec.make_dnskey(private.public_key(), number, flags=CSK_FLAGS)
    where = directory(zones)
    where.mkdir(mode=0o700, exist_ok=True)
    stem = _stem(zone, int(number), dns.dnssec.key_id(dnskey))
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path, public = where / f"{stem}.pem", where / f"{stem}.key"
    if path.exists() or public.exists():
        raise KeyFileError(f"{public}: a key of this tag exists already; generate again")
    # The public half first: a server reading keys/ meanwhile takes a key by its .pem, which
    # appears whole (written aside, then linked in) and finds its .key there. 0600 from the
    # start, no window of 0644; link() never overwrites.
    public.write_text(f"{zone.to_text().lower()} 3600 IN DNSKEY {dnskey.to_text()}\n")
    aside = where / f".{stem}.pem.new"
    fd = os.open(aside, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    try:
        os.link(aside, path)
    finally:
        aside.unlink()
    return ZoneKey(zone, dnskey, private, path)


def load(zones: Path) -> dict[dns.name.Name, list[ZoneKey]]:
    """Every zone's keys found under <zones>/keys/ (none: an empty dict); raises KeyFileError."""
    where = directory(zones)
    found: dict[dns.name.Name, list[ZoneKey]] = {}
    if not where.is_dir():
        return found
    for path in sorted(where.glob("K*.pem")):
        key = _read(path)
        found.setdefault(key.zone, []).append(key)
    return found


def _read(path: Path) -> ZoneKey:
    public = path.with_suffix(".key")
    try:
        text = public.read_text()
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise KeyFileError(f"{path}: cannot read the key: {exc}") from exc
    if not isinstance(private, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an ECDSA P-256 or Ed25519 key")
    if os.stat(path).st_mode & 0o077:
        raise KeyFileError(f"{path}: readable by others: chmod 600 it")
    fields = text.split(None, 4)
    if len(fields) != 5 or fields[3].upper() != "DNSKEY":
        raise KeyFileError(f"{public}:1: expected `ZONE TTL IN DNSKEY ...`")
    try:
        zone = dns.name.from_text(fields[0])
        dnskey = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.DNSKEY, fields[4])
        assert isinstance(dnskey, dns.rdtypes.ANY.DNSKEY.DNSKEY)
        made = dns.dnssec.make_dnskey(private.public_key(), dnskey.algorithm, flags=dnskey.flags)
    except Exception as exc:  # dnspython's many errors for a bad record, or a key of another algorithm
        raise KeyFileError(f"{public}:1: {exc or type(exc).__name__}") from exc
    if made != dnskey:
        raise KeyFileError(f"{public}:1: the DNSKEY does not match the private key in {path.name}")
    return ZoneKey(zone, dnskey, private, path)
