"""Studies: `python src/study.py configs/study/dropout.yaml [more study files] [--parallel 4] [key=value ...]`.

Trains every run of the study files (overrides apply to all), `--parallel` at a time, each an ordinary experiment
with its own log, and writes one table per study (CV against the baseline) to <output_dir>/studies/.
Finished folds are kept: run it again to resume, or with --summary to print the tables only.
"""

import argparse
import sys
from pathlib import Path

from textreg.config import load_config
from textreg.errors import UserError, run_reporting_user_errors
from textreg.studies import load_study, queue, run_all, write_summaries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("items", nargs="+", help="study files (.yaml), then overrides such as train.threads=2")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (a small backbone leaves a GPU idle)")
    parser.add_argument("--summary", action="store_true", help="print the tables of what is finished; train nothing")
    args = parser.parse_intermixed_args(argv)
    files = [item for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]

    def study() -> None:
        studies = [load_study(Path(file)) for file in files]
        runs = queue(studies)
        # Every config is validated before anything trains.
        configs = [load_config(run.config, [f"experiment={run.name}", *run.overrides, *overrides]) for run in runs]
        run_dirs = {run.name: cfg.run_dir for run, cfg in zip(runs, configs, strict=True)}
        folder = configs[0].output_dir / "studies"
        codes = {}
        if not args.summary:
            summarize = lambda: write_summaries(studies, run_dirs, folder)  # noqa: E731
            codes = run_all(runs, args.parallel, overrides, folder / "logs", summarize)
        print(write_summaries(studies, run_dirs, folder))
        failed = [name for name, code in codes.items() if code]
        if failed:
            raise UserError(f"runs failed (their logs are in {folder / 'logs'}): {' '.join(failed)}")

    return run_reporting_user_errors(study)


if __name__ == "__main__":
    sys.exit(main())
