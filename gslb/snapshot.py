"""One consistent, immutable view of zones, services and geo data, built whole and swapped whole."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import ipaddress
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import dns.name
import dns.rdatatype

from gslb import inputs
from gslb.config import load as configuration
from gslb.config.model import Config, ConfigError, Service
from gslb.dns import dnssec, keys
from gslb.dns.dnssec import Signing
from gslb.dns.zones import ZoneError, ZoneIndex, ZoneSet, cut_above, load_zones, static_addresses
from gslb.geo.database import GeoDatabase
from gslb.geo.places import GeoError, IPAddress, IPNetwork, Location, mapped_network
from gslb.geo.table import GeoTable, compile_table
from gslb.inputs import Inputs
from gslb.steering.ranks import RankTable, compile_service

log = logging.getLogger(__name__)

CONFIG_NAME = "gslb.toml"


class SnapshotError(Exception):
    """Everything wrong with zones and config together, one `file:line: message` each."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        self.inputs = Inputs()  # what the failed build read: watched until the next build
        super().__init__("\n".join(problems))


@dataclass(frozen=True, slots=True)
class Sources:
    """Where a snapshot is read from; the same sources are read again on reload."""

    zones: Path
    config: Path | None = None  # None: zones/gslb.toml when it exists
    geodb: Path | None = None  # None: the embedded default database
    # Where the compiled geo table is kept between starts (keyed by the database's content);
    # None: beside the zones. A directory that cannot be written only costs a compile per start.
    cache: Path | None = None

    def config_path(self) -> Path | None:
        if self.config is not None:
            return self.config
        candidate = self.zones / CONFIG_NAME
        return candidate if candidate.exists() else None

    def record_read(self) -> None:
        """Note the config and geo database as inputs of the build being recorded (gslb.inputs).

        The zone loader notes the zone files and what they include; the embedded database
        is part of the program, not an input.
        """
        inputs.read(self.config_path(), self.geodb)
        if self.config is None:  # a gslb.toml created beside the zones is read on reload
            inputs.listed(self.zones, CONFIG_NAME)

    @staticmethod
    def record_named(config: Config) -> None:
        """Note the files the config names and the probes read (CA bundles)."""
        inputs.read(*(Path(check.ca_file) for check in config.checks.values() if check.ca_file))


@dataclass(frozen=True, slots=True)
class Snapshot:
    zones: ZoneSet
    config: Config
    geo: GeoDatabase
    services: dict[dns.name.Name, Service]
    sources: Sources
    table: GeoTable
    ranks: dict[dns.name.Name, RankTable]  # per service name
    index: dict[bytes, ZoneIndex] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    inputs: Inputs = field(default_factory=Inputs)  # every file read, for the reload watcher
    signing: Signing | None = None  # the signed zones' signatures (gslb.dns.dnssec); None: nothing signed

    @property
    def no_ecs(self) -> str:
        return self.config.no_ecs

    def locate(self, address: IPAddress | None) -> Location:
        """The client's location from the compiled table, the configured default for unknown places.

        `network` is the block that decided: the database's network, cut around overrides,
        special-purpose blocks and `cidr:` rules.
        """
        if address is None:
            return self.config.default_location
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            # ::ffff:a.b.c.d is an IPv4 client behind a dual-stack socket: located as IPv4,
            # its block reported in IPv6 form so that it contains the address.
            found = self.locate(address.ipv4_mapped)
            if found.network is None:
                return found
            assert isinstance(found.network, ipaddress.IPv4Network)
            return replace(found, network=mapped_network(found.network))
        location, network = self.table.locate(address.version, int(address))
        if location.known:
            return replace(location, network=network)
        # Keep the network that decided: it is still the ECS scope to return.
        return replace(self.config.default_location, network=network, source="default")

    def locate_network(self, network: IPNetwork) -> Location:
        """Location for an EDNS Client Subnet (RFC 7871): its address is already truncated."""
        return self.locate(network.network_address)


def build(sources: Sources) -> Snapshot:
    """Read zones, config and geo database; raise SnapshotError listing every problem.

    The snapshot, or the error, carries `inputs`: every file the build read, as it was then.
    """
    with _collector_paused(), inputs.recording() as recorder:
        sources.record_read()
        try:
            snapshot = _build(sources)
        except SnapshotError as exc:
            exc.inputs = recorder.inputs()
            raise
        sources.record_named(snapshot.config)
    _release_freed_memory()
    return replace(snapshot, inputs=recorder.inputs())


