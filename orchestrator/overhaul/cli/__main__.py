"""`python -m overhaul.cli`: the `overhaul` command."""

import sys

from overhaul.cli import main

sys.exit(main())
