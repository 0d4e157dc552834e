"""Reload on a change to any file a snapshot read: zones, $INCLUDEd files, config, geo database, CA files."""

from __future__ import annotations

import asyncio
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dns.edns
import dns.message
import dns.rcode
import pytest

from gslb import watch
from gslb.dns import zones
from gslb.inputs import Inputs, recording
from gslb.snapshot import Sources, build
from gslb.watch import Watcher
from tests.conftest import EXAMPLE_ZONES, Server, same_rrsets
from tests.mmdb_fixtures import FRANKFURT, TOKYO, build_test_mmdb

ZONE = (
    "$ORIGIN inc.test.\n$TTL 60\n@ IN SOA ns hostmaster 1 7200 1800 1209600 300\n"
    "  IN NS ns\nns A 127.0.0.1\n$INCLUDE hosts/hosts.inc\n"
)


def _included_zone(tmp_path: Path) -> tuple[Path, Path]:
    """A zone whose host records come from an $INCLUDEd file in a subdirectory."""
    directory = tmp_path / "zones"
    (directory / "hosts").mkdir(parents=True)
    included = directory / "hosts" / "hosts.inc"
    included.write_text("h1 A 127.0.0.21\n")
    (directory / "inc.test.zone").write_text(ZONE)
    return directory, included


def _rewrite(path: Path, text: str) -> None:
    """Replace a file the way editors and deploy tools do: write aside, rename over it."""
    aside = path.with_name(path.name + ".new")
    aside.write_text(text)
    os.replace(aside, path)


@pytest.mark.parametrize("workers", ["2", "0"])
def test_a_changed_included_file_is_served(start_server: type[Server], tmp_path: Path, workers: str) -> None:
    directory, included = _included_zone(tmp_path)
    server = start_server(
        "--zones", str(directory), "--no-probes", "--state-file", str(tmp_path / "s.json"), "--workers", workers
    )
    assert same_rrsets(server.query("h1.inc.test.").answer, "h1.inc.test. 60 IN A 127.0.0.21")
    mark = server.mark()
    included.write_text("h1 A 127.0.0.21\nh2 A 127.0.0.22\n")  # written in place
    server.wait_log(rf"changed: {re.escape(str(included))}$", start=mark)
    server.wait_log(r"reloaded \(files changed\)", start=mark)
    _answers_soon(server, "h2.inc.test.", "h2.inc.test. 60 IN A 127.0.0.22")
    mark = server.mark()
    _rewrite(included, "h3 A 127.0.0.23\n")  # replaced by rename
    server.wait_log(r"reloaded \(files changed\)", start=mark)
    assert same_rrsets(server.query("h3.inc.test.").answer, "h3.inc.test. 60 IN A 127.0.0.23")
    assert server.query("h1.inc.test.").rcode() == dns.rcode.NXDOMAIN


def _answers_soon(server: Server, name: str, expected: str, timeout: float = 5.0) -> None:
    """A file written in place may be read half-written (truncated, then filled) when the
    machine is loaded: the reload of the whole content follows the one of the truncation."""
    deadline = time.monotonic() + timeout
    while not same_rrsets(server.query(name).answer, expected):
        assert time.monotonic() < deadline, f"{name} did not answer {expected!r} in {timeout} s"
        time.sleep(0.05)


def test_a_broken_included_file_keeps_the_old_data_and_says_where(start_server: type[Server], tmp_path: Path) -> None:
    directory, included = _included_zone(tmp_path)
    server = start_server("--zones", str(directory), "--no-probes", "--state-file", str(tmp_path / "s.json"))
    mark = server.mark()
    included.write_text("h1 A 127.0.0.21\nh2 A 999.0.0.1\n")
    line = server.wait_log(r"reload \(.*\) failed: ", start=mark)
    assert f"failed: {included}:2: " in line, line
    server.wait_log(r"still serving the data loaded at", start=mark)
    assert not [line for line in server.lines[mark:] if "no SOA" in line]  # only the real problem
    assert same_rrsets(server.query("h1.inc.test.").answer, "h1.inc.test. 60 IN A 127.0.0.21")
    assert server.query("h2.inc.test.").rcode() == dns.rcode.NXDOMAIN
    # Fixed, it loads: the failed attempt's files stay watched.
    mark = server.mark()
    included.write_text("h1 A 127.0.0.21\nh2 A 127.0.0.22\n")
    server.wait_log(r"reloaded \(files changed\)", start=mark)
    _answers_soon(server, "h2.inc.test.", "h2.inc.test. 60 IN A 127.0.0.22")


def test_a_replaced_geo_database_moves_the_answers(start_server: type[Server], tmp_path: Path) -> None:
    geodb = build_test_mmdb(tmp_path / "geo.mmdb", networks={"2.2.0.0/16": FRANKFURT})
    server = start_server(
        "--zones", str(EXAMPLE_ZONES), "--geodb", str(geodb), "--no-probes", "--state-file", str(tmp_path / "s.json")
    )
    query = dns.message.make_query("www.example.com.", "A", use_edns=0, options=[dns.edns.ECSOption("2.2.3.0", 24)])
    assert same_rrsets(server.send(query).answer, "www.example.com. 30 IN A 127.0.2.1")  # eu
    mark = server.mark()
    # As geoipupdate does: the new database is written beside the old, then renamed over it.
    build_test_mmdb(tmp_path / "geo.mmdb.new", networks={"2.2.0.0/16": TOKYO})
    os.replace(tmp_path / "geo.mmdb.new", geodb)
    server.wait_log(rf"changed: {re.escape(str(geodb))}$", start=mark)
    server.wait_log(r"reloaded \(files changed\)", start=mark)
    assert same_rrsets(server.send(query).answer, "www.example.com. 30 IN A 127.0.3.1")  # ap


