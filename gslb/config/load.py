"""Reading the configuration: TOML text -> the model (gslb.config.model), every problem gathered at its line.

Each table has a schema: key -> converter (gslb.config.values), Required where the key must be given;
a key left out takes the model's default. A table's keys are checked against its schema (a typo gets
a did-you-mean), every value converted and every wrong one reported; what one key says about another
is checked after, in the table's own few lines. A table with a problem builds nothing, so what refers
to it (a data center to its check, a service to its data centers) is not reported again.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final

from gslb import inputs
from gslb.config import schema
from gslb.config import values as v
from gslb.config.locate import Locator, render_key, syntax_error
from gslb.config.model import (
    LOAD_METRICS,
    MAX_SECRETS,
    RULE_KINDS,
    Check,
    ClusterConfig,
    Config,
    ConfigError,
    CookieSettings,
    DataCenter,
    DnssecSettings,
    GeoRule,
    KeyPath,
    LoadSource,
    Problem,
    RrlSettings,
    Service,
)
from gslb.config.schema import Schema, defaults
from gslb.geo.places import IPNetwork, Location

__all__ = ["empty", "load", "loads"]

_SECRET: Final = re.compile(r"[0-9A-Fa-f]{32}")  # a cookie secret: 16 bytes in hex

MIN_SIGNING_INTERVAL = 1  # second: [dnssec] must leave some time between two signings


def empty(path: Path | None = None) -> Config:
    """The configuration used when there is no configuration file: no services at all."""
    return Config(path, MappingProxyType({}), MappingProxyType({}), MappingProxyType({}))


def load(path: Path) -> Config:
    """Read and validate a configuration file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError([Problem(path, 0, "", f"cannot read: {e.strerror or e}")]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError([Problem(path, data.count(b"\n", 0, e.start) + 1, "", "not valid UTF-8")]) from None
    return loads(text, path)


def loads(text: str, path: Path | None = None) -> Config:
    """Validate configuration text; ``path`` names it in problems and anchors ``ca_file``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        line, message = syntax_error(e, text)
        raise ConfigError([Problem(path, line, "", message)]) from None
    loader = _Loader(text, path)
    config = loader.config(document)
    if loader.problems:
        raise ConfigError(loader.problems)
    return config


class _Loader:
    """One validation run: gathers problems instead of stopping at the first."""

    def __init__(self, text: str, path: Path | None) -> None:
        self.path = path
        self.locator = Locator(text)
        self.problems: list[Problem] = []
        self.failed = 0  # problems that keep a table from building (an unknown key does not)

    def error(self, key: KeyPath, message: str, fails: bool = True) -> None:
        self.problems.append(Problem(self.path, self.locator.find(key), render_key(key), message))
        self.failed += fails

    def convert(self, convert: v.Converter, value: Any, key: KeyPath) -> Any:
        """``convert(value)``, or None with its problems reported under ``key``."""
        try:
            return convert(value)
        except v.Invalid as e:
            for at, message in e.problems:
                self.error((*key, *at), message)
            return None

    def table(self, value: Any, key: KeyPath, fields: Schema, given: Mapping[str, Any]) -> dict[str, Any] | None:
        """Each key of ``fields``: the value converted (None if wrong), else its default in ``given``, else None."""
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {v.kind_of(value)}")
            return None
        allowed = tuple(fields)
        for name in [name for name in value if name not in fields]:
            close = difflib.get_close_matches(name, allowed, n=1)
            if not close and len(name) >= 3:  # "lat" for "latitude"
                close = [a for a in allowed if a.startswith(name)][:1]
            hint = f"did you mean {close[0]!r}?" if close else "expected " + ", ".join(allowed)
            self.error((*key, name), f"unknown key; {hint}", fails=False)
        out: dict[str, Any] = {}
        for name, convert in fields.items():
            if name in value:
                out[name] = self.convert(
                    convert.convert if isinstance(convert, v.Required) else convert, value[name], (*key, name)
                )
            elif isinstance(convert, v.Required):
                self.error((*key, name), "required key is missing")
                out[name] = None
            else:
                out[name] = given.get(name)
        return out

    def named(
        self, value: Any, key: KeyPath, build: Callable[[str, Any, KeyPath], Any]
    ) -> tuple[dict[str, Any], set[str]]:
        """What the named tables of a table built (those that did), and all their names."""
        if not isinstance(value, dict):
            self.error(key, f"expected a table, got {v.kind_of(value)}")
            return {}, set()
        built = {name: build(name, item, (*key, name)) for name, item in value.items()}
        return {name: item for name, item in built.items() if item is not None}, set(value)

    # -- the tables

    def config(self, document: dict[str, Any]) -> Config:
        self.table(document, (), schema.ROOT, {})  # (its unknown keys)
        no_ecs, private, default, overrides = self.geo(document.get("geo", {}))
        checks, declared = self.named(document.get("checks", {}), ("checks",), self.check)
        datacenters, names = self.named(
            document.get("datacenters", {}),
            ("datacenters",),
            lambda name, item, key: self.datacenter(name, item, key, checks, declared),
        )
        return Config(
            path=self.path,
            datacenters=MappingProxyType(datacenters),
            services=MappingProxyType(self.services(document.get("services", {}), datacenters, names)),
            checks=MappingProxyType(checks),
            overrides=overrides,
            no_ecs=no_ecs,
            private_in_database=private,
            default_location=default,
            cookies=self.cookies(document.get("cookies", {})),  # on by default, a random secret
            rrl=self.rrl(document["rrl"]) if "rrl" in document else None,
            cluster=self.cluster(document["cluster"]) if "cluster" in document else None,
            dnssec=self.dnssec(document.get("dnssec", {})) or DnssecSettings(),
        )

    def geo(self, value: Any) -> tuple[str, bool, Location, tuple[tuple[IPNetwork, Location], ...]]:
        key: KeyPath = ("geo",)
        geo = self.table(value, key, schema.GEO, {"no_ecs": "resolver", "override": ()})
        if geo is None:
            return "resolver", False, Location(), ()
        default = Location()
        if "default" in value:
            default = self.location(geo["default"], (*key, "default"), schema.LOCATION) or default
        overrides: dict[IPNetwork, Location] = {}
        for i, item in enumerate(geo["override"] or ()):
            okey: KeyPath = (*key, "override", i)
            location = self.location(item, okey, schema.OVERRIDE)
            if location is not None and location.network in overrides:
                self.error((*okey, "network"), f"{location.network} is overridden twice")
            elif location is not None and location.network is not None:
                overrides[location.network] = location
        ordered = sorted(overrides.items(), key=lambda item: (item[0].version, -item[0].prefixlen))
        return geo["no_ecs"] or "resolver", geo["private"] == "database", default, tuple(ordered)

    def location(self, value: Any, key: KeyPath, fields: Schema) -> Location | None:
        """The place a geo.default table (schema.LOCATION) or an [[geo.override]] (with its network) says."""
        before = self.failed
        place = self.table(value, key, fields, {})
        if place is None:
            return None
        country, subdivision = place["country"], place["subdivision"]
        if subdivision is not None:
            subdivision = subdivision.upper()
            if country is not None and subdivision.startswith(country + "-"):
                subdivision = subdivision[len(country) + 1 :]
            if not v.SUBDIVISION.fullmatch(subdivision):
                self.error((*key, "subdivision"), f'{subdivision!r} is not an ISO 3166-2 subdivision code (like "CA")')
        self.coordinates(value, key)
        if self.failed > before:
            return None
        network = place.pop("network", None)
        source = "default" if network is None else "override"
        return Location(**{**place, "subdivision": subdivision}, network=network, source=source)

    def coordinates(self, value: Mapping[str, Any], key: KeyPath) -> None:
        """Latitude and longitude come together."""
        for name, other in (("latitude", "longitude"), ("longitude", "latitude")):
            if name in value and other not in value:
                self.error((*key, name), f"{name} without {other}")
                return

    def check(self, name: str, value: Any, key: KeyPath) -> Check | None:
        before = self.failed
        check = self.table(value, key, schema.CHECK, defaults(Check))
        if check is None:
            return None
        if check["kind"] == "tcp":
            if "port" not in value:
                self.error((*key, "port"), "required key is missing")
            for option in (option for option in schema.HTTP_ONLY if option in value):
                self.error((*key, option), "only used by http and https checks")
        elif "port" not in value:
            check["port"] = 443 if check["kind"] == "https" else 80
        if check["path"] is not None and not check["path"].startswith("/"):
            self.error((*key, "path"), f"must start with '/', got {check['path']!r}")
        if check["body_contains"] is not None and check["method"] == "HEAD":
            self.error((*key, "body_contains"), "a HEAD response has no body; use method GET")
        if check["ca_file"] is not None:
            check["ca_file"] = self.file(check["ca_file"], (*key, "ca_file"))
        interval, timeout = check["interval"], check["timeout"]
        if interval is not None and timeout is not None and timeout >= interval:
            # An error, not a warning: probes would overlap or the interval would silently
            # stretch, and fall/rise would no longer mean "seconds until detected".
            where = "timeout" if "timeout" in value else "interval"
            self.error((*key, where), f"timeout ({timeout:g}s) must be shorter than interval ({interval:g}s)")
        return Check(**check) if self.failed == before else None

    def file(self, name: str, key: KeyPath) -> str | None:
        """A file named relative to the configuration file; it must exist."""
        resolved = (self.path.parent if self.path is not None else Path.cwd()) / Path(name).expanduser()
        if not resolved.is_file():
            self.error(key, f"no such file: {str(resolved)!r}")
            return None
        return str(resolved)

    def datacenter(
        self, name: str, value: Any, key: KeyPath, checks: Mapping[str, Check], declared: set[str]
    ) -> DataCenter | None:
        if not v.NAME.fullmatch(name):
            self.error(key, "a data center name is letters, digits, '_', '-' and '.', starting with a letter or digit")
            return None
        before = self.failed
        dc = self.table(value, key, schema.DATACENTER, defaults(DataCenter))
        if dc is None:
            return None
        self.coordinates(value, key)
        if "check" in value:
            dc["check"] = checks.get(self.convert(v.reference(declared, "check"), value["check"], (*key, "check")))
        elif dc["probe"] is not None:
            self.error((*key, "probe"), "a probe address needs a check")
        if "load" in value:
            dc["load"] = self.load_source(value["load"], (*key, "load"))
        if self.failed > before or ("check" in value and dc["check"] is None):
            return None  # (a broken check is reported where it is defined)
        if dc["check"] is not None:  # the probe address, else the first IPv4 VIP, else the first
            dc["probe"] = str(dc["probe"] or next((a for a in dc["vips"] if a.version == 4), dc["vips"][0]))
        return DataCenter(name, **dc)

    def load_source(self, value: Any, key: KeyPath) -> LoadSource | None:
        before = self.failed
        load = self.table(value, key, schema.LOAD, defaults(LoadSource))
        if load is None:
            return None
        kind, target, most, interval, timeout = (load[k] for k in ("kind", "target", "max", "interval", "timeout"))
        if kind is not None and load["metric"] is not None:
            self.convert(v.choice(LOAD_METRICS[kind]), load["metric"], (*key, "metric"))
        if "target" not in value and kind != "json":
            self.error((*key, "target"), "required key is missing")
        proxy, row = None, "BACKEND"
        for side in (side for side in ("frontend", "backend") if side in value):
            if kind != "haproxy":
                self.error((*key, side), 'only for kind = "haproxy"')
            elif proxy is not None:
                self.error((*key, side), "give a frontend or a backend, not both")
            else:
                proxy, row = self.convert(v.string, value[side], (*key, side)), side.upper()
        if kind == "haproxy" and "frontend" not in value and "backend" not in value:
            self.error(key, 'an haproxy load source names its row: frontend = "NAME" or backend = "NAME"')
        if target is not None and most is not None and most < target:
            self.error((*key, "max"), f"must be at least the target ({target:g}), got {most:g}")
        if interval is not None and "timeout" in value and timeout is not None and timeout >= interval:
            self.error((*key, "timeout"), f"must be less than the interval ({interval:g} s), got {timeout:g}")
        if self.failed > before:
            return None
        metric = load["metric"] or LOAD_METRICS[kind][0]
        timeout = timeout if "timeout" in value else min(1.0, interval / 2)
        return LoadSource(kind, load["url"], metric, target, most, interval, timeout, proxy, row)

    def services(self, value: Any, datacenters: Mapping[str, DataCenter], declared: set[str]) -> dict[str, Service]:
        if not isinstance(value, dict):
            self.error(("services",), f"expected a table, got {v.kind_of(value)}")
            return {}
        out: dict[str, Service] = {}
        first: dict[str, str] = {}  # the name as written, by the name
        for raw, item in value.items():
            key: KeyPath = ("services", raw)
            name = self.convert(v.service_name, raw, key)
            if name is None:
                continue
            if name in first:
                self.error(key, f"the same name as service {first[name]!r}")
                continue
            first[name] = raw
            if (
                isinstance(item, dict)
                and item
                and item.keys().isdisjoint(schema.SERVICE)
                and all(map(_is_table, item.values()))
            ):
                # [services.www.example.com] makes nested tables: the dots need quoting.
                self.error(key, f'no service keys here; quote a name with dots: [services."{raw}.…"]')
            elif (service := self.service(name, item, key, datacenters, declared)) is not None:
                out[name] = service
        return out

    def service(
        self, name: str, value: Any, key: KeyPath, datacenters: Mapping[str, DataCenter], declared: set[str]
    ) -> Service | None:
        before = self.failed
        service = self.table(value, key, schema.SERVICE, defaults(Service))
        if service is None:
            return None
        if "datacenters" in value:
            service["datacenters"] = self.convert(
                v.names(sorted(declared), "data center"), value["datacenters"], (*key, "datacenters")
            )
        members, policy, answers, ttl = (service[k] for k in ("datacenters", "policy", "answers", "ttl"))
        if members is not None and answers is not None and answers > len(members):
            self.error((*key, "answers"), f"answers = {answers} but the service has {len(members)} data center(s)")
        if "ttl_degraded" not in value:
            service["ttl_degraded"] = min(ttl or 0, 10)
        if ttl is not None and service["ttl_degraded"] is not None and service["ttl_degraded"] > ttl:
            self.error((*key, "ttl_degraded"), f"ttl_degraded ({service['ttl_degraded']}) is longer than ttl ({ttl})")
        if service["all_down"] == "fallback" and "fallback" not in value:
            self.error((*key, "all_down"), 'all_down = "fallback" needs fallback addresses')
        elif service["all_down"] not in (None, "fallback") and "fallback" in value:
            self.error((*key, "fallback"), 'only used with all_down = "fallback"')
        for option, user in (("map", "geo"), ("default", "geo"), ("order", "failover")):
            if option in value and policy is not None and policy != user:
                self.error((*key, option), f'only used by policy "{user}"')
        pool: tuple[str, ...] = members or ()
        listed = v.names(pool, "member")
        service.update(map=(), default=pool, order=())
        if policy == "geo":
            service["map"] = self.geo_map(value["map"], (*key, "map"), listed) if "map" in value else ()
            if "default" in value:
                service["default"] = self.convert(listed, value["default"], (*key, "default"))
        elif policy == "failover":
            given = self.convert(listed, value["order"], (*key, "order")) if "order" in value else ()
            # Members left out of the order follow it, in datacenters order.
            service["order"] = None if given is None else (*given, *(m for m in pool if m not in given))
        if self.failed > before or members is None or any(m not in datacenters for m in members):
            return None  # (a broken data center is reported where it is defined)
        if policy == "nearest" and len(members) > 1:
            for i, member in enumerate(members):
                if not datacenters[member].has_coordinates:
                    where: KeyPath = (*key, "datacenters", i)
                    self.error(where, f'policy "nearest" needs latitude and longitude on data center {member!r}')
        if self.failed > before:
            return None
        return Service(name, **service, line=self.locator.find(key), path=self.path)

    def geo_map(self, value: Any, key: KeyPath, listed: v.Converter) -> tuple[GeoRule, ...]:
        rules: list[GeoRule] = []
        seen: dict[str, KeyPath] = {}  # where each rule's KIND:VALUE is
        for i, item in enumerate(self.convert(lambda x: v.array(x, nonempty=False), value, key) or ()):
            rkey: KeyPath = (*key, i)
            rule = self.table(item, rkey, schema.RULE, {})
            if rule is None:
                continue
            order = None if rule["order"] is None else self.convert(listed, rule["order"], (*rkey, "order"))
            matches = rule["match"]
            if matches is None:
                self.error((*rkey, "match"), "required key is missing")
                continue
            if matches == []:
                self.error((*rkey, "match"), "must not be empty")
            for j, match in enumerate(matches if isinstance(matches, list) else [matches]):
                where: KeyPath = (*rkey, "match", j) if isinstance(matches, list) else (*rkey, "match")
                text = self.convert(v.rule_match, match, where)
                if text in seen:
                    self.error(where, f"{text!r} is already matched by {render_key(seen[text])}")
                elif text is not None:
                    seen[text] = where
                    kind, _, what = text.partition(":")
                    if order is not None:
                        rules.append(GeoRule(kind, what, order, self.locator.find(where)))
        # Precedence, whatever the file order: the most specific CIDR, then subdivision,
        # country, continent (there is no overlap within the other kinds).
        return tuple(sorted(rules, key=_precedence))

    def cluster(self, value: Any) -> ClusterConfig | None:
        before = self.failed
        cluster = self.table(value, ("cluster",), schema.CLUSTER, defaults(ClusterConfig))
        if cluster is not None and cluster["name"] is not None and not v.NAME.fullmatch(cluster["name"]):
            message = "letters, digits, '_', '-', '.' only (starting with a letter or digit)"
            self.error(("cluster", "name"), f"{cluster['name']!r}: {message}")
        return ClusterConfig(**cluster) if cluster is not None and self.failed == before else None

    def cookies(self, value: Any) -> CookieSettings | None:
        key: KeyPath = ("cookies",)
        given = {"enabled": True, "large_answers_need_cookie": False, "large_answer_size": 512}
        cookies = self.table(value, key, schema.COOKIES, given)
        if cookies is None or not cookies["enabled"]:
            return None
        need, size, secret_file = cookies["large_answers_need_cookie"], cookies["large_answer_size"], None
        if cookies["secret_file"] is not None:
            secret_file = self.file(cookies["secret_file"], (*key, "secret_file"))
        secrets = None if secret_file is None else self.secrets(Path(secret_file), (*key, "secret_file"))
        if "large_answer_size" in value and need is False:
            self.error((*key, "large_answer_size"), "only used with large_answers_need_cookie = true")
        if (secret_file is not None and secrets is None) or size is None:
            return None
        return CookieSettings(secrets, secret_file, size if need else 0)

    def secrets(self, path: Path, key: KeyPath) -> tuple[bytes, ...] | None:
        """The secrets in a cookie secret file: 32 hex digits a line; blank lines and # comments skipped."""
        inputs.read(path)  # a rotation is a reload
        try:
            lines = [line.split("#", 1)[0].strip() for line in path.read_text("ascii").splitlines()]
        except (OSError, UnicodeDecodeError) as e:
            self.error(key, f"{str(path)!r}: cannot read: {getattr(e, 'strerror', None) or e}")
            return None
        wrong = next((n for n, line in enumerate(lines, 1) if line and not _SECRET.fullmatch(line)), None)
        secrets = tuple(bytes.fromhex(line) for line in lines if line) if wrong is None else ()
        if wrong is not None:
            self.error(
                key,
                f"{str(path)!r} line {wrong}: expected 32 hex digits (16 bytes, e.g. from "
                f"'openssl rand -hex 16'), got {len(lines[wrong - 1])} characters",
            )
        elif not secrets:
            self.error(key, f"{str(path)!r}: no secret in the file")
        elif len(secrets) > MAX_SECRETS:
            self.error(
                key,
                f"{str(path)!r}: {len(secrets)} secrets; at most {MAX_SECRETS} "
                "(the current one first, then those still accepted)",
            )
        else:
            return secrets
        return None

    def rrl(self, value: Any) -> RrlSettings | None:
        before = self.failed
        rrl = self.table(value, ("rrl",), schema.RRL, defaults(RrlSettings, enabled=True))
        if rrl is None or not rrl.pop("enabled") or self.failed > before:
            return None
        return RrlSettings(**rrl)

    def dnssec(self, value: Any) -> DnssecSettings | None:
        before = self.failed
        dnssec = self.table(value, ("dnssec",), schema.DNSSEC, defaults(DnssecSettings))
        if dnssec is None or self.failed > before:
            return None
        if "refresh" not in value:
            dnssec["refresh"] = dnssec["validity"] // 2
        elif dnssec["refresh"] >= dnssec["validity"]:
            message = f"must be less than validity ({dnssec['validity']} s), got {dnssec['refresh']}"
            self.error(("dnssec", "refresh"), message)
            return None
        # Signatures are due again (validity - inception_offset - refresh) after they are made.
        between = dnssec["validity"] - dnssec["inception_offset"] - dnssec["refresh"]
        if between < MIN_SIGNING_INTERVAL:
            key = "refresh" if "refresh" in value else "inception_offset"
            message = (
                f"signatures would be due again {between} s after they are made: validity ({dnssec['validity']} s) "
                f"must exceed inception_offset ({dnssec['inception_offset']} s) + refresh ({dnssec['refresh']} s) "
                f"by at least {MIN_SIGNING_INTERVAL} s"
            )
            self.error(("dnssec", key), message)
            return None
        return DnssecSettings(**dnssec)


def _is_table(value: Any) -> bool:
    return isinstance(value, dict)


def _precedence(rule: GeoRule) -> tuple[int, int]:
    return RULE_KINDS.index(rule.kind), -ipaddress.ip_network(rule.value).prefixlen if rule.kind == "cidr" else 0
