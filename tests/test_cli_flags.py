"""Command-line values that cannot work are refused at once with a clear message."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import EXAMPLE_ZONES, ROOT


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--tcp-max-connections", "0", "--tcp-max-connections must be 1 or more"),
        ("--tcp-max-connections", "-5", "--tcp-max-connections must be 1 or more"),
        ("--tcp-idle-timeout", "0", "--tcp-idle-timeout must be more than 0 seconds"),
        ("--tcp-idle-timeout", "-1", "--tcp-idle-timeout must be more than 0 seconds"),
        ("--workers", "-1", "--workers must be 0 or more"),
    ],
)
def test_impossible_serve_flags_are_refused(flag: str, value: str, message: str) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gslb",
            "serve",
            "--zones",
            str(EXAMPLE_ZONES),
            "--no-probes",
            "--listen",
            "127.0.0.1:0",
            flag,
            value,
        ],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
    )
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
