"""Tests for gslb.health: the fold as a table, probes against real loopback servers, the monitor."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gslb.config.model import Check, Target
from gslb.health.monitor import HealthMonitor
from gslb.health.probe import BODY_LIMIT, ProbeResult, _ProtocolError, _Response, probe
from gslb.health.transport import new_client
from gslb.health.view import FlapState, HealthView, Status, fold
from tests.probe_targets import (
    Behaviour,
    Certificate,
    HttpTarget,
    TcpTarget,
    free_port,
    make_certificate,
    run_async,
)

LOOPBACK = "127.0.0.1"
# Plain HTTP has two paths, the lean one and httpx: both must judge alike.
BOTH_PATHS = pytest.mark.parametrize("fast_path", [True, False], ids=["lean", "httpx"])
WAIT = 5.0  # seconds any awaited event may take before the test fails


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# --- the fold, as a table --------------------------------------------------------------

C = Check(fall=2, rise=3)


@pytest.mark.parametrize(
    ("state", "passed", "check", "expected"),
    [
        # up: a pass resets the failure count, failures count toward fall
        (FlapState(True, 0), True, C, FlapState(True, 0)),
        (FlapState(True, 1), True, C, FlapState(True, 0)),
        (FlapState(True, 0), False, C, FlapState(True, 1)),
        (FlapState(True, 1), False, C, FlapState(False, 0)),
        # down: a failure resets the success count, passes count toward rise
        (FlapState(False, 0), False, C, FlapState(False, 0)),
        (FlapState(False, 2), False, C, FlapState(False, 0)),
        (FlapState(False, 0), True, C, FlapState(False, 1)),
        (FlapState(False, 1), True, C, FlapState(False, 2)),
        (FlapState(False, 2), True, C, FlapState(True, 0)),
        # fall/rise of 1 flip at once; 0 is treated as 1
        (FlapState(True, 0), False, Check(fall=1), FlapState(False, 0)),
        (FlapState(False, 0), True, Check(rise=1), FlapState(True, 0)),
        (FlapState(True, 0), False, Check(fall=0), FlapState(False, 0)),
        (FlapState(True, 3), False, Check(fall=5), FlapState(True, 4)),
        (FlapState(True, 4), False, Check(fall=5), FlapState(False, 0)),
    ],
)
def test_fold(state: FlapState, passed: bool, check: Check, expected: FlapState) -> None:
    assert fold(state, passed, check) == expected


@pytest.mark.parametrize(
    ("results", "ups"),
    [
        ("FF", "10"),
        ("FPF", "111"),
        ("FFPPFPPP", "10000001"),
        ("FFPPPFF", "1000110"),
    ],
)
def test_fold_sequences(results: str, ups: str) -> None:
    """Up-ness after each result, starting up, with fall=2 and rise=3 (F fail, P pass)."""
    state, seen = FlapState(), ""
    for result in results:
        state = fold(state, result == "P", C)
        seen += "1" if state.up else "0"
    assert seen == ups


def test_health_view_defaults_to_up_and_is_immutable() -> None:
    view = HealthView()
    assert view.is_up("anything")
    assert view.status("anything") is None
    down = Status(up=False, reason="timeout", since=1.0)
    view = HealthView(1, {"eu": down})
    assert not view.is_up("eu")
    assert view.status("eu") == down
    monitor = HealthMonitor([Target("eu", LOOPBACK, Check())])
    with pytest.raises(TypeError):
        monitor.view.states["us"] = down  # type: ignore[index]


# --- probes against real servers -------------------------------------------------------


@pytest.fixture(scope="module")
def http() -> Iterator[HttpTarget]:
    with HttpTarget() as server:
        yield server


@pytest.fixture
def server(http: HttpTarget) -> Iterator[HttpTarget]:
    """The module's HTTP server, reset to serving OK."""
    http.behave(Behaviour.OK)
    http.ok_body = b"gslb probe target: all good\n"
    http.redirects.clear()
    http.extra_headers = ""
    http.raw_response = None
    http.raw_then_hang = False
    http.requests.clear()
    yield http
    http.behave(Behaviour.OK)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"), "site.test")


