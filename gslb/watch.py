"""Waiting for a change to a snapshot's inputs: inotify on their directories, polling where there is none.

Directories, not files, are watched: editors, geoipupdate and deploy tools replace a file by
renaming a new one over it, which a watch on the old file would never see. Events only wake
the watcher; whether an input changed is decided by comparing its state (gslb.inputs).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import logging
import os
import struct
from pathlib import Path

from gslb.inputs import Inputs

log = logging.getLogger(__name__)

POLL_INTERVAL = 1.0  # seconds between checks when polling
DEBOUNCE = 0.1  # seconds without another event before a burst of writes counts as done
DEBOUNCE_LIMIT = 1.0  # at most this long after the first event of a burst

# <sys/inotify.h>
IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x01000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
WATCH_MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
)
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name


class _Inotify:
    """The three inotify calls, through libc."""

    def __init__(self) -> None:
        # The process's own symbols, libc's among them: find_library("c") would fork ldconfig.
        libc = ctypes.CDLL(None, use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _error()
        self.fd: int = fd

    def add(self, directory: Path) -> int:
        wd: int = self._add(self.fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:
            raise _error(directory)
        return wd

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # fails only if the kernel dropped it already (IN_IGNORED)

    def events(self) -> list[tuple[int, int, bytes]]:
        """Every event queued now: (wd, mask, name)."""
        events: list[tuple[int, int, bytes]] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return events
            offset = 0
            while offset + _EVENT.size <= len(data):
                wd, mask, _, length = _EVENT.unpack_from(data, offset)
                start = offset + _EVENT.size
                events.append((wd, mask, data[start : start + length].rstrip(b"\0")))
                offset = start + length

    def close(self) -> None:
        os.close(self.fd)


def _error(path: Path | None = None) -> OSError:
    code = ctypes.get_errno()
    return OSError(code, os.strerror(code), None if path is None else str(path))


class Watcher:
    """Wakes when an input may have changed (debounced), or when told the inputs were replaced."""

    def __init__(self, poll_interval: float = POLL_INTERVAL):
        self.poll_interval = poll_interval
        self._signal = asyncio.Event()
        self._woken = False
        self._wds: dict[Path, int] = {}
        # One wd per inode: two paths to one directory (a link to it) share it.
        self._directories: dict[int, set[Path]] = {}
        self._inotify: _Inotify | None = None
        try:
            self._inotify = _Inotify()
        except (OSError, AttributeError) as exc:  # AttributeError: a libc without inotify
            log.warning("no inotify (%s): checking the input files every %g s", exc, poll_interval)

    @property
    def mode(self) -> str:
        return "inotify" if self._inotify is not None else "polling"

    def watch(self, directories: set[Path]) -> None:
        """Watch exactly these directories, not their subdirectories."""
        inotify = self._inotify
        if inotify is None:
            return
        for directory in set(self._wds) - directories:
            wd = self._wds.pop(directory)
            sharing = self._directories.get(wd, set())
            sharing.discard(directory)
            if not sharing:
                self._directories.pop(wd, None)
                inotify.remove(wd)
        for directory in directories - set(self._wds):
            try:
                wd = inotify.add(directory)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EACCES):
                    log.debug("not watching %s: %s", directory, exc.strerror)
                    continue
                # ENOSPC: the user's inotify watch limit (fs.inotify.max_user_watches).
                log.warning(
                    "cannot watch %s (%s): checking the input files every %g s instead",
                    directory,
                    exc.strerror,
                    self.poll_interval,
                )
                self._stop_inotify()
                return
            self._wds[directory] = wd
            self._directories.setdefault(wd, set()).add(directory)

    def wake(self) -> None:
        """End a wait now: the inputs were replaced (a reload from elsewhere)."""
        self._woken = True
        self._signal.set()

    async def wait(self, inputs: Inputs) -> None:
        """Return once something `inputs` concerns may have changed, or when woken."""
        inotify = self._inotify
        if inotify is None:
            await self._signalled(self.poll_interval)
            self._woken = False
            return
        loop = asyncio.get_running_loop()
        loop.add_reader(inotify.fd, self._signal.set)
        try:
            while not self._relevant(inotify.events(), inputs):
                await self._signalled(None)
                if self._woken:
                    return
            # A burst of writes (an editor's save, a copy) wakes once, after it ends.
            deadline = loop.time() + DEBOUNCE_LIMIT
            while (left := deadline - loop.time()) > 0:
                if not await self._signalled(min(DEBOUNCE, left)) or self._woken:
                    return
                inotify.events()
        finally:
            self._woken = False
            with contextlib.suppress(ValueError, OSError):  # closed meanwhile
                loop.remove_reader(inotify.fd)

    async def _signalled(self, timeout: float | None) -> bool:
        """Wait for the next event or wake, up to `timeout` seconds; False when none came."""
        try:
            async with asyncio.timeout(timeout):
                await self._signal.wait()
        except TimeoutError:
            return False
        self._signal.clear()
        return True

    def _relevant(self, events: list[tuple[int, int, bytes]], inputs: Inputs) -> bool:
        relevant = False
        for wd, mask, name in events:
            directories = self._directories.get(wd, set())
            if mask & IN_Q_OVERFLOW:
                relevant = True  # events were lost: look
            elif mask & (IN_IGNORED | IN_DELETE_SELF | IN_MOVE_SELF):
                if mask & IN_IGNORED:  # the kernel dropped the watch: the directory is gone
                    for directory in self._directories.pop(wd, set()):
                        self._wds.pop(directory, None)
                relevant = relevant or bool(directories)
            elif any(inputs.concerns(directory / os.fsdecode(name)) for directory in directories):
                relevant = True
        return relevant

    def _stop_inotify(self) -> None:
        if self._inotify is not None:
            self._inotify.close()
            self._inotify = None
        self._wds.clear()
        self._directories.clear()

    def close(self) -> None:
        self._stop_inotify()
