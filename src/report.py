"""Table of every experiment in the outputs folder: `python src/report.py [--outputs outputs]`.

CV score, per-fold scores and their spread, the stability of the validation curves, training time, and the config
keys in which each experiment differs from configs/default.yaml. Experiments that differ only in `seed` get a second
table that pools their folds and seeds.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from textreg.config import load_config
from textreg.errors import run_reporting_user_errors
from textreg.experiments import experiments_table, load_runs, seeds_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--default", type=Path, default=Path("configs/default.yaml"), help="the reference config")
    args = parser.parse_args(argv)

    def show() -> None:
        runs = load_runs(args.outputs, load_config(args.default).to_dict())
        table, seeds = experiments_table(runs), seeds_table(runs)
        with pd.option_context("display.max_colwidth", 80, "display.width", 250):
            print(table.to_string(index=False) if len(table) else f"no finished experiment in {args.outputs}")
            if len(seeds):
                print("\nOver seeds (mean and std of every fold of every seed):")
                print(seeds.to_string(index=False))

    return run_reporting_user_errors(show)


if __name__ == "__main__":
    sys.exit(main())