@pytest.fixture(scope="module")
def https(certificate: Certificate) -> Iterator[HttpTarget]:
    with HttpTarget(certificate=certificate) as server:
        yield server


def probe_once(check: Check, address: str = LOOPBACK, *, fast_path: bool = True) -> ProbeResult:
    async def go() -> ProbeResult:
        async with new_client(check) as client:
            return await probe(Target("dc", address, check), client, fast_path=fast_path)

    result: ProbeResult = run_async(go)
    assert result.passed == (result.result == "ok")
    assert result.latency >= 0
    return result


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        (Behaviour.OK, "ok"),
        (Behaviour.STATUS_503, "status 503"),
        (Behaviour.WRONG_BODY, "body mismatch"),
        (Behaviour.HANG, "timeout"),
        (Behaviour.CLOSE, "closed"),
        (Behaviour.RESET, "reset"),
        (Behaviour.CLOSED, "refused"),
    ],
)
@BOTH_PATHS
def test_http_probe_reasons(server: HttpTarget, behaviour: Behaviour, reason: str, fast_path: bool) -> None:
    server.behave(behaviour)
    check = Check(port=server.port, path="/health", body_contains="all good", timeout=0.3)
    result = probe_once(check, fast_path=fast_path)
    assert result.result == reason
    if behaviour is Behaviour.HANG:
        assert 0.25 < result.latency < 1.0


@BOTH_PATHS
def test_http_probe_sends_method_path_and_host(server: HttpTarget, fast_path: bool) -> None:
    check = Check(port=server.port, method="HEAD", path="/hc?x=1", host="site.test")
    assert probe_once(check, fast_path=fast_path).result == "ok"
    check = Check(port=server.port, path="/a b")
    assert probe_once(check, fast_path=fast_path).result == "ok"
    assert [(r.method, r.path, r.host) for r in server.requests] == [
        ("HEAD", "/hc?x=1", "site.test"),
        ("GET", "/a%20b", f"127.0.0.1:{server.port}"),
    ]


@BOTH_PATHS
def test_http_probe_accepts_any_expected_status(server: HttpTarget, fast_path: bool) -> None:
    server.behave(Behaviour.STATUS_503)
    check = Check(port=server.port, expect_status=(200, 503))
    assert probe_once(check, fast_path=fast_path).result == "ok"
    check = Check(port=server.port, expect_status=(200,))
    assert probe_once(check, fast_path=fast_path).result == "status 503"


@BOTH_PATHS
def test_body_is_searched_in_the_first_4_kib_only(server: HttpTarget, fast_path: bool) -> None:
    check = Check(port=server.port, body_contains="needle")
    server.ok_body = b"x" * 4000 + b"needle"
    assert probe_once(check, fast_path=fast_path).result == "ok"
    server.ok_body = b"x" * 5000 + b"needle"
    assert probe_once(check, fast_path=fast_path).result == "body mismatch"


@BOTH_PATHS
@pytest.mark.parametrize("chunked", [False, True])
def test_an_endless_body_is_read_only_to_4_kib(server: HttpTarget, fast_path: bool, chunked: bool) -> None:
    body = b"all good" + b"x" * 8192
    if chunked:
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:10], body[10:]))
    else:
        head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n"
    server.raw_response, server.raw_then_hang = head + body, True
    check = Check(port=server.port, body_contains="all good", timeout=2)
    result = probe_once(check, fast_path=fast_path)
    assert result.result == "ok"
    assert result.latency < 1  # it did not wait for the rest


CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"


