"""Where a key of the configuration is in its text: key path -> line, and TOML errors as a line and a message."""

from __future__ import annotations

import contextlib
import json
import re
import tomllib
from typing import Final

from gslb.config.model import KeyPath

__all__ = ["Locator", "render_key", "syntax_error"]

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")
_TOML_POSITION: Final = re.compile(r"\s*\(at line (\d+), column (\d+)\)$")
_SCALAR: Final = re.compile(r"[^,\]}#\r\n]*")  # numbers, booleans, dates


def render_key(path: KeyPath) -> str:
    """``("services", "www.example.com.", "map", 0)`` → ``services."www.example.com.".map[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = part if _BARE_KEY.fullmatch(part) else json.dumps(part, ensure_ascii=False)
            out = f"{out}.{text}" if out else text
    return out


class Locator:
    """Maps key paths to the line that defines them, by scanning (already valid) TOML text.

    tomllib reports no positions, so this reads the text once more, tracking table headers,
    dotted keys, arrays (also across lines) and inline tables.  It records the line of every
    key, array element and table header; a missing key falls back to its table's header.
    """

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.line = 1
        self.lines: dict[KeyPath, int] = {}
        self.aot: dict[KeyPath, int] = {}  # array-of-tables path → index of its last element
        # Best effort only: the text parsed, so a failure here is a locator bug; lines fall back.
        with contextlib.suppress(IndexError, ValueError, tomllib.TOMLDecodeError):
            self._document()

    def find(self, path: KeyPath) -> int:
        for n in range(len(path), 0, -1):
            line = self.lines.get(path[:n])
            if line is not None:
                return line
        return 1

    # -- scanning helpers

    def _peek(self, n: int = 1) -> str:
        return self.text[self.pos : self.pos + n]

    def _advance(self, n: int) -> None:
        self.line += self.text.count("\n", self.pos, self.pos + n)
        self.pos += n

    def _skip(self, newlines: bool) -> None:
        """Skip blanks, and with ``newlines`` also line ends and comments."""
        text = self.text
        while self.pos < len(text):
            c = text[self.pos]
            if c in " \t":
                self.pos += 1
            elif newlines and c in "\r\n":
                self._advance(1)
            elif newlines and c == "#":
                end = text.find("\n", self.pos)
                self.pos = len(text) if end < 0 else end
            else:
                return

    def _record(self, path: KeyPath, line: int) -> None:
        self.lines.setdefault(path, line)

    def _document(self) -> None:
        table: KeyPath = ()
        while True:
            self._skip(newlines=True)
            if self.pos >= len(self.text):
                return
            if self._peek(2) == "[[":
                self._advance(2)
                key = self._key()
                self._skip(newlines=False)
                self._advance(2)  # "]]"
                parent = self._resolve(key[:-1])
                array = (*parent, key[-1])
                for n in range(1, len(array)):
                    self._record(array[:n], self.line)
                self._record(array, self.line)
                index = self.aot.get(array, -1) + 1
                self.aot[array] = index
                table = (*array, index)
                self._record(table, self.line)
            elif self._peek() == "[":
                self._advance(1)
                key = self._key()
                self._skip(newlines=False)
                self._advance(1)  # "]"
                table = self._resolve(key)
                for n in range(1, len(table)):  # implicit parent tables start here too
                    self._record(table[:n], self.line)
                # A header defines the table here even if a dotted key mentioned it first.
                self.lines[table] = self.line
            else:
                self._pair(table)

    def _resolve(self, key: tuple[str, ...]) -> KeyPath:
        """A header's key with the current element index after each array of tables."""
        out: KeyPath = ()
        for part in key:
            out = (*out, part)
            if out in self.aot:
                out = (*out, self.aot[out])
        return out

    def _key(self) -> tuple[str, ...]:
        parts: list[str] = []
        while True:
            self._skip(newlines=False)
            c = self._peek()
            if c in "\"'":
                start = self.pos
                self._string()
                parts.append(tomllib.loads("k = " + self.text[start : self.pos])["k"])
            else:
                m = _BARE_KEY.match(self.text, self.pos)
                if m is None:
                    raise ValueError("no key")
                parts.append(m.group())
                self.pos = m.end()
            self._skip(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance(1)

    def _pair(self, table: KeyPath) -> None:
        line = self.line
        key = self._key()
        for n in range(1, len(key) + 1):
            self._record((*table, *key[:n]), line)
        self._skip(newlines=False)
        self._advance(1)  # "="
        self._skip(newlines=False)
        self._value((*table, *key))

    def _value(self, path: KeyPath) -> None:
        c = self._peek()
        if c in "\"'":
            self._string()
        elif c == "[":
            self._advance(1)
            index = 0
            while True:
                self._skip(newlines=True)
                if self._peek() == "]":
                    self._advance(1)
                    return
                self._record((*path, index), self.line)
                self._value((*path, index))
                index += 1
                self._skip(newlines=True)
                if self._peek() == ",":
                    self._advance(1)
        elif c == "{":
            self._advance(1)
            while True:
                self._skip(newlines=False)
                if self._peek() == "}":
                    self._advance(1)
                    return
                self._pair(path)
                self._skip(newlines=False)
                if self._peek() == ",":
                    self._advance(1)
        else:
            # Numbers, booleans, dates (which may hold a space): up to the next delimiter.
            m = _SCALAR.match(self.text, self.pos)
            if m is None or m.end() == self.pos:
                raise ValueError("no value")
            self.pos = m.end()

    def _string(self) -> None:
        text = self.text
        for quote in ('"""', "'''"):
            if text.startswith(quote, self.pos):
                i = self.pos + 3
                while True:
                    if quote == '"""' and text[i] == "\\":
                        i += 2
                        continue
                    if text.startswith(quote, i):
                        # Up to two quotes may end the content right before the delimiter.
                        while text.startswith(quote[0], i + 3):
                            i += 1
                        self._advance(i + 3 - self.pos)
                        return
                    i += 1
        quote = text[self.pos]
        i = self.pos + 1
        while text[i] != quote:
            i += 2 if quote == '"' and text[i] == "\\" else 1
        self.pos = i + 1


def syntax_error(error: tomllib.TOMLDecodeError, text: str) -> tuple[int, str]:
    """The line of a TOML syntax error and its message, with the column kept and the position cut."""
    message, line = str(error), 1
    m = _TOML_POSITION.search(message)
    if m is not None:
        line = int(m.group(1))
        message = f"{message[: m.start()]} (column {m.group(2)})"
    elif message.endswith("(at end of document)"):
        line = text.count("\n") + 1
        message = message.removesuffix(" (at end of document)") + " (at end of file)"
    return line, f"invalid TOML: {message}"
