"""Nested CV of every blend method on run folders' OOF predictions alone, for runs whose fold weights stayed on
another machine (src/ensemble.py needs whole runs, since its weights must predict new files). src/ensemble.py's
member checks (but for the weights), methods and scores; writes nothing.

    python benchmarks/blend_oof.py outputs/minilm-default outputs/minilm-mlm outputs/tfidf-ridge
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ensemble import print_report  # noqa: E402
from textreg import blending  # noqa: E402
from textreg.errors import run_reporting_user_errors  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="merged run folders; their fold weights are not needed")

    def run() -> None:
        print_report(blending.fit(blending.load_members(parser.parse_args(argv).runs, weights=False)))

    return run_reporting_user_errors(run)


if __name__ == "__main__":
    sys.exit(main())
