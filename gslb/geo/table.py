"""A geo database compiled once: the address space cut into aligned blocks, each with a location.

The MMDB search tree is walked level by level with numpy (every leaf is an aligned network),
each distinct data record is decoded once (a City database has ~3M leaves behind ~450k
records), and the result is kept on disk keyed by the database's content, so a restart or
a reload with the same database reads arrays instead of walking again. Overrides and
special-purpose blocks are then laid over the leaves (cheap: a few dozen splices), and the
`cidr:` rules of geo maps cut blocks so that every block lies wholly inside or outside each
rule. Two aligned networks are nested or disjoint, which keeps every step a splice.

Blocks of one family are three arrays in address order: start (IPv6: high and low 64 bits),
prefix length and location index. Location 0 is "unknown": the default location.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from gslb.geo.database import GeoDatabase, _record_fields, place_fields
from gslb.geo.places import SPECIAL_NETWORKS, GeoError, IPNetwork, Location, unmapped_network

try:  # the record decoder in C (gslb/geo/_mmdbfields.c); optional, like the compiled UDP loop
    from gslb.geo import _mmdbfields
except ImportError:  # pragma: no cover - without a C compiler
    _mmdbfields = None  # type: ignore[assignment]

log = logging.getLogger("gslb.geotable")

U64 = npt.NDArray[np.uint64]
CACHE_VERSION = 2
KEEP_CACHED = 4  # compiled databases kept in a cache directory
_EMPTY = -1  # a leaf the database has no data for
_ALIAS = -2  # an IPv6 leaf that points back into the IPv4 tree (::/96, ::ffff:0:0/96, 6to4)
_MAX = {4: (1 << 32) - 1, 6: (1 << 128) - 1}


@dataclass(slots=True)
class Blocks:
    """The blocks of one address family, sorted by start, covering the whole family."""

    version: int
    hi: U64  # high 64 bits of the start (IPv6 only; empty for IPv4)
    lo: npt.NDArray[np.uint64] | npt.NDArray[np.uint32]  # low 64 bits of the start (IPv4: uint32)
    prefix: npt.NDArray[np.uint8]
    loc: npt.NDArray[np.int32]

    @property
    def bits(self) -> int:
        return 32 if self.version == 4 else 128

    def __len__(self) -> int:
        return len(self.lo)

    def start(self, i: int) -> int:
        if self.version == 4:
            return int(self.lo[i])
        return int(self.hi[i]) << 64 | int(self.lo[i])

    def find(self, value: int) -> int:
        """The index of the block holding address `value`."""
        if self.version == 4:
            return int(np.searchsorted(self.lo, np.uint32(value), side="right")) - 1
        hi, lo = np.uint64(value >> 64), np.uint64(value & 0xFFFFFFFFFFFFFFFF)
        a = int(np.searchsorted(self.hi, hi, side="left"))
        b = int(np.searchsorted(self.hi, hi, side="right"))
        if a == b:  # no block starts within this high word: the one before holds it
            return a - 1
        j = a + int(np.searchsorted(self.lo[a:b], lo, side="right")) - 1
        return j if j >= a else a - 1

    def network(self, i: int) -> IPNetwork:
        if self.version == 4:
            return ipaddress.IPv4Network((int(self.lo[i]), int(self.prefix[i])))
        return ipaddress.IPv6Network((self.start(i), int(self.prefix[i])))

    def splice(self, i: int, j: int, starts: Sequence[int], prefixes: Sequence[int], locs: Sequence[int]) -> None:
        """Replace blocks i..j-1 by the given ones."""
        if self.version == 6:
            hi = np.array([s >> 64 for s in starts], np.uint64)
            self.hi = np.concatenate((self.hi[:i], hi, self.hi[j:]))
        lo = np.array([s & 0xFFFFFFFFFFFFFFFF for s in starts], self.lo.dtype)
        self.lo = np.concatenate((self.lo[:i], lo, self.lo[j:]))
        self.prefix = np.concatenate((self.prefix[:i], np.array(prefixes, np.uint8), self.prefix[j:]))
        self.loc = np.concatenate((self.loc[:i], np.array(locs, np.int32), self.loc[j:]))

    def overlay(self, start: int, prefix: int, loc: int | None) -> None:
        """Make network (start, prefix) one block or a run of blocks; `loc` None keeps locations.

        With a location, the network becomes one block with it (what it covered is replaced);
        without, only the block that holds the network whole is cut around it.
        """
        bits = self.bits
        end = start + (1 << (bits - prefix)) - 1
        i = self.find(start)
        bprefix = int(self.prefix[i])
        if bprefix <= prefix:
            # One block holds the network: cut it into the network and the aligned rest.
            bloc = int(self.loc[i])
            starts, prefixes, locs = [], [], []
            for p in range(bprefix + 1, prefix + 1):
                # At each level the half that does not hold the network is one block.
                half = 1 << (bits - p)
                here = start >> (bits - p) << (bits - p)
                sibling = here ^ half
                starts.append(sibling)
                prefixes.append(p)
                locs.append(bloc)
            starts.append(start)
            prefixes.append(prefix)
            locs.append(bloc if loc is None else loc)
            order = sorted(range(len(starts)), key=starts.__getitem__)
            self.splice(i, i + 1, [starts[k] for k in order], [prefixes[k] for k in order], [locs[k] for k in order])
        elif loc is not None:
            j = self.find(end) + 1
            self.splice(i, j, [start], [prefix], [loc])


@dataclass(slots=True)
class GeoTable:
    """Both families' blocks and the locations they point at."""

    v4: Blocks
    v6: Blocks
    locations: list[Location]  # network None; index 0 is the default location
    seconds: float = 0.0  # how long the build took
    cached: bool = False  # read from the on-disk cache

    def family(self, version: int) -> Blocks:
        return self.v4 if version == 4 else self.v6

    def locate(self, version: int, value: int) -> tuple[Location, IPNetwork]:
        """The location of one address (IPv4-mapped IPv6 is not unmapped here) and its block."""
        blocks = self.family(version)
        i = blocks.find(value)
        return self.locations[int(blocks.loc[i])], blocks.network(i)