def _release_freed_memory() -> None:
    """Hand what a build freed back to the system: glibc keeps a freed heap otherwise.

    Compiling a City database walks a few hundred MB of transient arrays; without this a
    server would carry that high-water mark as resident memory for its whole life.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a snapshot is built.

    A 100k-record zone makes about a million objects; the collector would walk them again
    and again as they pile up (a third of the load time, measured), and they form no cycles
    worth collecting before the build ends. It resumes afterwards.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build(sources: Sources) -> Snapshot:
    started = time.perf_counter()
    problems: list[str] = []
    zones: ZoneSet | None = None
    config: Config | None = None
    try:
        zones = load_zones(sources.zones)
    except ZoneError as exc:
        problems.extend(str(p) for p in exc.problems)
    config_path = sources.config_path()
    try:
        config = configuration.load(config_path) if config_path else configuration.empty()
    except ConfigError as exc:
        problems.extend(str(p) for p in exc.problems)
    geo: GeoDatabase | None = None
    if config is not None:
        try:
            geo = GeoDatabase(
                sources.geodb,
                overrides=config.overrides,
                default=config.default_location,
                special_in_database=config.private_in_database,
            )
        except GeoError as exc:
            problems.append(str(exc))
    services: dict[dns.name.Name, Service] = {}
    if zones is not None and config is not None:
        services, found = _bind_services(zones, config)
        problems.extend(found)
    if problems or zones is None or config is None or geo is None:
        raise SnapshotError(problems)
    zones = zones.with_services(services)
    try:
        table = compile_table(geo, cuts=_cidr_rules(services.values()), cache_dir=sources.cache or sources.zones)
    except GeoError as exc:
        raise SnapshotError([str(exc)]) from exc
    log.info(
        "geo table: %d IPv4 and %d IPv6 blocks, %d locations, %.2f s%s",
        len(table.v4),
        len(table.v6),
        len(table.locations),
        table.seconds,
        " (from the cache)" if table.cached else "",
    )
    ranks = {
        name: compile_service(service, config.datacenters, table, config.default_location)
        for name, service in services.items()
    }
    signing = _sign(sources, zones, config, services)
    return Snapshot(
        zones,
        config,
        geo,
        services,
        sources,
        table,
        ranks,
        zones.index(),
        load_seconds=time.perf_counter() - started,
        signing=signing,
    )


def _sign(sources: Sources, zones: ZoneSet, config: Config, services: dict[dns.name.Name, Service]) -> Signing | None:
    """Sign the zones that have keys under <zones>/keys/ (a key added or removed is a change to reload)."""
    where = keys.directory(sources.zones)
    inputs.listed(sources.zones, where.name)  # the directory made: the first key is on its way
    inputs.listed(where, "K*")
    try:
        found = keys.load(sources.zones)
    except keys.KeyFileError as exc:
        raise SnapshotError([str(exc)]) from exc
    inputs.read(*(key.path for zone_keys in found.values() for key in zone_keys))
    unserved = sorted(str(zone) for zone in found if zone not in zones.zones)
    if unserved:
        log.warning("keys for zones not served, ignored: %s", ", ".join(unserved))
    signing = dnssec.sign(zones, found, services, config.datacenters, config.dnssec)
    if signing is not None:
        log.info(
            "DNSSEC: %d zone%s signed, %d signatures made ahead in %.3f s, valid until %s%s",
            len(signing.signers),
            "" if len(signing.signers) == 1 else "s",
            signing.presigned,
            signing.seconds,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(signing.expiration)),
            f"; signed on first use: {', '.join(signing.first_use)}" if signing.first_use else "",
        )
    return signing


def resign(snapshot: Snapshot, now: float | None = None) -> Snapshot:
    """The same snapshot with every signature made again (new inception and expiration), no files read."""
    if snapshot.signing is None:
        return snapshot
    config = snapshot.config
    signing = dnssec.resign(snapshot.signing, snapshot.zones, snapshot.services, config.datacenters, config.dnssec, now)
    log.info(
        "DNSSEC: signed again, %d signatures in %.3f s, valid until %s",
        signing.presigned,
        signing.seconds,
        time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(signing.expiration)),
    )
    return replace(snapshot, signing=signing)


def _cidr_rules(services: Iterable[Service]) -> list[IPNetwork]:
    return [
        ipaddress.ip_network(rule.value)
        for service in services
        if service.policy == "geo"
        for rule in service.map
        if rule.kind == "cidr"
    ]


def _bind_services(zones: ZoneSet, config: Config) -> tuple[dict[dns.name.Name, Service], list[str]]:
    """Place each service in its zone; a service must not clash with static data."""
    services: dict[dns.name.Name, Service] = {}
    problems: list[str] = []
    for service in config.services.values():
        where = f'{service.path}:{service.line}: services."{service.name}"'
        name = dns.name.from_text(service.name)
        zone = zones.find_zone(name)
        if zone is None:
            problems.append(f"{where}: not inside any served zone")
            continue
        clash = static_addresses(zones, name)
        if clash:
            kinds = "/".join(sorted(dns.rdatatype.to_text(dns.rdatatype.RdataType(t)) for t in clash))
            problems.append(f"{where}: {zone.path} also has static {kinds} records at {service.name}")
            continue
        cut = cut_above(zone, name, include_self=True)
        if cut is not None:
            problems.append(f"{where}: below the delegation {cut} in {zone.path}")
            continue
        services[name] = service
    return services, problems
