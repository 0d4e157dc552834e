"""Several instances, one verdict: three real gslb servers share observations and drains through a
real three-member etcd cluster, each probing from its own source address (127.0.50.1-3) at
targets that fail per source address."""

from __future__ import annotations

import base64
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import dns.edns
import dns.message
import httpx
import pytest

from gslb.cluster.etcd import prefix_end
from gslb.cluster.votes import Observation, Record, check_instance, default_instance, tally, verdict
from gslb.config.load import loads
from gslb.config.model import Check, ClusterConfig, ConfigError, Target
from gslb.health.probe import ProbeResult, needs_client, probe
from gslb.health.transport import new_client, probe_source
from tests.conftest import EXAMPLE_ZONES, Server
from tests.probe_targets import Certificate, HttpTarget, free_port, make_certificate, run_async

EUROPE = dns.edns.ECSOption("85.214.0.0", 24)  # a German network (embedded geodb): nearest is eu
EU, US = "127.0.2.1", "127.0.1.1"  # the VIPs answered
LEASE = 2  # seconds; etcd's least with the timing below
SOURCES = {"A": "127.0.50.1", "B": "127.0.50.2", "C": "127.0.50.3", "D": "127.0.50.4"}
LETTERS = "ABC"  # the cluster's three; D joins for one test
TOKEN = secrets.token_hex(8)

pytestmark = pytest.mark.timeout(90)


class SourceTarget(HttpTarget):
    """A health target that answers 503 to probes sent from the addresses in `failing`."""

    def __init__(self, host: str, certificate: Certificate | None = None) -> None:
        self.failing: set[str] = set()
        self.sources: set[str] = set()  # every address a probe came from
        super().__init__(host, certificate=certificate)

    def serve(self, conn: socket.socket) -> None:
        source = conn.getpeername()[0]
        self.sources.add(source)
        if source not in self.failing:
            super().serve(conn)
            return
        data = b""
        while b"\r\n\r\n" not in data and len(data) < 65536:
            chunk = conn.recv(4096)
            if not chunk:
                return
            data += chunk
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


class Etcd:
    """A three-member etcd cluster on 127.0.10.1-3, each member stoppable and restartable."""

    HOSTS = ("127.0.10.1", "127.0.10.2", "127.0.10.3")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = [(free_port(host), free_port(host)) for host in self.HOSTS]  # (client, peer)
        self.urls = [f"http://{host}:{client}" for host, (client, _) in zip(self.HOSTS, self.ports, strict=True)]
        self.initial = ",".join(
            f"m{i}=http://{host}:{peer}" for i, (host, (_, peer)) in enumerate(zip(self.HOSTS, self.ports, strict=True))
        )
        self.procs: list[subprocess.Popen[bytes] | None] = [None] * len(self.HOSTS)

    def start(self, i: int) -> None:
        host, (client, peer) = self.HOSTS[i], self.ports[i]
        log = open(self.directory / f"m{i}.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.procs[i] = subprocess.Popen(
            [
                "etcd",
                "--name",
                f"m{i}",
                "--data-dir",
                str(self.directory / f"m{i}"),
                "--listen-client-urls",
                f"http://{host}:{client}",
                "--advertise-client-urls",
                f"http://{host}:{client}",
                "--listen-peer-urls",
                f"http://{host}:{peer}",
                "--initial-advertise-peer-urls",
                f"http://{host}:{peer}",
                "--initial-cluster",
                self.initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                f"gslb-test-{TOKEN}",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--log-level",
                "warn",
            ],
            stdout=log,
            stderr=log,
        )
        log.close()

    def start_all(self) -> None:
        for i in range(len(self.HOSTS)):
            if self.procs[i] is None:
                self.start(i)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None:
            proc.kill()
            proc.wait()
            self.procs[i] = None

    def healthy(self) -> bool:
        """Every member answers and the cluster has a leader that takes writes."""
        try:
            for url in self.urls:
                response = httpx.post(
                    f"{url}/v3/kv/put", json={"key": "aGVhbHRo", "value": ""}, timeout=1, trust_env=False
                )
                if response.status_code != 200:
                    return False
        except httpx.HTTPError:
            return False
        return True

    def close(self) -> None:
        for i in range(len(self.HOSTS)):
            self.kill(i)