# --------------------------------------------------------------------------- the MMDB walk


def _nodes(buf: bytes, node_count: int, record_size: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each node's left and right records, column by column (a whole int64 copy of the tree
    would cost 200 MB for a City database)."""
    size = record_size * 2 // 8
    raw = np.frombuffer(buf, np.uint8, count=node_count * size).reshape(node_count, size)

    def col(i: int, shift: int = 0, mask: int = 0xFF) -> npt.NDArray[np.uint32]:
        c = raw[:, i].astype(np.uint32)
        if mask != 0xFF:
            c &= np.uint32(mask)
        return c << np.uint32(shift) if shift else c

    if record_size == 24:
        left = col(0, 16) | col(1, 8) | col(2)
        right = col(3, 16) | col(4, 8) | col(5)
    elif record_size == 28:
        left = col(0, 16) | col(1, 8) | col(2) | col(3, 20, 0xF0)
        right = col(3, 24, 0x0F) | col(4, 16) | col(5, 8) | col(6)
    elif record_size == 32:
        left = col(0, 24) | col(1, 16) | col(2, 8) | col(3)
        right = col(4, 24) | col(5, 16) | col(6, 8) | col(7)
    else:
        raise GeoError(f"unsupported record size {record_size}")
    return left.astype(np.int64), right.astype(np.int64)


def _walk(
    left: npt.NDArray[np.int64], right: npt.NDArray[np.int64], node_count: int, root: int, bits: int, stop: int | None
) -> tuple[U64, U64, npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Every leaf below `root`, breadth first: start (hi, lo), prefix, record (node_count + offset)."""
    nodes = np.array([root], np.int64)
    hi = np.zeros(1, np.uint64)
    lo = np.zeros(1, np.uint64)
    out: list[tuple[U64, U64, npt.NDArray[np.uint8], npt.NDArray[np.int64]]] = []
    for depth in range(bits):
        if not len(nodes):
            break
        shift = (bits - 1 - depth) if bits == 32 else (127 - depth)
        bit_hi = np.uint64(0 if shift < 64 else 1 << (shift - 64))
        bit_lo = np.uint64(1 << shift if shift < 64 else 0)
        child = np.concatenate((left[nodes], right[nodes]))
        chi = np.concatenate((hi, hi | bit_hi))
        clo = np.concatenate((lo, lo | bit_lo))
        inner = child < node_count
        if stop is not None:
            alias = child == stop
            inner &= ~alias
            child = np.where(alias, node_count + _ALIAS, child)
        leaf = ~inner
        out.append((chi[leaf], clo[leaf], np.full(int(leaf.sum()), depth + 1, np.uint8), child[leaf]))
        nodes, hi, lo = child[inner], chi[inner], clo[inner]
        if len(nodes) > 4 * node_count + 64:  # a valid tree never fans out like this
            raise GeoError("the search tree points back into itself")
    if len(nodes):  # a tree deeper than the address: treat what is left as full-length leaves
        out.append((hi, lo, np.full(len(nodes), bits, np.uint8), np.full(len(nodes), node_count + _EMPTY)))
    his, los, prefixes, records = (np.concatenate(parts) for parts in zip(*out, strict=True))
    order = np.lexsort((los, his))
    return his[order], los[order], prefixes[order], records[order]


