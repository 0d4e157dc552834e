"""One consistent, immutable view of zones, services and geo data, built whole and swapped whole."""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import dns.name
import dns.rdatatype

from gslb import config as configuration
from gslb import inputs
from gslb.config import Config, ConfigError, Service
from gslb.geo import GeoDatabase, GeoError, IPAddress, IPNetwork, Location
from gslb.inputs import Inputs
from gslb.zones import ZoneError, ZoneIndex, ZoneSet, cut_above, load_zones, static_addresses

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
    index: dict[bytes, ZoneIndex] = field(default_factory=dict)
    loaded_at: float = field(default_factory=time.time)
    load_seconds: float = 0.0
    inputs: Inputs = field(default_factory=Inputs)  # every file read, for the reload watcher

    @property
    def no_ecs(self) -> str:
        return self.config.no_ecs

    def locate(self, address: IPAddress | None) -> Location:
        """The client's location, the configured default standing in for unknown places."""
        if address is None:
            return self.config.default_location
        return self._or_default(self.geo.locate(address))

    def locate_network(self, network: IPNetwork) -> Location:
        return self._or_default(self.geo.locate_subnet(network))

    def _or_default(self, location: Location) -> Location:
        if location.known:
            return location
        # Keep the network that decided: it is still the ECS scope to return.
        return replace(self.config.default_location, network=location.network, source="default")


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
    return replace(snapshot, inputs=recorder.inputs())


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
            geo = GeoDatabase(sources.geodb, overrides=config.overrides, default=config.default_location,
                              special_in_database=config.private_in_database)
        except GeoError as exc:
            problems.append(str(exc))
    services: dict[dns.name.Name, Service] = {}
    if zones is not None and config is not None:
        services, found = _bind_services(zones, config)
        problems.extend(found)
    if problems or zones is None or config is None or geo is None:
        raise SnapshotError(problems)
    zones = zones.with_services(services)
    return Snapshot(zones, config, geo, services, sources, zones.index(),
                    load_seconds=time.perf_counter() - started)


def _bind_services(zones: ZoneSet, config: Config) -> tuple[dict[dns.name.Name, Service], list[str]]:
    """Place each service in its zone; a service must not clash with static data."""
    services: dict[dns.name.Name, Service] = {}
    problems: list[str] = []
    for service in config.services.values():
        where = f"{service.path}:{service.line}: services.\"{service.name}\""
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