@BOTH_PATHS
@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (CHUNKED + b"5\r\nall g\r\n3;ext=1\r\nood\r\n0\r\n\r\n", "ok"),
        (CHUNKED + b"4\r\nall \r\n4\r\ngood\r\n0\r\n\r\n", "ok"),
        (CHUNKED + b"3\r\nall\r\n5\r\n good\r\n0\r\n\r\n", "ok"),
        (CHUNKED + b"8\r\nall\r\ngoo\r\n0\r\n\r\n", "body mismatch"),  # CRLF is data here
        (b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nall goodies", "ok"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nall goodies", "body mismatch"),
        (b"HTTP/1.0 200 OK\r\n\r\nno length, all good until the close", "ok"),
        (b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\n\r\nall good", "ok"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nall good, then cut", "truncated"),
        (CHUNKED + b"8\r\nall good\r\n", "truncated"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", "closed"),  # closed inside the head
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "protocol error"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n", "protocol error"),
        (CHUNKED + b"zz\r\nall good\r\n0\r\n\r\n", "protocol error"),
    ],
)
def test_response_framing(server: HttpTarget, raw: bytes, reason: str, fast_path: bool) -> None:
    server.raw_response = raw
    try:
        result = probe_once(Check(port=server.port, body_contains="all good"), fast_path=fast_path)
    finally:
        server.raw_response = None
    assert result.result == reason


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=600), cuts=st.lists(st.integers(0, 600), max_size=5), body=st.booleans())
def test_response_reader_never_fails_unexpectedly(data: bytes, cuts: list[int], body: bool) -> None:
    """Whatever bytes arrive, in whatever pieces: a verdict or a protocol error, nothing else."""
    response = _Response(want_body=body)
    pieces = [data[a:b] for a, b in itertools.pairwise([0, *sorted(cuts), len(data)])]
    try:
        if not any(response.feed(piece) for piece in pieces):
            response.eof()
    except _ProtocolError:
        return
    assert response.status is not None and 200 <= response.status <= 999
    assert len(response.body) <= BODY_LIMIT


def test_redirects_are_followed_only_when_asked(server: HttpTarget) -> None:
    server.redirects["/old"] = "/new"
    assert probe_once(Check(port=server.port, path="/old")).result == "status 302"
    assert probe_once(Check(port=server.port, path="/old", follow_redirects=True)).result == "ok"
    assert [r.path for r in server.requests] == ["/old", "/old", "/new"]


def test_redirect_to_the_site_name_stays_on_the_target_address(server: HttpTarget) -> None:
    # site.test does not resolve; the probe must not try to, but stay on 127.0.0.1.
    server.redirects["/"] = f"http://site.test:{server.port}/home"
    check = Check(port=server.port, host="site.test", follow_redirects=True, timeout=2)
    assert probe_once(check).result == "ok"
    assert [(r.path, r.host) for r in server.requests] == [
        ("/", "site.test"),
        ("/home", "site.test"),
    ]


def test_cookies_are_neither_kept_nor_sent(server: HttpTarget) -> None:
    # A sticky-session cookie sent back would pin every later probe to one backend.
    server.extra_headers = "Set-Cookie: backend=b1; Path=/\r\n"
    server.redirects["/old"] = "/new"
    check = Check(port=server.port, path="/old", follow_redirects=True)
    assert probe_once(check).result == "ok"
    assert [(r.path, r.cookie) for r in server.requests] == [("/old", None), ("/new", None)]


def test_a_client_is_needed_only_for_https_and_redirects() -> None:
    async def go() -> None:
        target = Target("dc", LOOPBACK, Check(kind="https", port=free_port()))
        with pytest.raises(ValueError, match="client"):
            await probe(target, None)
        result = await probe(Target("dc", LOOPBACK, Check(port=free_port())), None)
        assert result.result == "refused"
        with pytest.raises(ValueError, match="kind"):
            await probe(Target("dc", LOOPBACK, Check(kind="udp")), None)

    run_async(go)


def test_redirect_loop_fails(server: HttpTarget) -> None:
    server.redirects["/"] = "/"
    assert probe_once(Check(port=server.port, follow_redirects=True)).result == "too many redirects"


