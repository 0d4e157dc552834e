"""What a value in the configuration may be: one converter per kind of value, each raising Invalid with its message."""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

from gslb.config.model import CONTINENTS, RULE_KINDS, KeyPath, normalize_name
from gslb.geo.places import IPAddress, IPNetwork

__all__ = [
    "COUNTRY",
    "NAME",
    "SUBDIVISION",
    "Converter",
    "Invalid",
    "Required",
    "address",
    "addresses",
    "array",
    "boolean",
    "choice",
    "cidr",
    "continent",
    "country",
    "each",
    "hint",
    "integer",
    "kind_of",
    "names",
    "network",
    "number",
    "reference",
    "rule_match",
    "service_name",
    "statuses",
    "string",
    "url",
]

NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # data centers, clusters
COUNTRY: Final = re.compile(r"[A-Z]{2}")
SUBDIVISION: Final = re.compile(r"[A-Z0-9]{1,3}")

Converter = Callable[[Any], Any]


class Required(NamedTuple):
    """A key that must be given (its converter)."""

    convert: Converter


class Invalid(Exception):
    """A value is wrong: a message, or (key path below the value, message) for each wrong part of it."""

    def __init__(self, problems: str | list[tuple[KeyPath, str]]) -> None:
        self.problems: list[tuple[KeyPath, str]] = [((), problems)] if isinstance(problems, str) else problems
        super().__init__(problems)


def kind_of(value: object) -> str:
    """The TOML name of a value's type, for messages."""
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string")):
        if isinstance(value, kind):
            return name
    return "an array" if isinstance(value, list) else "a table" if isinstance(value, dict) else "a date/time"


