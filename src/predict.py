"""Predict any file with an experiment's fold checkpoints, offline, from the experiment folder alone.

    python src/predict.py outputs/minilm-default --input input/commonlitreadabilityprize/test.csv

Writes id, <target>_fold<k> for each fold and <target> (their mean, post-processed as the run's `postprocess`
says) to --output (default:
outputs/<experiment>/predictions/<input name>.csv).
"""

import argparse
import sys
from pathlib import Path

from textreg.artifacts import RunFolder
from textreg.errors import run_reporting_user_errors
from textreg.files import write_csv
from textreg.inference import predict_file


def run(run_dir: Path, input_path: Path, output: Path | None) -> None:
    result, run = predict_file(run_dir, input_path), RunFolder(run_dir)
    targets = run.load_config().data.target_columns
    result[targets] = run.postprocessed(result[targets].to_numpy())  # the fold columns stay raw
    output = output or run.predictions_file(input_path)
    write_csv(result, output)
    print(f"{len(result)} predictions written to {output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, help="outputs/<experiment>")
    parser.add_argument("--input", type=Path, required=True, help="a CSV with the experiment's id and text columns")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    return run_reporting_user_errors(lambda: run(args.run_dir, args.input, args.output))


if __name__ == "__main__":
    sys.exit(main())