class Instance:
    """One gslb server of the cluster, by letter; kill() or stop() it, start() it again."""

    def __init__(self, letter: str, zones: Path, state: Path) -> None:
        self.letter = letter
        self.name = f"ns{letter}"
        self.args = [
            "--zones",
            str(zones),
            "--state-file",
            str(state),
            "--workers",
            "1",
            "--http",
            "127.0.0.1:0",
            "--instance",
            self.name,
            "--probe-source",
            SOURCES[letter],
        ]
        self.server: Server | None = None
        self.http = ""

    def start(self) -> None:
        self.server = Server(self.args, env={"GSLB_TOKEN": TOKEN})
        line = self.server.wait_log(r"http on 127\.0\.0\.1:\d+")
        match = re.search(r"http on (127\.0\.0\.1:\d+)", line)
        assert match
        self.http = f"http://{match.group(1)}"

    @property
    def live(self) -> Server:
        assert self.server is not None and self.server.proc.poll() is None, f"{self.name} is not running"
        return self.server

    def answer(self) -> str:
        query = dns.message.make_query("www.example.com.", "A", use_edns=0, options=[EUROPE])
        reply = self.live.send(query, timeout=1)
        return str(reply.answer[0][0].address)

    def status(self) -> dict[str, Any]:
        response = httpx.get(f"{self.http}/api/status", timeout=2, trust_env=False)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def datacenter(self, name: str) -> dict[str, Any]:
        return next(dc for dc in self.status()["datacenters"] if dc["name"] == name)

    def admin(self, verb: str, target: str) -> dict[str, Any]:
        response = httpx.post(
            f"{self.http}/api/{verb}",
            json={"target": target},
            timeout=3,
            trust_env=False,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def metric(self, name: str) -> float:
        text = httpx.get(f"{self.http}/metrics", timeout=2, trust_env=False).text
        match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        assert match, f"no {name} in /metrics"
        return float(match.group(1))

    def kill(self) -> None:
        server = self.live
        os.kill(server.proc.pid, signal.SIGKILL)
        server.proc.wait()
        server.stop()
        self.server = None

    def stop(self) -> None:
        assert self.live.stop() == 0
        self.server = None


def until(check: Callable[[], bool], timeout: float, every: float = 0.05) -> float:
    """Seconds until `check` holds; fails after `timeout`."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s")
        time.sleep(every)
    return time.monotonic() - start


class World:
    def __init__(
        self, etcd: Etcd, eu: SourceTarget, us: SourceTarget, instances: dict[str, Instance], zones: Path
    ) -> None:
        self.etcd = etcd
        self.zones = zones
        self.eu = eu
        self.us = us
        self.instances = instances

    @property
    def all(self) -> list[Instance]:
        return list(self.instances.values())

    def sees(self, letters: str, state: str, among: list[Instance] | None = None) -> bool:
        """Whether every instance (of `among`) has the observations of eu by `letters` as `state`."""
        return all(
            all(i.datacenter("eu")["observations"].get(f"ns{x}", {}).get("state") == state for x in letters)
            for i in among or self.all
        )

    def fail_eu(self, *letters: str) -> None:
        self.eu.failing = {SOURCES[letter] for letter in letters}

    def everyone_answers(self, address: str) -> bool:
        return all(instance.answer() == address for instance in self.all)

    def live_everywhere(self, count: int, among: list[Instance] | None = None) -> bool:
        return all(instance.status()["cluster"]["live"] == count for instance in among or self.all)


def _config(eu: SourceTarget, us: SourceTarget, etcd: Etcd) -> str:
    urls = ", ".join(f'"{url}"' for url in etcd.urls)
    checks = "".join(
        f"""
[checks.{name}]
kind = "http"
port = {target.port}
path = "/health"
interval = 0.25
timeout = 0.2
fall = 2
rise = 2
jitter = 0
"""
        for name, target in (("eu", eu), ("us", us))
    )
    return f"""
[geo]
default = {{ country = "US", continent = "NA", latitude = 39.04, longitude = -77.49 }}
{checks}
[datacenters.us]
vips = ["{US}"]
latitude = 39.04
longitude = -77.49
check = "us"
probe = "{us.host}"

[datacenters.eu]
vips = ["{EU}"]
latitude = 50.11
longitude = 8.68
check = "eu"
probe = "{eu.host}"

[services."www.example.com."]
datacenters = ["us", "eu"]
policy = "nearest"

[cluster]
name = "test-{TOKEN}"
etcd = [{urls}]
down_quorum = 0.5
lease = {LEASE}
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    if shutil.which("etcd") is None:
        pytest.skip("etcd is not installed (Debian: apt-get install etcd-server; .ci/test installs it)")
    directory = tmp_path_factory.mktemp("cluster")
    etcd = Etcd(directory)
    eu, us = SourceTarget("127.0.60.1"), SourceTarget("127.0.60.2")
    zones = directory / "zones"
    zones.mkdir()
    shutil.copy(EXAMPLE_ZONES / "example.com.zone", zones)
    (zones / "gslb.toml").write_text(_config(eu, us, etcd))
    instances = {letter: Instance(letter, zones, directory / f"state-{letter}.json") for letter in LETTERS}
    try:
        etcd.start_all()
        until(etcd.healthy, 15, every=0.1)
        with ThreadPoolExecutor(len(instances)) as pool:
            list(pool.map(Instance.start, instances.values()))
        yield World(etcd, eu, us, instances, zones)
    finally:
        for instance in instances.values():
            if instance.server is not None:
                instance.server.stop()
        etcd.close()
        eu.close()
        us.close()


@pytest.fixture
def cluster(world: World) -> World:
    """Everything healthy: every etcd member and instance running, eu answered everywhere, no drains."""
    world.fail_eu()
    if any(proc is None for proc in world.etcd.procs):
        world.etcd.start_all()
        until(world.etcd.healthy, 15, every=0.1)
    stopped = [instance for instance in world.all if instance.server is None]
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(Instance.start, stopped))
    for instance in world.all:
        if instance.status()["drained"]:
            instance.admin("undrain", "eu")
    until(lambda: world.live_everywhere(3) and world.everyone_answers(EU), 10)
    return world


