"""Masked-LM pretraining of a backbone on the competition's texts:
`accelerate launch src/pretrain_mlm.py [--config FILE] [key.sub=value ...]` (docs/backbones.md)."""

import argparse
import sys

from textreg.config import load_pretrain_config
from textreg.errors import run_reporting_user_errors
from textreg.pretraining import run_pretraining


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default="configs/pretrain/minilm_mlm.yaml", help="pretraining config (YAML)")
    parser.add_argument("overrides", nargs="*", help="overrides such as pretrain.epochs=3 pretrain.lr=1e-4")
    args = parser.parse_args(argv)
    return run_reporting_user_errors(lambda: run_pretraining(load_pretrain_config(args.config, args.overrides)))


if __name__ == "__main__":
    sys.exit(main())
