"""`python -m orchestrator.cli`: the `overhaul` command."""

import sys

from orchestrator.cli import main

sys.exit(main())
