"""Merge the folds of a run folder (e.g. trained on several machines): `python src/merge.py outputs/<exp>`.

Writes oof.csv, test_predictions.csv, metrics.json, plots and, once every fold is there, the submission and the
experiment's "cv" run in W&B.
"""

import argparse
import sys
from pathlib import Path

from textreg.artifacts import RunFolder
from textreg.errors import run_reporting_user_errors
from textreg.pipeline import finish_experiment


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="outputs/<experiment>")
    args = parser.parse_args(argv)
    return run_reporting_user_errors(lambda: finish_experiment(RunFolder(args.run_dir)))


if __name__ == "__main__":
    sys.exit(main())
