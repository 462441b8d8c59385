"""Blend experiments into one submission, with weights fitted on their OOF predictions.

Fit:    python src/ensemble.py outputs/minilm-default outputs/tfidf-ridge --name blend
        python src/ensemble.py configs/ensemble/minilm_tfidf.yaml
Apply:  python src/ensemble.py --weights outputs/ensembles/blend/weights.json --input test.csv --output sub.csv
"""

import argparse
import sys
from pathlib import Path

import yaml

from textreg import blending
from textreg.errors import UserError, run_reporting_user_errors
from textreg.files import write_csv
from textreg.metrics import Scorer


def fit(sources: list[Path], name: str | None, output_dir: Path, submission_dir: Path) -> None:
    if len(sources) == 1 and sources[0].suffix in (".yaml", ".yml"):
        spec = yaml.safe_load(sources[0].read_text()) or {}
        if set(spec) - {"name", "members"} or "members" not in spec:
            raise UserError(f"{sources[0]}: an ensemble file has `name` and `members` (got {sorted(spec)})")
        sources, name = [Path(p) for p in spec["members"]], name or spec.get("name")
    name = name or blending.default_name(sources)
    print_report(blending.build(sources, name, output_dir, submission_dir))
    print(
        f"\nweights: {output_dir / 'ensembles' / name / 'weights.json'}; "
        f"submission: {submission_dir / (name + '.csv')} and {submission_dir / 'submission.csv'}"
    )


def print_report(report: dict) -> None:
    """Each member's CV, each method's nested CV (the kept one marked), the kept blend's weights."""
    metric = report["metric"]
    print(f"{'member':<40} CV {metric}")
    for member, value in report["members"].items():
        print(f"{member:<40} {value:.4f}")
    print(f"\n{'method':<40} nested CV {metric}")
    scorer = Scorer(metric)
    for method, value in sorted(report["nested_cv"].items(), key=lambda kv: scorer.loss(kv[1])):
        print(f"{method:<40} {value:.4f}{'  <- kept' if method == report['method'] else ''}")
    if "nested_cv_postprocessed" in report:
        print(f"{'kept, post-processed':<40} {report['nested_cv_postprocessed']:.4f}")
    for target, blend in report["blends"].items():
        weights = ", ".join(f"{m} {w:.3f}" for m, w in blend["weights"].items())
        print(f"\n{target}: {weights}; intercept {blend['intercept']:.4f}")


def apply(weights: Path, input_path: Path, output: Path, sample: Path | None) -> None:
    result = blending.predict_with_weights(weights, input_path)
    if sample is not None:
        result = blending.check_against_sample(result, sample, result.columns[0])
    write_csv(result, output)
    print(f"{len(result)} predictions written to {output}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="*", type=Path, help="experiment folders, or one configs/ensemble/*.yaml")
    parser.add_argument("--name", help="the ensemble's name (default: its members' names)")
    parser.add_argument("--outputs", type=Path, default=Path("outputs"))
    parser.add_argument("--submissions", type=Path, default=Path("submissions"))
    parser.add_argument("--weights", type=Path, help="apply saved weights instead of fitting")
    parser.add_argument("--input", type=Path, help="with --weights: the file to predict")
    parser.add_argument("--output", type=Path, default=Path("submissions/submission.csv"))
    parser.add_argument("--sample", type=Path, help="with --weights: a sample submission to check against")
    args = parser.parse_args(argv)
    if args.weights:
        if args.input is None:
            parser.error("--weights needs --input")
        return run_reporting_user_errors(lambda: apply(args.weights, args.input, args.output, args.sample))
    if not args.sources:
        parser.error("give experiment folders or an ensemble file")
    return run_reporting_user_errors(lambda: fit(args.sources, args.name, args.outputs, args.submissions))


if __name__ == "__main__":
    sys.exit(main())
