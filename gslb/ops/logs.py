"""Log output (text, or one JSON object per line) and the sampled query log."""

from __future__ import annotations

import datetime
import json
import logging
import random
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from gslb.dns.wire import Drop, FormError, parse_query

if TYPE_CHECKING:
    from gslb.dns.answer import Answerer

log = logging.getLogger("gslb.logs")
query_log = logging.getLogger("gslb.query")

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FORMATS = ("text", "json")
# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, pid, and the record's extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(level: str = "info", fmt: str = "text") -> None:
    """Send every log record to stderr in `fmt` ("text" or "json"); worker processes inherit it."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


class QueryLog:
    """Logs a sample of queries, with the answer, the data center and the reason for it.

    Called by Answerer.handle after every query (when set); `rate` is the share logged
    (1: every query). The reason comes from deciding the query again through the
    policy, so a logged query costs a hundred times an unlogged one: keep `rate` small
    on a busy server. Records go to the `gslb.query` logger at INFO, with the fields
    client, ecs, qname, qtype, transport, rcode, answer, datacenter and reason.
    """

    def __init__(self, answerer: Answerer, rate: float, uniform: Callable[[], float] = random.random) -> None:
        if not 0 < rate <= 1:
            raise ValueError("the query log rate must be above 0 and at most 1")
        self.answerer = answerer
        self.rate = rate
        self._uniform = uniform

    def __call__(self, wire: bytes, source: str | None, tcp: bool, reply: bytes | None) -> None:
        if self.rate < 1 and self._uniform() >= self.rate:
            return
        try:
            self._log(wire, source, tcp, reply)
        except Exception:  # the query log must never cost an answer
            log.debug("query log failed", exc_info=True)

    def _log(self, wire: bytes, source: str | None, tcp: bool, reply: bytes | None) -> None:
        fields: dict[str, Any] = {
            "client": source,
            "transport": "tcp" if tcp else "udp",
            "ecs": None,
            "qname": None,
            "qtype": None,
            "rcode": "dropped",
            "answer": [],
            "datacenter": None,
            "reason": None,
        }
        if reply is not None:
            fields.update(_reply_fields(reply))
        try:
            query = parse_query(wire)
        except (Drop, FormError) as exc:
            fields["reason"] = f"malformed query: {exc}" if str(exc) else "malformed query"
            self._emit(fields)
            return
        fields["qname"] = dns.name.Name((*query.labels, b"")).to_text()
        fields["qtype"] = dns.rdatatype.to_text(query.qtype)  # type: ignore[arg-type]
        subnet = query.edns.client_subnet if query.edns is not None else None
        if subnet is not None:
            fields["ecs"] = str(subnet.network())
        if fields["rcode"] in ("NOERROR", "NXDOMAIN", "SERVFAIL") and query.qclass == 1:
            self._explain(fields, source)
        elif fields["rcode"] == "REFUSED":
            fields["reason"] = "refused: outside every zone, a zone transfer, or not class IN"
        self._emit(fields)

    def _explain(self, fields: dict[str, Any], source: str | None) -> None:
        from gslb.ops.explain import explain_query  # imports the policy; only when logging

        state = self.answerer.state
        client = source.split("%")[0] if source else None
        try:
            result = explain_query(
                state.snapshot, fields["qname"], fields["qtype"], client, fields["ecs"], state.health, state.spill
            )
        except (ValueError, dns.exception.DNSException):
            return
        fields["reason"] = result["why"]
        if result["kind"] == "service":
            # The data centers the answer came from (a weighted draw may differ from a new one).
            by_vip = {str(vip): dc.name for dc in state.snapshot.config.datacenters.values() for vip in dc.vips}
            sent = [by_vip[a] for a in fields["answer"] if a in by_vip]
            fields["datacenter"] = ",".join(dict.fromkeys(sent)) or None
            if fields["datacenter"] is None and result["datacenters"]:
                fields["datacenter"] = ",".join(result["datacenters"])

    def _emit(self, fields: dict[str, Any]) -> None:
        answer = " ".join(fields["answer"]) or "-"
        query_log.info(
            "query %s ecs=%s %s %s %s %s %s dc=%s: %s",
            fields["client"] or "-",
            fields["ecs"] or "-",
            fields["qname"] or "-",
            fields["qtype"] or "-",
            fields["transport"],
            fields["rcode"],
            answer,
            fields["datacenter"] or "-",
            fields["reason"] or "-",
            extra=fields,
        )


def _reply_fields(reply: bytes) -> dict[str, Any]:
    try:
        message = dns.message.from_wire(reply, ignore_trailing=True)
    except dns.exception.DNSException:
        return {"rcode": "unreadable"}
    rcode = dns.rcode.to_text(message.rcode())
    if message.flags & dns.flags.TC:
        rcode += " (truncated)"
    return {"rcode": rcode, "answer": [rd.to_text() for rrset in message.answer for rd in rrset]}
