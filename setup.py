"""The compiled UDP loop (gslb/_fastudp.c); everything else about the package is in pyproject.toml.

The extension is optional: without a C compiler or Python's headers (Debian: gcc and
python3-dev) the install still succeeds, with a warning, and gslb serves UDP from its
pure-Python loop (see README, Performance).
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """Build what can be built; say so plainly, and carry on, when the compiler cannot."""

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # no compiler, no Python.h, a compile error: all the same here
            print(f"WARNING: gslb: the compiled UDP loop ({ext.name}) was not built ({exc}); "
                  "gslb will use its pure-Python UDP loop. Install gcc and python3-dev and "
                  "reinstall to build it.", file=sys.stderr)

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # e.g. no compiler found at all
            print(f"WARNING: gslb: extensions not built ({exc}); using the pure-Python UDP loop.",
                  file=sys.stderr)


setup(
    ext_modules=[
        Extension(
            "gslb._fastudp",
            ["gslb/_fastudp.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall", "-Wno-unused-parameter"],
            optional=True,
        )
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
