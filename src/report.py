"""Table of every experiment in the outputs folder: `python src/report.py [--outputs outputs]`.

CV score, per-fold scores and their spread, training time, and the config keys in which each experiment differs
from configs/default.yaml.
"""

import argparse
import sys
from pathlib import Path

import pandas as pd

from textreg.config import load_config, run_reporting_user_errors
from textreg.report import experiments_table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--default", type=Path, default=Path("configs/default.yaml"), help="the reference config")
    args = parser.parse_args(argv)

    def show() -> None:
        table = experiments_table(args.outputs, load_config(args.default))
        with pd.option_context("display.max_colwidth", 80, "display.width", 200):
            print(table.to_string(index=False) if len(table) else f"no finished experiment in {args.outputs}")

    return run_reporting_user_errors(show)


if __name__ == "__main__":
    sys.exit(main())
