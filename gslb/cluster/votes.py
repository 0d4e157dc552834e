"""Several instances, one verdict: what each instance publishes, and the vote over it.

(The session with etcd that carries the records is gslb.cluster.member.)

Each instance keeps probing on its own and folds its probes as before (gslb.health). Here
its own verdict of each data center, an *observation*, is written to etcd under a lease it
keeps alive, at ``/gslb/<cluster>/observers/<instance>`` (one JSON record per instance);
every instance watches everyone's records and decides each data center by a vote of the
live instances: down when the share that observes it down is greater than ``down_quorum``.
A record disappears when its lease does: at once when the instance stops (it revokes the
lease), after the lease's TTL when it dies or is cut off. Drains are keys of their own,
``/gslb/<cluster>/drains/<name>``, without a lease, applied by every instance as they come.

Nothing here is on the query path: the vote becomes the HealthView the monitor publishes,
which reaches the answerers as every verdict does. When etcd cannot be reached the vote has
only this instance's observations, that is its own view, until etcd is back.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from gslb.config.model import ClusterConfig
from gslb.health.view import DRAINED, NO_PROBE_YET, HealthView, Status

log = logging.getLogger("gslb.cluster")

RECORD_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Observation:
    """One instance's own verdict of one data center."""

    up: bool
    reason: str
    since: float  # wall-clock time of its last change, on the observing instance's clock
    probed: bool = True  # False: nothing probed yet (shown, not counted)

    def to_json(self) -> dict[str, Any]:
        return {"up": self.up, "reason": self.reason, "since": self.since, "probed": self.probed}

    @classmethod
    def from_status(cls, status: Status) -> Observation:
        return cls(status.up, status.reason, status.since, status.reason != NO_PROBE_YET)


@dataclass(frozen=True, slots=True)
class Record:
    """What one instance has written: who it is and what it observes."""

    instance: str
    started: float
    observations: Mapping[str, Observation]
    host: str = ""
    pid: int = 0

    def encode(self) -> bytes:
        return json.dumps(
            {
                "format": RECORD_FORMAT,
                "instance": self.instance,
                "host": self.host,
                "pid": self.pid,
                "started": self.started,
                "written": time.time(),
                "observations": {name: o.to_json() for name, o in self.observations.items()},
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Record:
        """ValueError when `data` is not a record of ours."""
        try:
            item = json.loads(data)
            if item.get("format") != RECORD_FORMAT:
                raise ValueError(f"unknown format {item.get('format')!r}")
            observations = {
                str(name): Observation(bool(o["up"]), str(o["reason"]), float(o["since"]), bool(o.get("probed", True)))
                for name, o in item["observations"].items()
            }
            return cls(
                str(item["instance"]),
                float(item["started"]),
                observations,
                str(item.get("host", "")),
                int(item.get("pid", 0)),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed record: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Vote:
    """How the live instances see one data center."""

    name: str
    down: tuple[str, ...]  # instances that observe it down
    up: tuple[str, ...]  # instances that observe it up
    quorum: float

    @property
    def voters(self) -> int:
        return len(self.down) + len(self.up)

    @property
    def is_down(self) -> bool:
        """Down when more than `quorum` of the instances that observe it see it down."""
        return bool(self.voters) and len(self.down) / self.voters > self.quorum


def tally(name: str, observations: Mapping[str, Observation], quorum: float) -> Vote:
    """The vote on data center `name` from each live instance's observation of it."""
    counted = sorted((instance, o) for instance, o in observations.items() if o.probed)
    return Vote(name, tuple(i for i, o in counted if not o.up), tuple(i for i, o in counted if o.up), quorum)


def verdict(vote: Vote, observations: Mapping[str, Observation], since: float) -> Status:
    """The Status a vote publishes; its reason says how the instances saw it."""
    if vote.is_down:
        reasons = [observations[i].reason for i in vote.down]
        common = max(set(reasons), key=reasons.count)
        return Status(False, f"down for {len(vote.down)} of {vote.voters} instances: {common}", since)
    if vote.down:
        return Status(True, f"up for {len(vote.up)} of {vote.voters} instances ({', '.join(vote.down)}: down)", since)
    return Status(True, observations[vote.up[0]].reason if vote.up else "ok", since)


def default_instance(port: int) -> str:
    """An instance's name when --instance is not given: the host name and the DNS port."""
    return f"{socket.gethostname()}:{port}"


def check_instance(name: str) -> str:
    """`name` if it can name an instance (it becomes part of an etcd key); ValueError if not."""
    if not name or len(name) > 128 or "/" in name or not name.isprintable() or name != name.strip():
        raise ValueError(f"{name!r}: an instance name is 1-128 printable characters, no '/', no spaces around it")
    return name


def shared_view(
    config: ClusterConfig, records: Mapping[str, Record], drains: set[str], saved: HealthView
) -> tuple[HealthView, dict[str, dict[str, Any]]]:
    """For `gslb explain`: the view the live instances' vote gives (drains as etcd has them;
    a name nobody observes as in `saved`), and per data center who sees it how."""
    now = time.time()
    names = {name for record in records.values() for name in record.observations}
    states = {name: status for name, status in saved.states.items() if not status.drained}
    shown: dict[str, dict[str, Any]] = {}
    for name in sorted(names):
        observations = {i: r.observations[name] for i, r in records.items() if name in r.observations}
        vote = tally(name, observations, config.down_quorum)
        if vote.voters:
            states[name] = verdict(vote, observations, now)
        shown[name] = {
            "down": list(vote.down),
            "up": list(vote.up),
            "down_by_vote": vote.is_down,
            "reasons": {i: o.reason for i, o in observations.items() if not o.up},
        }
    for name in drains:
        states[name] = Status(False, DRAINED, now, drained=True)
    return HealthView(saved.version, MappingProxyType(states)), shown
