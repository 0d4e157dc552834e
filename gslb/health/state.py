"""The health state file: every target's last verdict and the drains, kept across restarts.

Written whole (a temporary file, fsync, rename) by the monitor; read by the monitor at a cold
start and by `gslb explain`, which shows the saved verdicts without probing anything.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gslb.health.view import NO_PROBE_YET, RESTORED, HealthView, Status, drained_status

if TYPE_CHECKING:
    from gslb.config.model import Target

log = logging.getLogger("gslb.health")

STATE_FILE_FORMAT = 1


def _empty() -> Mapping[Any, Any]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SavedState:
    """What a state file holds."""

    verdicts: Mapping[str, tuple[str, Status]] = field(default_factory=_empty)  # name -> (address, verdict)
    drained: Mapping[str, float] = field(default_factory=_empty)  # name -> when drained

    def verdict(self, target: Target, now: float) -> Status:
        """The saved verdict of `target` if it was probed at the same address; else up, with
        reason "no probe yet" (see HealthMonitor on cold starts)."""
        saved = self.verdicts.get(target.name)
        if saved is None or saved[0] != target.address:
            return Status(True, NO_PROBE_YET, now)
        return saved[1]


def read_state(path: Path | None) -> SavedState:
    """The state file at `path`, verdicts with reason "restored from state file"; nothing
    if there is no file, and nothing (with a warning) if it cannot be read."""
    if path is None:
        return SavedState()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != STATE_FILE_FORMAT:
            raise ValueError(f"unknown format {data.get('format')!r}")
        verdicts = {
            name: (str(item["address"]), Status(bool(item["up"]), RESTORED, float(item["since"])))
            for name, item in data["targets"].items()
        }
        drained = {str(name): float(at) for name, at in data["drained"].items()}
    except FileNotFoundError:
        return SavedState()
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("ignoring health state file %s: %s", path, exc)
        return SavedState()
    log.info("restored %d health verdicts and %d drains from %s", len(verdicts), len(drained), path)
    return SavedState(verdicts, drained)


def write_state(path: Path, state: SavedState) -> None:
    """Replace the state file at `path` with `state` at once; log (never raise) on failure."""
    data = {
        "format": STATE_FILE_FORMAT,
        "saved": time.time(),
        "targets": {
            name: {"address": address, "up": verdict.up, "reason": verdict.reason, "since": verdict.since}
            for name, (address, verdict) in state.verdicts.items()
        },
        "drained": dict(state.drained),
    }
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                json.dump(data, file, indent=1, sort_keys=True)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        log.error("cannot write health state file %s: %s", path, exc)


def saved_view(targets: Sequence[Target], path: Path | None) -> HealthView:
    """The view a server restarting now would start from: the saved verdicts of `targets`
    and the drains (for `gslb explain`, which probes nothing; no file: all up)."""
    state = read_state(path)
    now = time.time()
    states = {target.name: state.verdict(target, now) for target in targets}
    for name, at in state.drained.items():
        states[name] = drained_status(at)
    return HealthView(0, MappingProxyType(states))
