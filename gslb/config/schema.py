"""What each table of the configuration may hold: key -> converter (gslb.config.values), in file-format order.

Required marks a key that must be given; a key left out takes the model's default (``defaults``).
The order of a table's keys is the order an "unknown key; expected ..." message lists them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any, Final

from gslb.config import values as v
from gslb.config.model import (
    ALL_DOWN_MODES,
    CHECK_KINDS,
    HTTP_METHODS,
    LOAD_METRICS,
    MAX_TTL,
    NO_ECS_MODES,
    POLICIES,
    PRIVATE_MODES,
)

__all__ = [
    "CHECK",
    "CLUSTER",
    "COOKIES",
    "DATACENTER",
    "DNSSEC",
    "GEO",
    "HTTP_ONLY",
    "LOAD",
    "LOCATION",
    "OVERRIDE",
    "ROOT",
    "RRL",
    "RULE",
    "SERVICE",
    "Schema",
    "defaults",
    "raw",
]

Schema = Mapping[str, v.Converter | v.Required]


def raw(value: Any) -> Any:
    """A value the table's own code reads (a sub-table, a name to look up)."""
    return value


def defaults(model: type[Any], **more: Any) -> dict[str, Any]:
    """The defaults of a model's fields (and ``more``), for the keys left out."""
    return {f.name: f.default for f in dataclasses.fields(model) if f.default is not dataclasses.MISSING} | more


_HTTP_URL: Final = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?(/[^\s]*)?")
_ETCD_URL: Final = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})/?")
_etcd_url: Final = v.url(_ETCD_URL, "http://127.0.0.1:2379", "an etcd client URL")
HTTP_ONLY: Final = (
    "path", "method", "expect_status", "body_contains", "host", "verify_tls", "ca_file", "follow_redirects",
)  # fmt: skip

ROOT: Final[Schema] = dict.fromkeys(
    ("geo", "checks", "datacenters", "services", "cookies", "rrl", "cluster", "dnssec"), raw
)
GEO: Final[Schema] = dict(
    no_ecs=v.choice(NO_ECS_MODES), private=v.choice(PRIVATE_MODES), default=raw,
    override=lambda value: v.array(value, nonempty=False),
)  # fmt: skip
LOCATION: Final[Schema] = dict(
    country=v.country, continent=v.continent, subdivision=v.string, latitude=v.number(-90, 90),
    longitude=v.number(-180, 180), city=v.string,
)  # fmt: skip
OVERRIDE: Final[Schema] = {"network": v.Required(v.network), **LOCATION}
CHECK: Final[Schema] = dict(
    kind=v.Required(v.choice(CHECK_KINDS)), port=v.integer(1, 65535), path=v.string, method=v.choice(HTTP_METHODS),
    expect_status=v.statuses, body_contains=v.string, host=v.string, verify_tls=v.boolean, ca_file=v.string,
    follow_redirects=v.boolean, interval=v.number(above=0), timeout=v.number(above=0), fall=v.integer(1, 1000),
    rise=v.integer(1, 1000), jitter=v.number(0, 1),
)  # fmt: skip
DATACENTER: Final[Schema] = dict(
    vips=v.Required(v.addresses), latitude=v.number(-90, 90), longitude=v.number(-180, 180), country=v.country,
    continent=v.continent, weight=v.number(above=0), bias_km=v.number(-40_000, 40_000), check=raw,
    probe=v.address, load=raw,
)  # fmt: skip
LOAD: Final[Schema] = dict(
    kind=v.Required(v.choice(LOAD_METRICS)), url=v.Required(v.url(_HTTP_URL, "http://127.0.2.1:8081/stub_status")),
    metric=v.string, target=v.number(above=0), max=v.number(above=0), interval=v.number(0.5, 3600),
    timeout=v.number(0.05, 60), frontend=raw, backend=raw,
)  # fmt: skip
SERVICE: Final[Schema] = dict(
    datacenters=v.Required(raw), policy=v.choice(POLICIES), answers=v.integer(1, 1000), ttl=v.integer(0, MAX_TTL),
    ttl_degraded=v.integer(0, MAX_TTL), all_down=v.choice(ALL_DOWN_MODES), fallback=v.addresses, map=raw,
    default=raw, order=raw,
)  # fmt: skip
RULE: Final[Schema] = dict(match=raw, order=v.Required(raw))  # match: required, reported after order
CLUSTER: Final[Schema] = dict(
    name=v.Required(v.string),
    etcd=v.Required(v.each(lambda value: _etcd_url(value).rstrip("/"), lambda _, url: f"{url!r} is listed twice")),
    down_quorum=v.number(0, 0.99), lease=v.integer(2, 3600),
)  # fmt: skip
COOKIES: Final[Schema] = dict(
    enabled=v.boolean, secret_file=v.string, large_answers_need_cookie=v.boolean, large_answer_size=v.integer(64, 65535)
)  # fmt: skip
RRL: Final[Schema] = dict(
    enabled=v.boolean, rate=v.integer(1, 1_000_000), window=v.number(1, 3600), slip=v.integer(0, 10),
    exempt=v.each(v.network, nonempty=False), log_only=v.boolean, ipv4_prefix=v.integer(1, 32),
    ipv6_prefix=v.integer(1, 128),
)  # fmt: skip
DNSSEC: Final[Schema] = dict(
    validity=v.integer(3 * 3600, 366 * 86400), inception_offset=v.integer(0, 86400),
    refresh=v.integer(600, 366 * 86400), max_presigned=v.integer(0, 1_000_000),
)  # fmt: skip