def test_one_instance_seeing_it_down_moves_nobody(cluster: World) -> None:
    a = cluster.instances["A"]
    cluster.fail_eu("A")
    # A's own observation (down) reaches every instance; the vote (1 of 3) keeps eu up everywhere.
    until(lambda: all(i.datacenter("eu")["observations"]["nsA"]["state"] == "down" for i in cluster.all), 5)
    assert cluster.everyone_answers(EU)
    eu = a.datacenter("eu")
    assert eu["up"] and eu["vote"] == {
        "down": ["nsA"],
        "up": ["nsB", "nsC"],
        "voters": 3,
        "quorum": 0.5,
        "down_by_vote": False,
    }
    assert eu["reason"] == "up for 2 of 3 instances (nsA: down)"
    assert eu["observations"]["nsA"]["reason"] == "status 503"
    assert a.metric('gslb_cluster_observations{datacenter="eu",state="down"}') == 1
    assert a.metric("gslb_cluster_live_instances") == 3


def test_two_of_three_move_everyone_and_back(cluster: World) -> None:
    c = cluster.instances["C"]
    cluster.fail_eu("A", "B")
    down = until(lambda: cluster.everyone_answers(US), 4)
    # C itself sees eu up, and answers as the majority says.
    eu = c.datacenter("eu")
    assert eu["observations"]["nsC"]["state"] == "up" and not eu["up"]
    assert eu["reason"].startswith("down for 2 of 3 instances: status 503")
    cluster.fail_eu()
    back = until(lambda: cluster.everyone_answers(EU), 6)
    print(f"2 of 3 see eu down: everyone moved in {down:.2f} s, back in {back:.2f} s")


def test_killing_an_instance_changes_no_answer(cluster: World) -> None:
    a, b, c = (cluster.instances[x] for x in LETTERS)
    b.kill()

    def gone() -> bool:
        assert a.answer() == EU and c.answer() == EU  # on every poll, until B's lease is gone
        return cluster.live_everywhere(2, [a, c])

    until(gone, LEASE + 2)