def test_https_with_ca_file_and_host_override_passes(https: HttpTarget, certificate: Certificate) -> None:
    https.requests.clear()
    https.sni_names.clear()
    check = Check(kind="https", port=https.port, host="site.test", ca_file=str(certificate.ca_file))
    assert probe_once(check).result == "ok"
    assert https.sni_names == ["site.test"]
    assert [r.host for r in https.requests] == ["site.test"]


@pytest.mark.parametrize(
    ("host", "use_ca", "reason"),
    [
        ("site.test", False, "tls: unable to get local issuer certificate"),
        (None, True, "tls: IP address mismatch, certificate is not valid for '127.0.0.1'"),
        ("other.test", True, "tls: hostname mismatch, certificate is not valid for 'other.test'"),
    ],
)
def test_https_verification_failures(
    https: HttpTarget, certificate: Certificate, host: str | None, use_ca: bool, reason: str
) -> None:
    ca_file = str(certificate.ca_file) if use_ca else None
    result = probe_once(Check(kind="https", port=https.port, host=host, ca_file=ca_file))
    assert result.result == reason


def test_https_without_verification_passes(https: HttpTarget) -> None:
    assert probe_once(Check(kind="https", port=https.port, verify_tls=False)).result == "ok"


def test_https_probe_of_a_plain_http_port_fails(server: HttpTarget) -> None:
    result = probe_once(Check(kind="https", port=server.port, verify_tls=False, timeout=0.3))
    assert not result.passed


def test_tcp_probe() -> None:
    with TcpTarget() as listener:
        check = Check(kind="tcp", port=listener.port)
        assert probe_once(check).result == "ok"
        listener.stop_listening()
        assert probe_once(check).result == "refused"
        listener.listen()
        assert probe_once(check).result == "ok"


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback")
def test_ipv6_targets() -> None:
    with HttpTarget(host="::1") as server:
        assert probe_once(Check(port=server.port), "::1").result == "ok"
        assert probe_once(Check(kind="tcp", port=server.port), "::1").result == "ok"
    assert probe_once(Check(port=free_port("::1")), "::1").result == "refused"


# --- the monitor ------------------------------------------------------------------------

FAST = Check(interval=0.05, timeout=0.2, fall=2, rise=3, jitter=0.1)


@dataclass
class Recorder:
    """Collects on_probe/on_change calls; async waits instead of sleeps."""

    probes: list[tuple[str, bool, float]] = field(default_factory=list)
    changes: asyncio.Queue[tuple[HealthView, list[bool]]] = field(default_factory=asyncio.Queue)
    _waiters: list[tuple[Callable[[], bool], asyncio.Event]] = field(default_factory=list)

    def on_probe(self, target: Target, result: ProbeResult, lateness: float) -> None:
        self.probes.append((target.name, result.passed, lateness))
        for predicate, event in self._waiters:
            if predicate():
                event.set()

    def on_change(self, view: HealthView) -> None:
        # The probe results seen so far, at the moment of the change.
        self.changes.put_nowait((view, [passed for _, passed, _ in self.probes]))

    def passes(self, name: str) -> list[bool]:
        return [passed for n, passed, _ in self.probes if n == name]

    async def until(self, predicate: Callable[[], bool]) -> None:
        if predicate():
            return
        event = asyncio.Event()
        self._waiters.append((predicate, event))
        async with asyncio.timeout(WAIT):
            await event.wait()

    async def change(self) -> tuple[HealthView, list[bool]]:
        async with asyncio.timeout(WAIT):
            return await self.changes.get()


def monitor_for(targets: list[Target], recorder: Recorder, **kwargs: object) -> HealthMonitor:
    return HealthMonitor(
        targets,
        on_change=recorder.on_change,
        on_probe=recorder.on_probe,
        **kwargs,  # type: ignore[arg-type]
    )


