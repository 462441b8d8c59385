"""Cross-validated fine-tuning: `accelerate launch src/train.py [--config FILE] [key.sub=value ...]`."""

import argparse
import sys

from textreg.config import UserError, load_config
from textreg.pipeline import run_cv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/default.yaml", help="experiment config (YAML)")
    parser.add_argument("overrides", nargs="*", help="overrides such as train.lr=3e-5 folds=[2]")
    args = parser.parse_args(argv)
    try:
        run_cv(load_config(args.config, args.overrides))
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