class _Data:
    """Decodes MMDB data-section values, caching what pointers point at (records share most)."""

    _double = struct.Struct(">d").unpack_from
    _float = struct.Struct(">f").unpack_from

    def __init__(self, buf: bytes, base: int):
        self.buf = buf
        self.base = base
        self.cache: dict[int, Any] = {}

    def value(self, pos: int) -> tuple[Any, int]:
        buf = self.buf
        ctrl = buf[pos]
        pos += 1
        kind = ctrl >> 5
        if kind == 1:  # pointer
            ss, v = (ctrl >> 3) & 3, ctrl & 7
            if ss == 0:
                target = v << 8 | buf[pos]
            elif ss == 1:
                target = (v << 16 | buf[pos] << 8 | buf[pos + 1]) + 2048
            elif ss == 2:
                target = (v << 24 | buf[pos] << 16 | buf[pos + 1] << 8 | buf[pos + 2]) + 526336
            else:
                target = int.from_bytes(buf[pos : pos + 4], "big")
            pos += ss + 1
            found = self.cache.get(target)
            if found is None:
                found = self.cache[target] = self.value(self.base + target)[0]
            return found, pos
        if kind == 0:
            kind = 7 + buf[pos]
            pos += 1
        size = ctrl & 0x1F
        if size >= 29:
            if size == 29:
                size = 29 + buf[pos]
                pos += 1
            elif size == 30:
                size = 285 + (buf[pos] << 8 | buf[pos + 1])
                pos += 2
            else:
                size = 65821 + int.from_bytes(buf[pos : pos + 3], "big")
                pos += 3
        if kind == 2:
            return buf[pos : pos + size].decode("utf-8", "replace"), pos + size
        if kind == 7:
            out: dict[Any, Any] = {}
            for _ in range(size):
                key, pos = self.value(pos)
                out[key], pos = self.value(pos)
            return out, pos
        if kind == 11:
            items = []
            for _ in range(size):
                item, pos = self.value(pos)
                items.append(item)
            return items, pos
        if kind == 3:
            return self._double(buf, pos)[0], pos + 8
        if kind == 15:
            return self._float(buf, pos)[0], pos + 4
        if kind == 14:
            return bool(size), pos
        if kind in (5, 6, 8, 9, 10):
            return int.from_bytes(buf[pos : pos + size], "big"), pos + size
        return buf[pos : pos + size], pos + size  # bytes, and anything newer: opaque