def test_cold_start_is_up_then_down_after_fall_then_up_after_rise(
    server: HttpTarget, caplog: pytest.LogCaptureFixture
) -> None:
    server.behave(Behaviour.STATUS_503)
    target = Target("eu", LOOPBACK, replace(FAST, port=server.port))

    async def go() -> None:
        rec = Recorder()
        monitor = monitor_for([target], rec, stats_interval=60)
        status = monitor.view.status("eu")
        assert status is not None
        assert (status.up, status.reason) == (True, "no probe yet")
        runner = asyncio.create_task(monitor.run())

        view, seen = await rec.change()
        assert seen == [False, False]  # down at exactly the fall-th failure
        status = view.status("eu")
        assert status is not None
        assert (status.up, status.reason, view.version) == (False, "status 503", 1)
        assert not view.is_up("eu")
        assert monitor.view is view

        server.behave(Behaviour.OK)
        view, seen = await rec.change()
        assert seen[-4:] == [False, True, True, True]  # up at exactly the rise-th success
        assert view.is_up("eu")
        assert view.status("eu").reason == "ok"  # type: ignore[union-attr]
        assert view.version == 2

        # More passing probes: no more on_change calls.
        count = len(rec.probes)
        await rec.until(lambda: len(rec.probes) >= count + 3)
        assert rec.changes.empty()
        assert monitor.stats("eu").probes == len(rec.probes)
        assert monitor.stats("eu").failures == seen.count(False)
        runner.cancel()
        with pytest.raises(asyncio.CancelledError):
            await runner
        await monitor.close()

    with caplog.at_level(logging.INFO, logger="gslb.health"):
        run_async(go)
    messages = [r.getMessage() for r in caplog.records if r.name == "gslb.health"]
    assert messages == [
        f"eu (127.0.0.1:{server.port} http) DOWN: status 503 (2 consecutive failures)",
        f"eu (127.0.0.1:{server.port} http) UP: ok (3 consecutive successes)",
    ]


def test_stats_are_republished_without_on_change(server: HttpTarget) -> None:
    target = Target("eu", LOOPBACK, replace(FAST, port=server.port))

    async def go() -> None:
        rec = Recorder()
        monitor = monitor_for([target], rec, stats_interval=0.02)
        runner = asyncio.create_task(monitor.run())
        await rec.until(lambda: len(rec.probes) >= 2)
        async with asyncio.timeout(WAIT):
            while monitor.view.status("eu").last_result != "ok":  # type: ignore[union-attr]
                await asyncio.sleep(0.01)
        status = monitor.view.status("eu")
        assert status is not None
        assert status.up and status.reason == "ok"  # the first pass confirmed "no probe yet"
        assert status.last_latency is not None and status.last_probe is not None
        assert monitor.view.version == 0
        assert rec.changes.empty()
        await monitor.close()
        await runner  # close() ends run()

    run_async(go)


def test_probes_of_a_target_never_overlap_and_skip_late_rounds() -> None:
    with HttpTarget() as server:
        server.behave(Behaviour.HANG)
        target = Target("eu", LOOPBACK, replace(FAST, port=server.port, timeout=0.2, fall=100))

        async def go() -> None:
            rec = Recorder()
            monitor = monitor_for([target], rec)
            runner = asyncio.create_task(monitor.run())
            await rec.until(lambda: len(rec.probes) >= 4)
            await monitor.close()
            await runner
            assert all(not passed for _, passed, _ in rec.probes)
            # A probe takes four intervals; rounds it overran are skipped, not run late.
            assert max(lateness for _, _, lateness in rec.probes) < 0.1

        run_async(go)
        server.stop_listening()
        spans = sorted(server.spans)
    assert len(spans) >= 4
    # Each connection starts after the previous one ended (the server notices a close a
    # little late, hence the tolerance; overlapping probes would overlap by ~0.15 s).
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert started > ended - 0.01