@pytest.mark.parametrize("how", ["SIGKILL", "SIGTERM"])
def test_an_instance_that_goes_counts_until_its_lease_ends(cluster: World, how: str) -> None:
    a, b, c = (cluster.instances[x] for x in LETTERS)
    cluster.fail_eu("A", "B")
    until(lambda: cluster.everyone_answers(US), 4)
    went = time.monotonic()
    if how == "SIGKILL":
        b.kill()
        # B's last observation still counts while its lease lives: A and C keep their answer.
        assert a.answer() == US and c.answer() == US
    else:
        b.stop()  # revokes its lease on the way out
    # Once B's lease is gone they are two, 1 of 2 is no majority, and eu is back.
    until(lambda: a.answer() == EU and c.answer() == EU, LEASE + 2)
    gone = time.monotonic() - went
    assert cluster.live_everywhere(2, [a, c])
    if how == "SIGKILL":
        assert gone > LEASE / 2, f"B stopped counting after {gone:.2f} s, before its lease could expire"
    else:
        assert gone < 1.5, f"B stopped counting only after {gone:.2f} s"
    print(f"instance ended by {how} stopped counting after {gone:.2f} s (lease {LEASE} s)")


def test_drain_on_one_applies_on_all(cluster: World) -> None:
    a, b, c = (cluster.instances[x] for x in LETTERS)
    assert a.admin("drain", "eu")["shared"] is True
    drained = until(lambda: b.answer() == US and c.answer() == US, 1, every=0.01)
    for instance in (b, c):
        eu = instance.datacenter("eu")
        assert eu["drained"] and eu["reason"] == "drained"
    assert c.admin("undrain", "eu")["shared"] is True
    undrained = until(lambda: a.answer() == EU and b.answer() == EU, 1, every=0.01)
    assert not any(instance.status()["drained"] for instance in cluster.all)
    print(f"drain on A reached B and C in {drained:.3f} s, undrain on C reached A and B in {undrained:.3f} s")


def test_losing_etcd_falls_back_and_rejoins(cluster: World) -> None:
    a, b, c = (cluster.instances[x] for x in LETTERS)
    cluster.fail_eu("A")
    until(lambda: all(i.datacenter("eu")["observations"]["nsA"]["state"] == "down" for i in cluster.all), 5)
    # One member of three lost: the instances talking to it move to another; no answer changes.
    mark = a.live.mark()
    cluster.etcd.kill(0)

    def moved() -> bool:
        assert cluster.everyone_answers(EU)
        return all(
            i.status()["cluster"]["etcd"] and i.status()["cluster"]["endpoint"] != cluster.etcd.urls[0]
            for i in cluster.all
        )

    until(moved, 5)
    assert cluster.live_everywhere(3)
    # All of etcd lost: each instance on its own view (A sees eu down; B and C up).
    cluster.etcd.kill(1)
    cluster.etcd.kill(2)
    lost = time.monotonic()
    until(lambda: all(i.metric("gslb_cluster_etcd_up") == 0 for i in cluster.all), LEASE + 2)
    until(lambda: a.answer() == US, LEASE + 2)
    fallback = time.monotonic() - lost
    assert b.answer() == EU and c.answer() == EU
    assert a.status()["cluster"]["live"] == 1
    a.live.wait_log(r"etcd unreachable .* decides on its own observations")
    # etcd back: the shared view again, without restarting anything.
    cluster.etcd.start_all()
    back = time.monotonic()
    until(lambda: a.answer() == EU and all(i.metric("gslb_cluster_etcd_up") == 1 for i in cluster.all), LEASE + 2)
    rejoined = time.monotonic() - back
    assert cluster.live_everywhere(3)
    # Said once each, however often it tried meanwhile; losing one member said nothing.
    said = [line for line in a.live.lines[mark:] if "etcd unreachable" in line or "back on etcd" in line]
    assert len(said) == 2 and "etcd unreachable" in said[0] and "back on etcd" in said[1], said
    print(f"etcd lost: own view after {fallback:.2f} s; etcd restarted: shared view after {rejoined:.2f} s")


def test_no_etcd_at_start_decides_alone_and_keeps_drains(tmp_path: Path) -> None:
    """An instance whose etcd is down from the start serves on its own view; a drain made then holds."""
    zones = tmp_path / "zones"
    shutil.copytree(EXAMPLE_ZONES, zones)
    port = free_port("127.0.10.4")
    text = (zones / "gslb.toml").read_text()
    (zones / "gslb.toml").write_text(text + f'\n[cluster]\nname = "x"\netcd = ["http://127.0.10.4:{port}"]\n')
    instance = Instance("A", zones, tmp_path / "state.json")
    instance.args.remove("--probe-source")
    instance.args.remove(SOURCES["A"])
    instance.args += ["--no-probes"]
    instance.start()
    try:
        instance.live.wait_log(r"etcd unreachable .*connection refused")
        assert instance.metric("gslb_cluster_etcd_up") == 0
        assert instance.admin("drain", "eu")["shared"] is False
        status = instance.status()
        assert status["cluster"]["pending_drains"] == ["eu"] and status["drained"] == ["eu"]
        shown = _gslb("status", "--http", instance.http.removeprefix("http://"))
        assert (
            "cluster x as nsA: etcd UNREACHABLE: deciding on this instance's own observations; 1 live "
            "instance (nsA (this one))" in shown
        )
        assert "  not yet shared: drains of eu" in shown
        assert re.search(r"^  us +no instance has probed it yet$", shown, re.M)
        instance.stop()
        instance.start()  # still without etcd: the state file keeps the drain
        assert instance.status()["drained"] == ["eu"]
    finally:
        if instance.server is not None:
            instance.stop()