def _compile_database(path: Path) -> tuple[dict[str, np.ndarray], list[Any]]:
    """Walk the database: arrays per family and the distinct fields tuples (index 1 upwards)."""
    with path.open("rb") as f:
        buf = f.read()
    marker = buf.rfind(b"\xab\xcd\xefMaxMind.com")
    if marker < 0:
        raise GeoError(f"{path}: not a MaxMind DB file (no metadata marker)")
    meta = _Data(buf, 0).value(marker + 14)[0]
    node_count, record_size, ip_version = int(meta["node_count"]), int(meta["record_size"]), int(meta["ip_version"])
    left, right = _nodes(buf, node_count, record_size)
    tree_size = node_count * record_size * 2 // 8
    v4root = 0
    if ip_version == 6:
        for _ in range(96):
            if v4root >= node_count:
                break
            v4root = int(left[v4root])
    families: dict[int, tuple[U64, U64, npt.NDArray[np.uint8], npt.NDArray[np.int64]]] = {}
    if v4root < node_count:
        families[4] = _walk(left, right, node_count, v4root, 32, None)
    else:  # the whole IPv4 space is one record (or none)
        families[4] = (
            np.zeros(1, np.uint64),
            np.zeros(1, np.uint64),
            np.zeros(1, np.uint8),
            np.array([v4root], np.int64),
        )
    if ip_version == 6:
        families[6] = _walk(left, right, node_count, 0, 128, v4root if v4root < node_count else None)
    else:
        families[6] = (
            np.zeros(1, np.uint64),
            np.zeros(1, np.uint64),
            np.zeros(1, np.uint8),
            np.array([node_count + _EMPTY], np.int64),
        )
    records = np.unique(np.concatenate([families[4][3], families[6][3]]))
    data_start = tree_size + 16
    # Record values point into the data section at record - node_count - 16; empty and
    # alias leaves point before it.
    positions = records - node_count + tree_size
    found_fields = _decode(path, buf, data_start, positions[positions >= data_start])
    fields: list[Any] = [None]
    by_fields: dict[Any, int] = {None: 0}
    loc_of = np.zeros(len(records), np.int32)
    for k in np.flatnonzero(positions >= data_start).tolist():
        found = next(found_fields)
        index = by_fields.get(found)
        if index is None:
            index = by_fields[found] = len(fields)
            fields.append(found)
        loc_of[k] = index
    arrays: dict[str, np.ndarray] = {}
    for version, (hi, lo, prefix, record) in families.items():
        if version == 6:
            arrays["v6_hi"] = hi
        arrays[f"v{version}_lo"] = lo if version == 6 else lo.astype(np.uint32)
        arrays[f"v{version}_prefix"] = prefix
        arrays[f"v{version}_loc"] = loc_of[np.searchsorted(records, record)]
    return arrays, fields


def _decode(path: Path, buf: bytes, data_start: int, positions: npt.NDArray[np.int64]) -> Iterator[Any]:
    """Each record's place fields (gslb.geo.database.place_fields), in C when the extension is built."""
    if _mmdbfields is not None:
        for raw in _mmdbfields.fields(buf, data_start, np.ascontiguousarray(positions, np.int64)):
            yield None if raw is None else place_fields(*raw)
        return
    data = _Data(buf, data_start)
    for position in positions.tolist():
        try:
            value = data.value(position)[0]
        except (IndexError, ValueError, UnicodeDecodeError) as error:
            raise GeoError(f"{path}: corrupt data record at {position - data_start}: {error}") from error
        yield _record_fields(value) if isinstance(value, dict) else None


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()[:32]


def _compile(path: Path, specials: bool) -> tuple[dict[str, np.ndarray], list[Any]]:
    """The database walked, with the special-purpose blocks laid over unless `specials` is False."""
    arrays, fields = _compile_database(path)
    if specials:
        families = _blocks(arrays)
        # Least specific first, so that a block nested in another is laid last and kept.
        for network in sorted(SPECIAL_NETWORKS, key=lambda n: n.prefixlen):
            families[network.version].overlay(int(network.network_address), network.prefixlen, 0)
        arrays = {}
        for version, blocks in families.items():
            if version == 6:
                arrays["v6_hi"] = blocks.hi
            arrays[f"v{version}_lo"] = blocks.lo
            arrays[f"v{version}_prefix"] = blocks.prefix
            arrays[f"v{version}_loc"] = blocks.loc
    return arrays, fields


def _blocks(arrays: dict[str, np.ndarray]) -> dict[int, Blocks]:
    return {
        version: Blocks(
            version,
            arrays.get(f"v{version}_hi", np.zeros(0, np.uint64)),
            arrays[f"v{version}_lo"],
            arrays[f"v{version}_prefix"],
            arrays[f"v{version}_loc"].astype(np.int32),
        )
        for version in (4, 6)
    }