def test_state_file_restores_verdicts(server: HttpTarget, tmp_path: Path) -> None:
    state_file = tmp_path / "health.json"
    server.behave(Behaviour.STATUS_503)
    check = replace(FAST, port=server.port)
    eu, us = Target("eu", LOOPBACK, check), Target("us", LOOPBACK, replace(check, port=1))

    async def first_run() -> float:
        rec = Recorder()
        monitor = monitor_for([eu, us], rec, state_file=state_file)
        runner = asyncio.create_task(monitor.run())
        while True:
            view, _ = await rec.change()
            if not view.is_up("eu") and not view.is_up("us"):
                break
        await monitor.close()
        await runner
        return view.status("eu").since  # type: ignore[union-attr]

    since = run_async(first_run)
    saved = json.loads(state_file.read_text())
    assert saved["targets"]["eu"]["up"] is False
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file was renamed

    async def second_run() -> None:
        moved = Target("us", "127.0.0.2", us.check)  # same name, new address: not restored
        rec = Recorder()
        monitor = monitor_for([eu, moved], rec, state_file=state_file)
        status = monitor.view.status("eu")
        assert status == Status(up=False, reason="restored from state file", since=since)
        assert monitor.view.status("us").reason == "no probe yet"  # type: ignore[union-attr]
        assert monitor.view.is_up("us")
        # Restored down: up again only after `rise` successes.
        server.behave(Behaviour.OK)
        monitor.update_targets([eu])
        await rec.change()  # the update
        runner = asyncio.create_task(monitor.run())
        view, seen = await rec.change()
        assert view.is_up("eu")
        assert seen == [True, True, True]
        await monitor.close()
        await runner

    run_async(second_run)


def test_unreadable_state_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state_file = tmp_path / "health.json"
    state_file.write_text("{not json")
    monitor = HealthMonitor([Target("eu", LOOPBACK, Check())], state_file=state_file)
    assert monitor.view.status("eu").reason == "no probe yet"  # type: ignore[union-attr]
    assert "ignoring health state file" in caplog.text


def test_drain_survives_restart(server: HttpTarget, tmp_path: Path) -> None:
    state_file = tmp_path / "health.json"
    target = Target("eu", LOOPBACK, replace(FAST, port=server.port))

    async def first_run() -> None:
        rec = Recorder()
        monitor = monitor_for([target], rec, state_file=state_file)
        runner = asyncio.create_task(monitor.run())
        monitor.drain("eu")
        view, _ = await rec.change()
        status = view.status("eu")
        assert status is not None
        assert (status.up, status.reason, status.drained) == (False, "drained", True)
        # Passing probes do not undo a drain.
        await rec.until(lambda: len(rec.probes) >= 4)
        assert not monitor.view.is_up("eu")
        assert rec.changes.empty()
        await monitor.close()
        await runner

    run_async(first_run)

    async def second_run() -> None:
        rec = Recorder()
        monitor = monitor_for([target], rec, state_file=state_file)
        assert monitor.view.status("eu").drained  # type: ignore[union-attr]
        assert not monitor.view.is_up("eu")
        monitor.undrain("eu")
        view, _ = await rec.change()
        assert view.is_up("eu")
        assert not view.status("eu").drained  # type: ignore[union-attr]
        await monitor.close()

    run_async(second_run)
    assert json.loads(state_file.read_text())["drained"] == {}
    with pytest.raises(KeyError):
        HealthMonitor([target]).drain("nowhere")


