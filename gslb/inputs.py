"""The files a snapshot was built from, as they were when read, and whether any changed since."""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

# What tells a file's change without reading it: device and inode (a file renamed over it),
# size, and the modification and change times.  None: the file did not exist.
FileState = tuple[int, int, int, int, int] | None


def state(path: Path) -> FileState:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def listing(directory: Path, pattern: str) -> frozenset[str]:
    """The names in `directory` matching `pattern` (a new or removed zone file changes it)."""
    try:
        return frozenset(name for name in os.listdir(directory) if fnmatch.fnmatchcase(name, pattern))
    except OSError:
        return frozenset()


@dataclass(frozen=True, slots=True)
class Inputs:
    """Every file one build read (or tried to), with its state from just before it was read."""

    files: Mapping[Path, FileState] = field(default_factory=lambda: MappingProxyType({}))
    listings: Mapping[tuple[Path, str], frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    # Where symbolic links among the files pointed: a change there changes the file too.
    targets: frozenset[Path] = frozenset()

    def changed(self) -> list[Path]:
        """The files whose state differs now, and the files that appeared in or left a listing."""
        changed = [path for path, before in self.files.items() if state(path) != before]
        for (directory, pattern), before in self.listings.items():
            now = listing(directory, pattern)
            changed.extend(directory / name for name in sorted(now ^ before) if directory / name not in self.files)
        return changed

    def refreshed(self) -> Inputs:
        """The same inputs as they are now (so that what changed so far no longer counts)."""
        return Inputs(
            MappingProxyType({path: state(path) for path in self.files}),
            MappingProxyType({key: listing(*key) for key in self.listings}),
            self.targets,
        )

    def directories(self) -> set[Path]:
        """Where a change to these inputs shows: the directory of each file, link target and listing."""
        return {path.parent for path in (*self.files, *self.targets)} | {directory for directory, _ in self.listings}

    def concerns(self, path: Path) -> bool:
        """Whether a change to `path` (a name in a watched directory) may change these inputs."""
        if path in self.files or path in self.targets:
            return True
        return any(
            path.parent == directory and fnmatch.fnmatchcase(path.name, pattern) for directory, pattern in self.listings
        )


class Recorder:
    """Collects what a build reads; `read` is called just before a file is opened."""

    def __init__(self) -> None:
        self.files: dict[Path, FileState] = {}
        self.listings: dict[tuple[Path, str], frozenset[str]] = {}
        self.targets: set[Path] = set()

    def read(self, path: Path) -> None:
        path = Path(os.path.abspath(path))
        if path not in self.files:
            self.files[path] = state(path)
            target = Path(os.path.realpath(path))
            if target != path:
                self.targets.add(target)

    def listed(self, directory: Path, pattern: str) -> frozenset[str]:
        directory = Path(os.path.abspath(directory))
        names = listing(directory, pattern)
        self.listings.setdefault((directory, pattern), names)
        return names

    def inputs(self) -> Inputs:
        return Inputs(
            MappingProxyType(dict(self.files)), MappingProxyType(dict(self.listings)), frozenset(self.targets)
        )


# The recorder of the build running in this thread (a reload builds in a worker thread).
_current: contextvars.ContextVar[Recorder | None] = contextvars.ContextVar("gslb_inputs", default=None)


@contextlib.contextmanager
def recording() -> Iterator[Recorder]:
    recorder = Recorder()
    token = _current.set(recorder)
    try:
        yield recorder
    finally:
        _current.reset(token)


def read(*paths: Path | None) -> None:
    """Note files about to be read by the build being recorded, if any."""
    recorder = _current.get()
    if recorder is not None:
        for path in paths:
            if path is not None:
                recorder.read(path)


def listed(directory: Path, pattern: str) -> None:
    """Note that the build being recorded depends on which files in `directory` match `pattern`."""
    recorder = _current.get()
    if recorder is not None:
        recorder.listed(directory, pattern)
