"""This instance's part in a cluster: its observations written under a lease, everyone's watched.

The session with etcd (gslb.cluster.etcd): join with a lease and keep it alive, write this
instance's record whenever its own verdicts change, watch every record and drain, and decide
each data center by the vote of gslb.cluster.votes, which the monitor then publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from gslb.cluster.etcd import Etcd, EtcdError, Event, KeyValue
from gslb.cluster.votes import Observation, Record, Vote, tally, verdict
from gslb.config.model import ClusterConfig
from gslb.health.monitor import HealthMonitor
from gslb.health.view import Status

log = logging.getLogger("gslb.cluster")

RETRY_MIN = 0.25  # seconds before trying etcd again once every member failed; doubles …
RETRY_MAX = 1.0  # … up to this
SHARE_TIMEOUT = 1.0  # seconds an admin drain waits for etcd before keeping it for later


class _LeaseLost(EtcdError):
    """Our lease expired (we were cut off for longer than its TTL): join again at once."""


class Cluster:
    """This instance's part in a cluster: run() until cancelled, then close()."""

    def __init__(self, config: ClusterConfig, instance: str, monitor: HealthMonitor) -> None:
        self.config = config
        self.instance = instance
        self.monitor = monitor
        self.prefix = f"/gslb/{config.name}/"
        self.started = time.time()
        self.etcd_up = False
        self.endpoint: str | None = None  # the member this instance talks to now
        self.changed_at = self.started  # when etcd_up last changed
        self.peers: dict[str, Record] = {}  # the other live instances, by name
        self.votes: dict[str, Vote] = {}
        self._since: dict[str, tuple[bool, float]] = {}  # name -> (up, since) of the vote
        self._lease = 0
        self._ttl = config.lease
        self._client: Etcd | None = None  # while a session is in sync
        self._dirty = asyncio.Event()  # our record needs writing
        self._pending: dict[str, float | None] = {}  # drains (time) and undrains (None) not yet in etcd
        self._lost_logged = False
        self._warned: set[int] = set()  # leases of other instances seen writing under our name

    def same_membership(self, config: ClusterConfig) -> bool:
        """Whether `config` keeps this instance in the same cluster, under the same lease."""
        return (config.name, config.etcd, config.lease) == (self.config.name, self.config.etcd, self.config.lease)

    def reconfigure(self, config: ClusterConfig) -> None:
        """Take a reloaded [cluster] that only changes down_quorum."""
        if config != self.config:
            log.info("cluster: down_quorum %g (was %g)", config.down_quorum, self.config.down_quorum)
            self.config = config
            self.decide()

    # -- keys

    @property
    def _own_key(self) -> str:
        return f"{self.prefix}observers/{self.instance}"

    def _record(self) -> Record:
        observations = {name: Observation.from_status(s) for name, s in self.monitor.observations.items()}
        return Record(self.instance, self.started, observations, socket.gethostname(), os.getpid())

    # -- the vote

    def observed(self) -> None:
        """HealthMonitor's on_observe hook: our own observations changed."""
        self._dirty.set()
        self.decide()

    def observations(self, name: str) -> dict[str, Observation]:
        """Every live instance's observation of `name`, ours included."""
        out: dict[str, Observation] = {}
        own = self.monitor.observations.get(name)
        if own is not None:
            out[self.instance] = Observation.from_status(own)
        for instance, record in self.peers.items():
            observation = record.observations.get(name)
            if observation is not None:
                out[instance] = observation
        return out

    def decide(self) -> None:
        """Vote on every target again and hand the verdicts to the monitor."""
        now = time.time()
        verdicts: dict[str, Status] = {}
        votes: dict[str, Vote] = {}
        for name, own in self.monitor.observations.items():
            observations = self.observations(name)
            vote = votes[name] = tally(name, observations, self.config.down_quorum)
            if self._alone(vote):
                # Alone (or nobody has probed): our own view decides, exactly as without a cluster.
                self._since[name] = (own.up, own.since)
                continue
            up = not vote.is_down
            previous = self._since.get(name)
            since = previous[1] if previous is not None and previous[0] == up else now
            self._since[name] = (up, since)
            verdicts[name] = verdict(vote, observations, since)
        self._log_changes(votes)
        self.votes = votes
        self.monitor.set_verdicts(verdicts)

    def _alone(self, vote: Vote) -> bool:
        """Whether nobody but this instance is counted in `vote`."""
        return set(vote.down + vote.up) <= {self.instance}

    def _log_changes(self, votes: Mapping[str, Vote]) -> None:
        for name, vote in votes.items():
            before = self.votes.get(name)
            if before is None or before.is_down == vote.is_down or (self._alone(before) and self._alone(vote)):
                continue  # alone, the monitor's own UP/DOWN line says it
            log.log(
                logging.WARNING if vote.is_down else logging.INFO,
                "cluster: %s %s by the vote: %d of %d live instances see it down%s",
                name,
                "DOWN" if vote.is_down else "UP",
                len(vote.down),
                vote.voters,
                f" ({', '.join(vote.down)})" if vote.down else "",
            )

    # -- drains

    async def drain(self, name: str) -> bool:
        """Drain `name` here at once and on every instance through etcd; False when etcd
        could not be reached (the drain then holds here and is shared once it can)."""
        at = time.time()
        self.monitor.drain(name, probed=False, at=at)
        return await self._share(name, at)

    async def undrain(self, name: str) -> bool:
        if name in self.monitor.drained:
            self.monitor.undrain(name)
        return await self._share(name, None)

    async def _share(self, name: str, at: float | None) -> bool:
        self._pending[name] = at
        client = self._client
        if client is None:
            return False
        try:
            async with asyncio.timeout(SHARE_TIMEOUT):
                await self._flush(client)
        except (EtcdError, TimeoutError) as exc:
            log.warning("cluster: cannot share the drain of %s yet: %s", name, exc or "timed out")
            return False
        return True

    async def _flush(self, client: Etcd) -> None:
        """Write the drains and undrains made while etcd was away (or just now)."""
        for name, at in list(self._pending.items()):
            key = f"{self.prefix}drains/{name}"
            if at is None:
                await client.delete(key)
            else:
                await client.put(key, json.dumps({"at": at, "by": self.instance}).encode())
            if self._pending.get(name, 0) == at:
                del self._pending[name]

    def _apply_drain(self, name: str, value: bytes | None, joining: bool = False) -> None:
        """A drain key as etcd has it (None: deleted) made true here."""
        if name in self._pending:
            return  # ours, not yet written: it wins when it is
        drained = name in self.monitor.drained
        if value is None:
            if drained:
                log.info(
                    "cluster: %s %s",
                    name,
                    "is not drained in etcd: undrained here" if joining else "undrained on another instance",
                )
                self.monitor.undrain(name)
            return
        if drained:
            return
        try:
            item = json.loads(value)
            at, by = float(item["at"]), str(item.get("by", "?"))
        except (ValueError, KeyError, TypeError):
            at, by = time.time(), "?"
        log.info("cluster: %s drained by %s", name, by)
        self.monitor.drain(name, probed=False, at=at)

    # -- talking to etcd

    async def run(self) -> None:
        """Stay joined to the cluster: reconnect, fall back and rejoin, until cancelled."""
        self.decide()
        endpoints = self.config.etcd
        index, failures, delay = 0, 0, RETRY_MIN
        while True:
            client = Etcd(endpoints[index % len(endpoints)], timeout=min(2.0, max(0.5, self._ttl / 3)))
            self.endpoint = client.endpoint
            try:
                await self._session(client)
                error = EtcdError(f"{client.endpoint}: the session ended")
            except _LeaseLost as exc:
                log.warning("cluster: %s; joining again", exc)
                self._lease = 0
                continue
            except EtcdError as exc:
                error = exc
            finally:
                synced = self._client is not None
                self._client = None
                await client.aclose()
            log.log(logging.INFO if synced else logging.DEBUG, "cluster: %s", error)
            index += 1
            failures = 1 if synced else failures + 1
            if synced:
                delay = RETRY_MIN
            if failures >= len(endpoints):  # every member failed, one after the other
                self._lost(error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                failures = 0

    async def _session(self, client: Etcd) -> None:
        if not self._lease or await client.keepalive(self._lease) <= 0:
            self._lease, self._ttl = await client.grant(self.config.lease)
        self._dirty.clear()
        await client.put(self._own_key, self._record().encode(), self._lease)
        await self._flush(client)
        revision, kvs = await client.range_prefix(self.prefix)
        self._load(kvs)
        self._client = client
        self._joined(client.endpoint)
        await _first_failure(self._keepalive(client), self._write(client), self._watch(client, revision + 1))

    def _load(self, kvs: list[KeyValue]) -> None:
        """Adopt what etcd holds: the live instances' records, and its drains."""
        self.peers = {}
        drains: dict[str, bytes] = {}
        for kv in kvs:
            self._apply(kv, deleted=False, drains=drains)
        for name in list(self.monitor.drained):
            if name not in drains:
                self._apply_drain(name, None, joining=True)
        for name, value in drains.items():
            self._apply_drain(name, value)

    def _apply(self, kv: KeyValue, *, deleted: bool, drains: dict[str, bytes] | None = None) -> None:
        rest = kv.key[len(self.prefix) :]
        kind, _, name = rest.partition("/")
        if kind == "observers" and name:
            if name == self.instance:
                if deleted:
                    self._dirty.set()  # deleted from outside: write it again
                elif kv.lease != self._lease:
                    self._same_name(kv)
                return
            if deleted:
                if self.peers.pop(name, None) is not None:
                    log.info("cluster: instance %s left", name)
                return
            try:
                record = Record.decode(kv.value)
            except ValueError as exc:
                log.warning("cluster: ignoring %s: %s", kv.key, exc)
                return
            if name not in self.peers:
                log.info("cluster: instance %s joined", name)
            self.peers[name] = record
        elif kind == "drains" and name:
            if drains is not None:
                drains[name] = kv.value
            else:
                self._apply_drain(name, None if deleted else kv.value)

    def _same_name(self, kv: KeyValue) -> None:
        """Our key written under another lease: another live instance has our name."""
        if kv.lease in self._warned:
            return
        self._warned.add(kv.lease)
        try:
            record = Record.decode(kv.value)
            who = f" (host {record.host}, pid {record.pid})"
        except ValueError:
            who = ""
        log.error(
            "cluster: another instance%s writes its observations as %s too: give each instance its own "
            "--instance NAME; until then their votes overwrite each other",
            who,
            self.instance,
        )
        self._dirty.set()

    def _joined(self, endpoint: str) -> None:
        if not self.etcd_up:
            self.etcd_up, self.changed_at = True, time.time()
            log.info(
                "cluster %s: instance %s %s etcd at %s; %d other live instance%s",
                self.config.name,
                self.instance,
                "back on" if self._lost_logged else "joined through",
                endpoint,
                len(self.peers),
                "" if len(self.peers) == 1 else "s",
            )
        self._lost_logged = False
        self.decide()

    def _lost(self, error: EtcdError) -> None:
        if self.etcd_up or not self._lost_logged:
            log.warning(
                "cluster %s: etcd unreachable (%s): instance %s decides on its own observations until it is back",
                self.config.name,
                error,
                self.instance,
            )
            self._lost_logged = True
        if self.etcd_up:
            self.etcd_up, self.changed_at = False, time.time()
        self.peers = {}
        self.decide()

    async def _keepalive(self, client: Etcd) -> None:
        while True:
            await asyncio.sleep(max(0.2, self._ttl / 3))
            if await client.keepalive(self._lease) <= 0:
                raise _LeaseLost(f"the lease of instance {self.instance} expired")

    async def _write(self, client: Etcd) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await client.put(self._own_key, self._record().encode(), self._lease)
            if self._pending:
                await self._flush(client)

    async def _watch(self, client: Etcd, revision: int) -> None:
        batch: list[Event]
        async for batch in client.watch_prefix(self.prefix, revision):
            for event in batch:
                self._apply(event.kv, deleted=event.deleted)
            self.decide()

    async def close(self) -> None:
        """Revoke our lease, so that the others stop counting us at once (best effort, ~1 s)."""
        self.monitor.set_verdicts(None)
        lease, self._lease = self._lease, 0
        if not lease:
            return
        endpoints = [e for e in self.config.etcd if e == self.endpoint] + [
            e for e in self.config.etcd if e != self.endpoint
        ]
        deadline = time.monotonic() + 1.5
        for endpoint in endpoints:
            remaining = deadline - time.monotonic()
            if remaining <= 0.05:
                break
            client = Etcd(endpoint, timeout=min(1.0, remaining))
            try:
                await client.revoke(lease)
                log.info("cluster: left (lease revoked)")
                return
            except EtcdError as exc:
                log.debug("cluster: revoke through %s: %s", endpoint, exc)
            finally:
                await client.aclose()
        log.warning(
            "cluster: could not revoke the lease; the others stop counting this instance when it expires (%d s)",
            self._ttl,
        )

    # -- what operators see

    def status(self) -> dict[str, Any]:
        now = time.time()
        instances = [{"name": self.instance, "live": True, "self": True, "age": round(now - self.started, 1)}]
        instances += [
            {"name": name, "live": True, "self": False, "age": round(now - record.started, 1)}
            for name, record in sorted(self.peers.items())
        ]
        return {
            "name": self.config.name,
            "instance": self.instance,
            "etcd": self.etcd_up,
            "endpoint": self.endpoint,
            "since": self.changed_at,
            "down_quorum": self.config.down_quorum,
            "lease": self._ttl,
            "live": len(instances),
            "instances": instances,
            "pending_drains": sorted(self._pending),
        }

    def datacenter(self, name: str) -> dict[str, Any]:
        """`name`'s observations by instance and the vote, as /api/status shows them."""
        now = time.time()
        observations = self.observations(name)
        vote = self.votes.get(name) or tally(name, observations, self.config.down_quorum)
        return {
            "observations": {
                instance: {
                    "state": "up" if o.up else "down",
                    "reason": o.reason,
                    "age": round(max(0.0, now - o.since), 1),
                    "counted": o.probed,
                }
                for instance, o in sorted(observations.items())
            },
            "vote": {
                "down": list(vote.down),
                "up": list(vote.up),
                "voters": vote.voters,
                "quorum": vote.quorum,
                "down_by_vote": vote.is_down,
            },
        }


async def _first_failure(*jobs: Awaitable[None]) -> None:
    """Run `jobs` together until one fails; cancel the others and raise its error."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def read(config: ClusterConfig, timeout: float = 2.0) -> tuple[str, dict[str, Record], set[str]]:
    """For `gslb explain`: the live records and the drains as etcd holds them now, and the
    endpoint read; EtcdError when no member answers."""
    prefix = f"/gslb/{config.name}/"
    error: EtcdError | None = None
    for endpoint in config.etcd:
        client = Etcd(endpoint, timeout=timeout)
        try:
            _, kvs = await client.range_prefix(prefix)
        except EtcdError as exc:
            error = exc
            continue
        finally:
            await client.aclose()
        records: dict[str, Record] = {}
        drains: set[str] = set()
        for kv in kvs:
            kind, _, name = kv.key[len(prefix) :].partition("/")
            if kind == "observers" and name:
                with contextlib.suppress(ValueError):
                    records[name] = Record.decode(kv.value)
            elif kind == "drains" and name:
                drains.add(name)
        return endpoint, records, drains
    assert error is not None
    raise error