@pytest.mark.chromium
def test_status_page_shows_who_sees_it_down(cluster: World, tmp_path: Path) -> None:
    from tests.test_ops import chromium

    cluster.fail_eu("A")
    b = cluster.instances["B"]
    until(lambda: b.datacenter("eu")["observations"]["nsA"]["state"] == "down", 5)
    dom = chromium(f"{b.http}/", tmp_path / "profile")
    assert "seen down by <b>nsA (status 503)</b> · 1 of 3 instances: not enough to move anyone" in dom
    assert '<b id="cluster" title="etcd at ' in dom and ">3 live</b>" in dom
    assert "cluster test-" in dom and " as nsB" in dom


# -- the pure parts: the vote, the record, the config table -------------------------------------


def _seen(**states: str) -> dict[str, Observation]:
    """Observations by instance: "up", "down", or "new" (nothing probed yet)."""
    return {
        name: Observation(state == "up", "ok" if state == "up" else "status 503", 1000.0, state != "new")
        for name, state in states.items()
    }


@pytest.mark.parametrize(
    ("states", "quorum", "down"),
    [
        ({"a": "down"}, 0.5, True),  # alone: its own view
        ({"a": "up"}, 0.5, False),
        ({"a": "down", "b": "up"}, 0.5, False),  # 1 of 2 is not more than half
        ({"a": "down", "b": "down"}, 0.5, True),
        ({"a": "down", "b": "up", "c": "up"}, 0.5, False),
        ({"a": "down", "b": "down", "c": "up"}, 0.5, True),
        ({"a": "down", "b": "down", "c": "up", "d": "up"}, 0.5, False),
        ({"a": "down", "b": "up", "c": "up"}, 0.0, True),  # 0: any one
        ({"a": "up", "b": "up"}, 0.0, False),
        ({"a": "down", "b": "down", "c": "up"}, 0.7, False),  # 2/3 is not more than 0.7
        ({"a": "down", "b": "new", "c": "new"}, 0.5, True),  # the new ones are not counted
        ({"a": "new"}, 0.0, False),  # nobody counted: up
    ],
)
def test_the_vote(states: dict[str, str], quorum: float, down: bool) -> None:
    vote = tally("eu", _seen(**states), quorum)
    assert vote.is_down is down
    assert vote.voters == sum(state != "new" for state in states.values())


@pytest.mark.parametrize(
    ("states", "reason"),
    [
        ({"a": "down", "b": "down", "c": "up"}, "down for 2 of 3 instances: status 503"),
        ({"a": "down", "b": "up", "c": "up"}, "up for 2 of 3 instances (a: down)"),
        ({"a": "up", "b": "up"}, "ok"),
    ],
)
def test_the_verdict_says_how_the_instances_saw_it(states: dict[str, str], reason: str) -> None:
    observations = _seen(**states)
    status = verdict(tally("eu", observations, 0.5), observations, 1234.0)
    assert (status.reason, status.since, status.up) == (reason, 1234.0, not reason.startswith("down"))


def test_a_record_survives_the_trip_and_a_foreign_one_is_refused() -> None:
    record = Record("ns1", 1000.0, _seen(eu="down", us="new"), "host", 42)
    assert Record.decode(record.encode()) == record
    for data in (b"not json", b'{"format": 9}', b'{"format": 1, "instance": "x"}', b"[]"):
        with pytest.raises(ValueError):
            Record.decode(data)


