"""The text of a master file: its lines, their tokens, entries (a line or lines in parentheses), $GENERATE templates.

What gslb.dns.masterfile builds records from; the errors are dnspython's, worded as dnspython words them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import dns.exception

__all__ = ["entries", "file_lines", "ident", "line_tokens", "substitute", "syntax_error"]

# A line's tokens where it has quotes or escapes: a quoted string, a parenthesis, a comment,
# or a word (a backslash escapes the next character in both).  Anything else left between
# them is an unterminated quote or a trailing backslash.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[()]|;.*|(?:[^\s;()"\\]|\\.)+')
_PARENS = re.compile(r"[()]|[^\s()]+")
# A $GENERATE substitution: an escape (kept), "$$" (a "$"), or "$" with an optional {modifier}.
_SUBSTITUTION = re.compile(r"\\.|\$(\$|\{[^}]*\}?)?")
_MODIFIER = re.compile(r"\{([+-]?\d+)(?:,(\d+)(?:,([doxXnN]))?)?\}$")


def syntax_error(message: str | None = None) -> dns.exception.SyntaxError:
    """dnspython's syntax error (its own wording, "Text input is malformed", without a message)."""
    if message is None:
        return dns.exception.SyntaxError()  # type: ignore[no-untyped-call]
    return dns.exception.SyntaxError(message)  # type: ignore[no-untyped-call]


def file_lines(data: bytes) -> tuple[list[str], list[int]]:
    """The file's lines, and the numbers of those that are not UTF-8 (blanked)."""
    try:
        return data.decode().split("\n"), []
    except UnicodeDecodeError:
        pass
    lines, bad = [], []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            lines.append(raw.decode())
        except UnicodeDecodeError:
            lines.append("")
            bad.append(number)
    return lines, bad


def line_tokens(line: str) -> list[str]:
    """One line's tokens, comments dropped; quoted strings keep their quotes and escapes."""
    if '"' not in line and "\\" not in line:
        if ";" in line:
            line = line[: line.index(";")]
        return _PARENS.findall(line) if "(" in line or ")" in line else line.split()
    tokens = []
    end = 0
    for match in _TOKEN.finditer(line):
        if line[end : match.start()].strip():
            break
        end = match.end()
        if match.group()[0] != ";":
            tokens.append(match.group())
    rest = line[end:].strip()
    if rest:
        if rest[0] == '"':
            raise syntax_error("newline in quoted string")
        raise dns.exception.UnexpectedEnd  # a backslash at the end of the line
    return tokens


def entries(lines: list[str]) -> Iterator[tuple[int, bool, list[str] | dns.exception.DNSException]]:
    """(first line, owner omitted, tokens or the error) for each entry: a line, or lines in parentheses."""
    pending: list[str] = []
    start = 0
    blank = False
    depth = 0
    error: dns.exception.DNSException | None = None
    within = False  # an entry has begun
    for number, line in enumerate(lines, 1):
        try:
            tokens = line_tokens(line)
        except dns.exception.DNSException as exc:
            tokens = []
            error = error or exc
            if not within:
                within, start = True, number
        if not within:
            if not tokens:
                continue
            within, start, blank = True, number, line[:1] in (" ", "\t")
        if "(" in tokens or ")" in tokens:
            for token in tokens:
                if token == "(":
                    depth += 1
                elif token != ")":
                    pending.append(token)
                elif depth:
                    depth -= 1
                else:
                    error = error or syntax_error("unbalanced parentheses")
        else:
            pending.extend(tokens)
        if depth == 0:
            if error is not None:
                yield start, False, error
            elif pending:
                yield start, blank, pending
            pending, error, within = [], None, False
    if within:
        yield start, False, error or syntax_error("unbalanced parentheses")


def ident(tokens: list[str], pos: int) -> str:
    """tokens[pos], which must be there and not a quoted string."""
    if pos >= len(tokens) or tokens[pos][0] == '"':
        raise syntax_error()
    return tokens[pos]


def substitute(template: str, counter: int) -> str:
    """A $GENERATE template with each `$` or `${offset[,width[,base]]}` replaced; `$$` is a `$`."""
    if "$" not in template:
        return template

    def one(match: re.Match[str]) -> str:
        text, modifier = match.group(), match.group(1)
        if text[0] == "\\":
            return text  # an escape stays for the name or rdata parser
        if modifier == "$":
            return "$"
        offset, width, base = 0, 0, "d"
        if modifier:
            parts = _MODIFIER.match(modifier)
            if parts is None:
                raise syntax_error("invalid $GENERATE modifier")
            offset, width, base = int(parts[1]), int(parts[2] or 0), parts[3] or "d"
            if width > 127:  # BIND's limit on one substitution
                raise syntax_error("$GENERATE width is too large")
        value = counter + offset
        if base in "nN":
            return _nibbles(value, width, base)
        return format(value, base).zfill(width)

    return _SUBSTITUTION.sub(one, template)


def _nibbles(value: int, width: int, base: str) -> str:
    """Hex nibbles, least significant first, dot-separated, zero nibbles added to `width` characters."""
    if value < 0:
        raise syntax_error("negative $GENERATE value in nibble mode")
    digits = "0123456789ABCDEF" if base == "N" else "0123456789abcdef"
    out = digits[value & 15]
    value >>= 4
    while value or len(out) < width:
        out += "." + digits[value & 15]
        value >>= 4
    return out
