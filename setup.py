"""gslb's C extensions (the compiled UDP loop, gslb/dns/_fastudp.c); the rest of the package is in pyproject.toml.

The extensions are optional: without a C compiler or Python's headers (Debian: gcc and
python3-dev) the install still succeeds, with a warning, and gslb uses its pure-Python code
(for UDP, its pure-Python loop: see README, Performance).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build what can be built; say so plainly, and carry on, when the compiler cannot."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # no compiler, no Python.h, a compile error: all the same here
            print(f"WARNING: gslb: the extension {ext.name} was not built ({exc}); gslb will use "
                  "its pure-Python code instead. Install gcc and python3-dev and reinstall to build it.",
                  file=sys.stderr)

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # e.g. no compiler found at all
            print(f"WARNING: gslb: extensions not built ({exc}); using the pure-Python code instead.",
                  file=sys.stderr)


SOURCE = "gslb/dns/_fastudp.c"
# Built into the module as _fastudp.SOURCE, so a test can tell a stale build from this source.
DIGEST = hashlib.sha256((Path(__file__).resolve().parent / SOURCE).read_bytes()).hexdigest()[:16]

setup(
    ext_modules=[
        Extension(
            "gslb.dns._fastudp",
            [SOURCE],
            define_macros=[("GSLB_FASTUDP_SOURCE", f'"{DIGEST}"')],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
            optional=True,
        ),
        # The MMDB record decoder that makes compiling a City database take seconds, not
        # tens of them (gslb/geo/table.py); the same pure-Python decoder stands in without it.
        Extension(
            "gslb.geo._mmdbfields",
            ["gslb/geo/_mmdbfields.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
            optional=True,
        ),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
