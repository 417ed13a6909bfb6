"""`klingflow run`: placeholder until the executor lands (issue 4)."""

from __future__ import annotations

import argparse

from klingflow.errors import UsageError


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", metavar="PIPELINE")
    parser.add_argument("--sim", action="store_true")


def cmd_run(args: argparse.Namespace) -> int:
    raise UsageError("klingflow run is not implemented yet")