def test_names_that_are_not_probed_can_be_drained(tmp_path: Path) -> None:
    """A data center without a check, or one VIP address: listed as drained in the view."""
    state_file = tmp_path / "health.json"
    views: list[HealthView] = []
    monitor = HealthMonitor([Target("eu", LOOPBACK, Check())], state_file=state_file, on_change=views.append)
    assert not monitor.view.drains
    monitor.drain("127.0.2.1", probed=False)
    monitor.drain("127.0.2.1", probed=False)  # again: no change
    assert set(monitor.drained) == {"127.0.2.1"}
    assert len(views) == 1
    view = views[0]
    assert view.drains
    assert not view.is_up("127.0.2.1")
    status = view.status("127.0.2.1")
    assert status is not None
    assert (status.up, status.reason, status.drained) == (False, "drained", True)
    assert view.is_up("eu")
    restarted = HealthMonitor([], state_file=state_file)  # the drain outlives the config
    assert set(restarted.drained) == {"127.0.2.1"}
    assert not restarted.view.is_up("127.0.2.1")
    restarted.undrain("127.0.2.1")
    assert restarted.view.is_up("127.0.2.1")
    assert restarted.view.status("127.0.2.1") is None
    assert not restarted.view.drains


def test_probes_go_on_under_a_drain(server: HttpTarget) -> None:
    """A drain hides the probes' verdict, which keeps changing underneath; undrain shows it."""
    target = Target("eu", LOOPBACK, replace(FAST, port=server.port))

    async def go() -> None:
        rec = Recorder()
        monitor = monitor_for([target], rec)
        monitor.drain("eu")
        await rec.change()
        server.behave(Behaviour.STATUS_503)
        runner = asyncio.create_task(monitor.run())
        await rec.until(lambda: rec.passes("eu")[-2:] == [False, False])
        assert rec.changes.empty()  # the view still says "drained"
        assert monitor.view.status("eu").reason == "drained"  # type: ignore[union-attr]
        monitor.undrain("eu")
        view, _ = await rec.change()
        status = view.status("eu")
        assert status is not None
        assert (status.up, status.reason, status.drained) == (False, "status 503", False)
        await monitor.close()
        await runner

    run_async(go)


def test_an_unreadable_ca_file_fails_the_probe_not_the_monitor(tmp_path: Path) -> None:
    check = replace(FAST, kind="https", port=free_port(), ca_file=str(tmp_path / "missing.pem"))

    async def go() -> None:
        rec = Recorder()
        monitor = monitor_for([Target("eu", LOOPBACK, check)], rec)
        runner = asyncio.create_task(monitor.run())
        view, _ = await rec.change()
        assert view.status("eu").reason.startswith("tls: ca_file: ")  # type: ignore[union-attr]
        await monitor.close()
        await runner

    run_async(go)


def test_update_targets_keeps_unchanged_states(server: HttpTarget) -> None:
    server.behave(Behaviour.STATUS_503)
    check = replace(FAST, port=server.port)
    eu, us, asia = (Target(n, LOOPBACK, check) for n in ("eu", "us", "asia"))

    async def go() -> None:
        rec = Recorder()
        monitor = monitor_for([eu, us, asia], rec)
        runner = asyncio.create_task(monitor.run())
        while True:
            view, _ = await rec.change()
            if not any(view.is_up(name) for name in ("eu", "us", "asia")):
                break
        eu_status = view.status("eu")
        server.behave(Behaviour.OK)
        us_moved = Target("us", "127.0.0.2", check)
        slower_asia = Target("asia", LOOPBACK, replace(check, interval=0.06))
        sa = Target("sa", LOOPBACK, check)
        monitor.update_targets([eu, us_moved, slower_asia, sa])
        view, _ = await rec.change()
        assert set(view.states) == {"eu", "us", "asia", "sa"}
        assert view.status("eu") == eu_status  # kept, with its since
        for name in ("us", "asia", "sa"):
            assert view.status(name).reason == "no probe yet"  # type: ignore[union-attr]
        await rec.until(lambda: "sa" in {name for name, _, _ in rec.probes})
        monitor.update_targets([eu])
        view, _ = await rec.change()
        assert set(view.states) == {"eu"}
        assert monitor.targets == (eu,)
        await monitor.close()
        await runner

    run_async(go)


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        HealthMonitor([Target("eu", LOOPBACK, Check()), Target("eu", "127.0.0.2", Check())])