def hint(name: str, known: Iterable[str]) -> str:
    """'; did you mean ...?' for a close match among ``known``, else ''."""
    close = difflib.get_close_matches(name, tuple(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {kind_of(value)}")
    return value


def choice(options: Iterable[str]) -> Converter:
    allowed = tuple(options)

    def convert(value: Any) -> str:
        if string(value) not in allowed:
            raise Invalid(f"{value!r} is not one of " + ", ".join(map(repr, allowed)))
        return str(value)

    return convert


def number(low: float | None = None, high: float | None = None, above: float | None = None) -> Converter:
    def convert(value: Any) -> float:
        if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
            raise Invalid(f"expected a number, got {value if isinstance(value, float) else kind_of(value)}")
        if above is not None and not value > above:
            raise Invalid(f"must be greater than {above:g}, got {value}")
        if (low is not None and value < low) or (high is not None and value > high):
            raise Invalid(f"must be between {low:g} and {high:g}, got {value}")
        return float(value)

    return convert


def integer(low: int, high: int) -> Converter:
    def convert(value: Any) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise Invalid(f"expected an integer, got {kind_of(value)}")
        if not low <= value <= high:
            raise Invalid(f"must be between {low} and {high}, got {value}")
        return value

    return convert


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"expected true or false, got {kind_of(value)}")
    return value


def array(value: Any, nonempty: bool = True) -> list[Any]:
    if not isinstance(value, list):
        raise Invalid(f"expected an array, got {kind_of(value)}")
    if nonempty and not value:
        raise Invalid("must not be empty")
    return value


def each(
    convert: Converter, twice: Callable[[Any, Any], str] | None = None, nonempty: bool = True
) -> Callable[[Any], tuple[Any, ...]]:
    """An array converted element by element, every wrong element reported; ``twice`` words a repeat."""

    def convert_all(value: Any) -> tuple[Any, ...]:
        out: list[Any] = []
        problems: list[tuple[KeyPath, str]] = []
        for i, item in enumerate(array(value, nonempty)):
            try:
                converted = convert(item)
            except Invalid as e:
                problems += [((i, *at), message) for at, message in e.problems]
                continue
            if twice is not None and converted in out:
                problems.append(((i,), twice(item, converted)))
            else:
                out.append(converted)
        if problems:
            raise Invalid(problems)
        return tuple(out)

    return convert_all


def address(value: Any) -> IPAddress:
    if not isinstance(value, str):
        raise Invalid(f"expected an IP address string, got {kind_of(value)}")
    try:
        found = ipaddress.ip_address(value)
    except ValueError:
        raise Invalid(f"{value!r} is not an IPv4 or IPv6 address") from None
    if isinstance(found, ipaddress.IPv6Address) and found.scope_id:
        raise Invalid(f"{value!r}: a scoped address (%zone) cannot be answered")
    if found.is_unspecified or found.is_multicast:
        raise Invalid(f"{value!r} is not a unicast address")
    return found


addresses: Final = each(address, lambda item, _: f"duplicate address {item!r}")


def cidr(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        pass
    try:
        loose = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise Invalid(f"{text!r} is not a CIDR network (like 192.0.2.0/24)") from None
    raise Invalid(f"{text!r} has host bits set; did you mean {str(loose)!r}?")


def network(value: Any) -> IPNetwork:
    if not isinstance(value, str):
        raise Invalid(f"expected a CIDR string, got {kind_of(value)}")
    return cidr(value)


def country(value: Any) -> str:
    code = string(value).upper()
    if not COUNTRY.fullmatch(code):
        raise Invalid(f"{code!r} is not an ISO 3166-1 alpha-2 code")
    return code


def continent(value: Any) -> str:
    code = string(value).upper()
    if code not in CONTINENTS:
        raise Invalid(f"unknown continent {code!r}; expected one of " + " ".join(sorted(CONTINENTS)))
    return code


def reference(known: Iterable[str], what: str) -> Converter:
    """The name of one of ``known`` (a check, a data center)."""
    valid = tuple(known)

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected a {what} name, got {kind_of(value)}")
        if value not in valid:
            raise Invalid(f"unknown {what} {value!r}{hint(value, valid)}")
        return value

    return convert


def names(known: Iterable[str], what: str) -> Converter:
    """A non-empty array of distinct names of ``known``; what = "member": of the service's datacenters."""
    valid = tuple(known)

    def member(value: Any) -> str:
        if isinstance(value, str) and value not in valid and what == "member":
            raise Invalid(f"{value!r} is not one of the service's datacenters")
        return str(reference(valid, what)(value))

    return each(member, lambda item, _: f"{what} {item!r} is listed twice")


def url(pattern: re.Pattern[str], example: str, what: str = "an http(s) URL") -> Converter:
    """A URL ``pattern`` matches whole (group 2: the port, if any), stripped of blanks."""

    def convert(value: Any) -> str:
        if not isinstance(value, str):
            raise Invalid(f"expected a URL string, got {kind_of(value)}")
        m = pattern.fullmatch(value.strip())
        if m is None:
            raise Invalid(f'{value!r} is not {what} (like "{example}")')
        if m.group(2) is not None and not 1 <= int(m.group(2)) <= 65535:
            raise Invalid(f"{value!r}: the port must be between 1 and 65535")
        return value.strip()

    return convert


def statuses(value: Any) -> tuple[int, ...]:
    """One HTTP status or an array of them (the first wrong one reported), without repeats."""
    convert = integer(100, 599)
    try:
        items = [convert(value)] if isinstance(value, int) and not isinstance(value, bool) else each(convert)(value)
    except Invalid as e:
        raise Invalid(e.problems[:1]) from None
    return tuple(dict.fromkeys(items))


def rule_match(value: Any) -> str:
    """A geo map rule's KIND:VALUE, normalised ("country:JP", "cidr:203.0.113.0/24")."""
    if not isinstance(value, str):
        raise Invalid(f'expected a string like "country:JP", got {kind_of(value)}')
    kind, sep, rest = value.partition(":")
    kind, rest = kind.strip().lower(), rest.strip()
    if not sep or kind not in RULE_KINDS:
        raise Invalid(f"{value!r} is not KIND:VALUE with KIND one of " + ", ".join(RULE_KINDS))
    if kind == "cidr":
        return f"cidr:{cidr(rest)}"
    rest = rest.upper()
    if kind == "continent":
        continent(rest)
    elif kind == "country" and not COUNTRY.fullmatch(rest):
        raise Invalid(f"{rest!r} is not an ISO 3166-1 alpha-2 country code")
    elif kind == "subdivision":
        country_code, dash, code = rest.partition("-")
        if not dash or not COUNTRY.fullmatch(country_code) or not SUBDIVISION.fullmatch(code):
            raise Invalid(f'{rest!r} is not an ISO 3166-2 code like "US-CA"')
    return f"{kind}:{rest}"


# The first test a service name fails words its problem ({raw!r}: the name as written).
_SERVICE_NAME: Final[tuple[tuple[Callable[[str, list[str]], bool], str], ...]] = (
    (lambda name, _: name == ".", "the root cannot be a service"),
    (lambda name, _: not name.isascii(), "use the ASCII (punycode, xn--) form of the name"),
    (lambda _, labels: not all(labels), "{raw!r} has an empty label"),
    (lambda name, labels: max(map(len, labels)) > 63 or len(name) > 254,
     "{raw!r} is too long (labels up to 63, names up to 253 characters)"),
    (lambda name, _: any(c.isspace() or c == "\\" for c in name),
     "{raw!r}: a service name cannot hold blanks or backslashes"),
    (lambda _, labels: "*" in labels, "wildcard services are not supported"),
)  # fmt: skip


def service_name(raw: str) -> str:
    """A service's name as keyed: lower-case and absolute."""
    name = normalize_name(raw)
    labels = name[:-1].split(".")
    for test, message in _SERVICE_NAME:
        if test(name, labels):
            raise Invalid(message.format(raw=raw))
    return name