def _cached(path: Path, cache_dir: Path | None, specials: bool) -> tuple[dict[str, np.ndarray], list[Any], bool]:
    """The compiled database, from the cache when its content was compiled before.

    A database not compiled before is compiled by a child process that writes the cache, and
    read back from it: the walk's few hundred MB of transient arrays and objects then leave
    with the child instead of staying in this process's heap, and a single-process server
    keeps answering at full speed meanwhile (the child does not share its interpreter lock).
    """
    if cache_dir is None:
        arrays, fields = _compile(path, specials)
        return arrays, fields, False
    target = cache_dir / f".gslb-geo-{_digest(path)}-{'s' if specials else 'p'}-v{CACHE_VERSION}.npz"
    found = _load(target)
    if found is not None:
        os.utime(target)  # most recently used: kept longest
        return (*found, True)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        log.warning("%s: cannot keep the compiled geo table: %s", cache_dir, error)
        arrays, fields = _compile(path, specials)
        return arrays, fields, False
    child = subprocess.run(
        [sys.executable, "-m", "gslb.geo.table", str(path), str(target), "1" if specials else "0"],
        capture_output=True,
        text=True,
        check=False,
    )
    found = _load(target) if child.returncode == 0 else None
    if found is None:
        why = (child.stderr.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        if why.startswith("gslb.geo.database.GeoError: "):
            raise GeoError(why.removeprefix("gslb.geo.database.GeoError: "))
        log.warning("%s: compiling in a child process failed (%s); compiling here", path, why)
        arrays, fields = _compile(path, specials)
        _store(target, arrays, fields)
        return arrays, fields, False
    return (*found, False)


def _load(target: Path) -> tuple[dict[str, np.ndarray], list[Any]] | None:
    try:
        with np.load(target, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files if key != "fields"}
            fields = [None if f is None else tuple(f) for f in json.loads(bytes(stored["fields"]).decode())]
        return arrays, fields
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError) as error:
        log.warning("%s: unreadable geo cache, compiling again: %s", target, error)
        return None


def _store(target: Path, arrays: dict[str, np.ndarray], fields: list[Any]) -> None:
    """Write the compiled database beside others, atomically; keep the few most recent."""
    cache_dir = target.parent
    try:
        fd, name = tempfile.mkstemp(dir=cache_dir, prefix=".gslb-geo-", suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            stored = {"fields": np.frombuffer(json.dumps(fields).encode(), np.uint8), **arrays}
            np.savez(out, **stored)  # type: ignore[arg-type]
        os.replace(name, target)
        # A reload may go back to the previous database: keep a few.
        kept = sorted(cache_dir.glob(".gslb-geo-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP_CACHED:]:
            old.unlink(missing_ok=True)
    except OSError as error:
        log.warning("%s: cannot keep the compiled geo table: %s", cache_dir, error)


def _main(argv: list[str]) -> int:
    """python -m gslb.geo.table DATABASE TARGET SPECIALS: compile one database into the cache."""
    path, target, specials = Path(argv[0]), Path(argv[1]), argv[2] == "1"
    arrays, fields = _compile(path, specials)
    _store(target, arrays, fields)
    return 0 if target.exists() else 1


def compile_table(geo: GeoDatabase, cuts: Iterable[IPNetwork] = (), cache_dir: Path | None = None) -> GeoTable:
    """The database behind `geo` as blocks, with its special blocks, overrides and `cuts` laid over."""
    started = time.perf_counter()
    try:
        arrays, fields, cached = _cached(geo.path, cache_dir, not geo.special_in_database)
    except (IndexError, ValueError, KeyError, TypeError) as error:  # a tree pointing past its end
        raise GeoError(f"{geo.path}: not a usable MaxMind DB file: {error}") from error
    locations = [geo.default]
    # Codes and names repeat across places: keep one string object of each.
    shared: dict[str, str] = {}
    keep = shared.setdefault
    for found in fields[1:]:
        country, continent, subdivision, latitude, longitude, city = found
        locations.append(
            Location(
                country and keep(country, country),
                continent and keep(continent, continent),
                subdivision and keep(subdivision, subdivision),
                latitude,
                longitude,
                None,
                "database",
                city and keep(city, city),
            )
        )
    families = _blocks(arrays)
    # Overrides over the special blocks, least specific first, so the more specific one is
    # laid last and wins; cuts only split.
    layers: list[tuple[IPNetwork, int | None]] = []
    for network, location in sorted(geo.overrides.items(), key=lambda item: item[0].prefixlen):
        locations.append(location)
        layers.append((network, len(locations) - 1))
    layers += [(unmapped_network(network), None) for network in cuts]
    for network, loc in layers:
        families[network.version].overlay(int(network.network_address), network.prefixlen, loc)
    table = GeoTable(families[4], families[6], locations, cached=cached)
    table.seconds = time.perf_counter() - started
    return table


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
