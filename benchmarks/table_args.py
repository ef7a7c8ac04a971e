"""Command-line pieces the method tables share (weakness_table, explain_table)."""

from __future__ import annotations

import argparse


def add_seed_and_override_args(p: argparse.ArgumentParser, recipe_note: str) -> None:
    """`--seeds` (the table's seeds; a recipe runs one) and `--set key=value ...`."""
    p.add_argument(
        "--seeds",
        nargs="+",
        type=int,
        default=[0, 1, 2],
        help=f"seeds of the table ({recipe_note}; a run into the same folder reuses the "
        "seeds already trained)",
    )
    p.add_argument("--set", nargs="*", default=[], help="extra key=value overrides for the run")


def seeds_override(seeds: list[int]) -> str:
    """The recipe override that runs `seeds`."""
    return "experiment.seeds=[" + ",".join(map(str, seeds)) + "]"
