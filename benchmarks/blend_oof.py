"""Nested CV of every blend method on run folders' OOF predictions alone, for runs whose fold weights stayed on
another machine (src/ensemble.py needs whole runs, since its weights must predict new files). The members checks,
methods and scores of src/ensemble.py; writes nothing.

    python benchmarks/blend_oof.py outputs/minilm-default outputs/minilm-mlm outputs/tfidf-ridge
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ensemble import print_report  # noqa: E402
from textreg import artifacts, blending  # noqa: E402
from textreg.data import read_csv  # noqa: E402
from textreg.errors import UserError, run_reporting_user_errors  # noqa: E402


def load(run_dir: Path) -> blending.Member:
    cfg = artifacts.open_run(run_dir)
    if cfg.cv.n_folds != len(artifacts.finished_folds(run_dir)):
        raise UserError(f"{run_dir}: not every fold is finished")
    oof = read_csv(run_dir / "oof.csv").set_index(cfg.data.id_column).sort_index()
    return blending.Member(run_dir.name, run_dir, cfg, oof, oof.iloc[:0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders with oof.csv")

    def run() -> None:
        run_dirs = parser.parse_args(argv).runs
        blending.check_names(run_dirs)
        members = [load(run_dir) for run_dir in run_dirs]
        blending.check_blendable(members)
        print_report(blending.fit(members))

    return run_reporting_user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
