"""Merge the folds of a run folder (e.g. trained on several machines): `python src/merge.py outputs/<exp>`.

Writes oof.csv, test_predictions.csv, metrics.json and, once every fold is there, the submission.
"""

import argparse
import sys
from pathlib import Path

from textreg.artifacts import finalize
from textreg.config import run_reporting_user_errors
from textreg.pipeline import summary_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="outputs/<experiment>")
    args = parser.parse_args(argv)
    return run_reporting_user_errors(lambda: print(summary_line(finalize(args.run_dir))))


if __name__ == "__main__":
    sys.exit(main())
