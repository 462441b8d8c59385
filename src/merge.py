"""Merge the folds of a run folder (e.g. folds trained on several machines): `python src/merge.py outputs/<exp>`.

Writes oof.csv, test_predictions.csv, metrics.json and, once every fold is there, the submission.
"""

import argparse
import sys
from pathlib import Path

from textreg.artifacts import finalize
from textreg.config import UserError
from textreg.pipeline import summary_line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run_dir", type=Path, help="outputs/<experiment>")
    args = parser.parse_args(argv)
    try:
        print(summary_line(finalize(args.run_dir)))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
