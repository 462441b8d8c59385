"""Cross-validated fine-tuning: `accelerate launch src/train.py [--config FILE] [key.sub=value ...]`."""

import argparse
import sys

from textreg.config import dump, load_config
from textreg.errors import run_reporting_user_errors
from textreg.pipeline import run_cv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml", help="experiment config (YAML)")
    parser.add_argument(
        "--print-config", action="store_true", help="print every key of the resolved config; train nothing"
    )
    parser.add_argument("overrides", nargs="*", help="overrides such as train.lr=3e-5 folds=[2]")
    args = parser.parse_args(argv)
    if args.print_config:
        return run_reporting_user_errors(lambda: print(dump(load_config(args.config, args.overrides)), end=""))
    return run_reporting_user_errors(lambda: run_cv(load_config(args.config, args.overrides)))


if __name__ == "__main__":
    sys.exit(main())
