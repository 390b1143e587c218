"""`overhaul`: the az-shaped command line of the orchestrator."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from orchestrator import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="overhaul",
        description="Health-gated automatic OS image upgrades for scale sets of local containers and VMs.",
        epilog="The orchestrator's commands (vmss, sig, vm image, serve) are not available in this version "
        "yet; the in-instance agent is: see `overhaul-agent --help`.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