def test_a_snapshot_records_every_file_it_read(tmp_path: Path) -> None:
    directory, included = _included_zone(tmp_path)
    (directory / "ca.pem").write_text("not read by the build, only named by the config\n")
    (directory / "gslb.toml").write_text(
        '[checks.tls]\nkind = "https"\nca_file = "ca.pem"\n\n'
        '[datacenters.one]\nvips = ["127.0.1.1"]\nlatitude = 1.0\nlongitude = 2.0\ncheck = "tls"\n'
    )
    geodb = build_test_mmdb(tmp_path / "geo.mmdb", networks={"2.2.0.0/16": FRANKFURT})
    snapshot = build(Sources(directory, None, geodb))
    read = set(snapshot.inputs.files)
    assert read == {directory / "inc.test.zone", included, directory / "gslb.toml", directory / "ca.pem", geodb}
    assert not snapshot.inputs.changed()
    included.write_text("h1 A 127.0.0.99\n")
    (directory / "new.test.zone").write_text(ZONE)
    assert set(snapshot.inputs.changed()) == {included, directory / "new.test.zone"}


def test_includes_resolve_without_changing_the_working_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A reload runs in a thread beside the answering ones: it must not move the process's cwd."""
    directory, included = _included_zone(tmp_path)
    (directory / "hosts" / "more.inc").write_text("h9 A 127.0.0.29\n")
    included.write_text("h1 A 127.0.0.21\n$INCLUDE hosts/more.inc\n")  # relative to the zone's directory

    def refuse(path: object) -> None:
        raise AssertionError(f"chdir({path}) during a zone load")

    monkeypatch.setattr(os, "chdir", refuse)
    loaded: list[zones.ZoneSet] = []
    thread = threading.Thread(target=lambda: loaded.append(zones.load_zones(directory)))
    thread.start()
    thread.join(timeout=20)
    assert loaded, "the load failed (see the thread's exception above)"
    assert loaded[0].record_count == 5


def test_a_missing_included_file_is_reported_at_the_include(tmp_path: Path) -> None:
    directory, included = _included_zone(tmp_path)
    included.unlink()
    with pytest.raises(zones.ZoneError) as raised:
        zones.load_zones(directory)
    [problem] = raised.value.problems
    assert (problem.file, problem.line) == (str(directory / "inc.test.zone"), 6)
    assert "hosts/hosts.inc" in problem.message and "No such file" in problem.message


# -- the watcher alone: real inotify on real files ----------------------------------------------


def _watched(tmp_path: Path) -> tuple[Path, Inputs]:
    path = tmp_path / "watched.zone"
    path.write_text("one\n")
    with recording() as recorder:
        recorder.read(path)
    return path, recorder.inputs()


def _wait(inputs: Inputs, change: Callable[[], None], timeout: float, watcher: Watcher | None = None) -> float:
    """Seconds until `Watcher.wait` returned after `change` ran; TimeoutError past `timeout`."""

    async def main() -> float:
        used = watcher or Watcher()
        try:
            used.watch(inputs.directories())
            waiting = asyncio.create_task(used.wait(inputs))
            await asyncio.sleep(0)  # the wait has begun
            started = time.monotonic()
            change()
            async with asyncio.timeout(timeout):
                await waiting
            return time.monotonic() - started
        finally:
            used.close()

    return asyncio.run(main())


def test_the_watcher_wakes_on_a_file_renamed_over_an_input(tmp_path: Path) -> None:
    path, inputs = _watched(tmp_path)
    seconds = _wait(inputs, lambda: _rewrite(path, "two\n"), timeout=5)
    assert seconds < 1.5  # the debounce (0.1 s quiet) after the event, not a polling interval
    assert inputs.changed() == [path]


def test_the_watcher_ignores_other_files_in_the_directory(tmp_path: Path) -> None:
    path, inputs = _watched(tmp_path)
    with pytest.raises(TimeoutError):
        _wait(inputs, lambda: (tmp_path / "unrelated.txt").write_text("x"), timeout=0.5)

    def both() -> None:
        (tmp_path / "unrelated.zone").write_text("x")
        path.write_text("three\n")

    assert _wait(inputs, both, timeout=5) < 1.5


def test_a_link_target_changed_in_place_is_seen(tmp_path: Path) -> None:
    """An input that is a symbolic link: its target's directory is watched as well."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = elsewhere / "real.inc"
    target.write_text("one\n")
    (tmp_path / "zones").mkdir()
    link = tmp_path / "zones" / "hosts.inc"
    link.symlink_to(target)
    with recording() as recorder:
        recorder.read(link)
    inputs = recorder.inputs()
    assert inputs.directories() == {tmp_path / "zones", elsewhere}
    assert _wait(inputs, lambda: target.write_text("two\n"), timeout=5) < 1.5
    assert inputs.changed() == [link]


def test_the_watcher_polls_where_inotify_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    def no_inotify() -> None:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(watch, "_Inotify", no_inotify)
    _, inputs = _watched(tmp_path)
    watcher = Watcher(poll_interval=0.2)
    assert watcher.mode == "polling"
    # A poll returns after the interval whatever happened; the caller compares the states.
    assert 0.1 < _wait(inputs, lambda: None, timeout=5, watcher=watcher) < 2
