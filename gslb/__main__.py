"""`python -m gslb` runs the command line."""

import sys

from gslb.cli import main

sys.exit(main())