def test_prefix_end_covers_exactly_the_prefix() -> None:
    assert base64.b64decode(prefix_end("/gslb/x/")) == b"/gslb/x0"
    assert base64.b64decode(prefix_end("é")) == b"\xc3\xaa"  # the last byte of its UTF-8, plus one


@pytest.mark.parametrize(
    ("text", "problems"),
    [
        ('[cluster]\nname = "x"\n', ["<config>:1: cluster.etcd: required key is missing"]),
        (
            '[cluster]\nname = "x"\netcd = ["http://127.0.0.1:2379"]\nlaese = 5\n',
            ["<config>:4: cluster.laese: unknown key; did you mean 'lease'?"],
        ),
        (
            '[cluster]\nname = "a/b"\netcd = ["127.0.0.1:2379", "http://h:99999", "http://h:1", "http://h:1"]\n'
            "down_quorum = 1\nlease = 1\n",
            [
                "<config>:2: cluster.name: 'a/b': letters, digits, '_', '-', '.' only (starting with a letter or digit)",  # noqa: E501
                "<config>:3: cluster.etcd[0]: '127.0.0.1:2379' is not an etcd client URL (like \"http://127.0.0.1:2379\")",
                "<config>:3: cluster.etcd[1]: 'http://h:99999': the port must be between 1 and 65535",
                "<config>:3: cluster.etcd[3]: 'http://h:1' is listed twice",
                "<config>:4: cluster.down_quorum: must be between 0 and 0.99, got 1",
                "<config>:5: cluster.lease: must be between 2 and 3600, got 1",
            ],
        ),
    ],
)
def test_the_cluster_table_is_checked_with_file_and_line(text: str, problems: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        loads(text)
    assert [str(p) for p in caught.value.problems] == problems


def test_the_cluster_table_defaults() -> None:
    config = loads('[cluster]\nname = "x"\netcd = ["http://[::1]:2379/", "https://etcd.example:2379"]\n')
    assert config.cluster == ClusterConfig("x", ("http://[::1]:2379", "https://etcd.example:2379"), 0.5, 5)
    assert loads("").cluster is None


@pytest.mark.parametrize("name", ["", "a/b", " ns1", "x" * 129, "ns\n1"])
def test_bad_instance_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        check_instance(name)


@pytest.mark.parametrize("kind", ["http", "tcp", "http through httpx", "https"])
def test_probes_are_sent_from_the_probe_source(kind: str, tmp_path: Path) -> None:
    source = "127.0.50.9"
    certificate = make_certificate(tmp_path) if kind == "https" else None
    with SourceTarget("127.0.60.9", certificate) as server:
        check = Check(
            kind=kind.split()[0],
            port=server.port,
            follow_redirects=kind.endswith("httpx"),
            ca_file=str(certificate.ca_file) if certificate else None,
            host=certificate.name if certificate else None,
        )
        target = Target("eu", server.host, check)

        async def main() -> ProbeResult:
            client = new_client(check, source=source) if needs_client(check) else None
            try:
                return await probe(target, client, source=source)
            finally:
                if client is not None:
                    await client.aclose()

        assert run_async(main).passed
        until(lambda: bool(server.sources), 2)
        assert server.sources == {source}
        server.failing = {source}
        if kind != "tcp":
            assert run_async(main).result == "status 503"


def test_a_probe_source_of_the_other_family_is_not_used() -> None:
    assert probe_source("127.0.0.1", "127.0.50.1") == ("127.0.50.1", 0)
    assert probe_source("::1", "127.0.50.1") is None
    assert probe_source("127.0.0.1", "::1") is None
    assert probe_source("127.0.0.1", None) is None


def _gslb(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gslb", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "GSLB_TOKEN": TOKEN},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_gslb_status_and_explain_say_who_sees_it_down(cluster: World) -> None:
    c = cluster.instances["C"]
    cluster.fail_eu("A", "B")
    until(lambda: cluster.everyone_answers(US), 4)
    status = _gslb("status", "--http", c.http.removeprefix("http://"))
    assert re.search(
        rf"^cluster test-{TOKEN} as nsC: etcd at http://127\.0\.10\.\d:\d+; 3 live instances "
        r"\(nsC \(this one\), nsA, nsB\); down when more than 0\.5 of them see it down$",
        status,
        re.M,
    )
    assert re.search(r"^  eu +2 of 3 see it down: nsA \(status 503\), nsB \(status 503\)  -> DOWN$", status, re.M)
    assert re.search(r"^  us +0 of 3 see it down: nobody$", status, re.M)
    explain = _gslb(
        "explain",
        "www.example.com",
        "--subnet",
        "85.214.0.0/24",
        "--zones",
        str(cluster.zones),
        "--state-file",
        c.args[c.args.index("--state-file") + 1],
    )
    assert f"  answer       {US}" in explain
    assert re.search(r"^    eu +seen down by nsA \(status 503\), nsB \(status 503\)  -> DOWN$", explain, re.M)
    assert re.search(r"^  cluster      test-\w+: 3 live instances \(nsA, nsB, nsC\)", explain, re.M)
    api = httpx.get(
        f"{c.http}/api/explain",
        params={"name": "www.example.com", "subnet": "85.214.0.0/24"},
        timeout=3,
        trust_env=False,
    ).json()
    assert api["answer"] == [US] and api["cluster"]["etcd"] is True
    assert api["cluster"]["datacenters"]["eu"]["vote"]["down"] == ["nsA", "nsB"]
    drained = _gslb("drain", "eu", "--http", c.http.removeprefix("http://"))
    assert drained == "eu: drained on every instance (through etcd)\n"


def test_a_reloaded_down_quorum_applies_at_once(cluster: World) -> None:
    config = cluster.zones / "gslb.toml"
    text = config.read_text()
    cluster.fail_eu("A")
    until(lambda: cluster.sees("A", "down"), 5)
    assert cluster.everyone_answers(EU)  # 1 of 3
    try:
        config.write_text(text.replace("down_quorum = 0.5", "down_quorum = 0"))  # any one
        until(lambda: cluster.everyone_answers(US), 5)
    finally:
        config.write_text(text)
    until(lambda: cluster.everyone_answers(EU), 5)
    assert cluster.live_everywhere(3)  # nobody left the cluster to reload


def test_a_single_process_instance_votes_too(cluster: World, tmp_path: Path) -> None:
    d = Instance("D", cluster.zones, tmp_path / "state-D.json")
    d.args[d.args.index("--workers") + 1] = "0"
    d.start()
    try:
        until(lambda: cluster.live_everywhere(4, [*cluster.all, d]), 5)
        everyone = [*cluster.all, d]
        cluster.fail_eu("A", "B")
        until(lambda: cluster.sees("AB", "down", everyone), 5)
        assert all(i.answer() == EU for i in everyone)  # 2 of 4 is not more than half
        cluster.fail_eu("A", "B", "D")
        until(lambda: all(i.answer() == US for i in everyone), 4)  # 3 of 4
        assert d.datacenter("eu")["reason"].startswith("down for 3 of 4 instances")
    finally:
        d.stop()
    until(lambda: cluster.live_everywhere(3), 2)


def test_two_instances_with_one_name_are_told(cluster: World, tmp_path: Path) -> None:
    c = cluster.instances["C"]
    twin = Instance("D", cluster.zones, tmp_path / "state-twin.json")
    twin.args[twin.args.index("--instance") + 1] = "nsC"
    mark = c.live.mark()
    twin.start()
    try:
        twin.live.wait_log(r"another instance \(host .*, pid \d+\) writes its observations as nsC too")
        c.live.wait_log(r"another instance \(host .*, pid \d+\) writes its observations as nsC too", start=mark)
    finally:
        twin.stop()  # its lease goes, and with it the key both wrote: C writes it again
    until(lambda: cluster.live_everywhere(3), 3)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--probe-source", "192.0.2.1", "gslb: --probe-source 192.0.2.1: not an address of this host"),
        ("--probe-source", "nope", "gslb: --probe-source nope: 'nope' does not appear to be an IPv4 or IPv6 address"),
        ("--instance", "a/b", "gslb: --instance: 'a/b': an instance name is 1-128 printable characters"),
    ],
)
def test_serve_refuses_a_bad_instance_or_probe_source(flag: str, value: str, message: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "gslb",
            "serve",
            "--zones",
            str(EXAMPLE_ZONES),
            "--http",
            "off",
            "--state-file",
            str(tmp_path / "state.json"),
            "--listen",
            "127.0.0.1:0",
            flag,
            value,
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert out.stderr.splitlines()[-1].startswith(message), out.stderr


def test_an_instance_is_named_by_its_host_and_port() -> None:
    assert default_instance(5300) == f"{socket.gethostname()}:5300"
