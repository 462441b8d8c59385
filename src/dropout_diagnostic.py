"""Show what backbone dropout does to a regression model, on real batches of the competition's texts.

    python src/dropout_diagnostic.py                                   # the backbone with its own dropout
    python src/dropout_diagnostic.py --run outputs/minilm-dropout0.1   # a model fine-tuned with dropout on
    python src/dropout_diagnostic.py model.backbone=microsoft/deberta-v3-base   # your own backbone

Prints, per layer, how far the average of many train-mode passes (dropout on) lies from the eval-mode output and
how much the passes spread, then the prediction's shift between the modes, and saves a plot (--plot, default
outputs/dropout_diagnostic.png).
"""

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from textreg.artifacts import RunFolder
from textreg.batching import TextBatcher
from textreg.config import load_config
from textreg.data import load_train, model_inputs
from textreg.diagnostics import dropout_effect
from textreg.engine import run_model
from textreg.errors import UserError, run_reporting_user_errors
from textreg.files import atomic_write
from textreg.model import build_model, load_backbone_config, load_tokenizer


def plot(result: dict, path: Path, title: str) -> None:
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    layers = [r["layer"] for r in result["layers"]]
    left.plot(layers, [r["shift"] for r in result["layers"]], marker="o", label="shift of the train-mode mean")
    left.plot(layers, [r["noise"] for r in result["layers"]], marker="s", label="spread between train-mode passes")
    left.set(xlabel="layer", ylabel="in eval-output standard deviations", title="layer outputs, dropout on vs off")
    left.legend()
    right.errorbar(result["eval_pred"], result["train_pred_mean"], yerr=result["train_pred_std"], fmt="o", ms=3)
    low, high = min(result["eval_pred"]), max(result["eval_pred"])
    right.plot([low, high], [low, high], color="grey", linewidth=1)
    title = f"mean shift {result['mean_shift']:+.4f}, mean |shift| {result['mean_abs_shift']:.4f}"
    right.set(xlabel="prediction, eval mode", ylabel="prediction, train mode (mean ± sd)", title=title)
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))


def run(args: argparse.Namespace) -> None:
    if args.run:  # the fold's checkpoint, built from the run's own backbone/ folder: offline, like inference
        run = RunFolder(args.run)
        cfg = run.config()
        run.check_fold(args.fold)
        path = run.backbone_dir
        model = run_model(cfg.model, len(cfg.data.target_columns), path)
        model.load_fold_state(run.fold_weights(args.fold))
    else:
        cfg = load_config(args.config, args.overrides)
        if cfg.model.dropout.disable:  # the point is to look at dropout: keep the checkpoint's own
            dropout = cfg.model.dropout.model_copy(update={"disable": False})
            cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"dropout": dropout})})
        path, config = load_backbone_config(cfg.model)
        torch.manual_seed(cfg.seed)  # the head's initial weights
        model = build_model(cfg.model, len(cfg.data.target_columns), path, config)
    tokenizer, config = load_tokenizer(str(path)), model.backbone.config
    torch.manual_seed(cfg.seed)  # the train-mode passes' dropout draws
    df = load_train(cfg.data, cfg.cv, cfg.seed)
    if not 0 < args.texts <= len(df):
        raise UserError(f"--texts {args.texts}: between 1 and the {len(df)} training rows")
    df = df.sample(n=args.texts, random_state=cfg.seed)
    batcher = TextBatcher(tokenizer, cfg.model.max_len)
    ids = batcher.tokenize(model_inputs(df, cfg.data, batcher.separator))
    batch = batcher.collate([{"input_ids": i, "row": n} for n, i in enumerate(ids)])
    result = dropout_effect(model, {k: batch[k] for k in ("input_ids", "attention_mask")}, args.passes)
    dropouts = {k: v for k, v in config.to_dict().items() if "dropout" in k and isinstance(v, float)}
    print(f"{cfg.model.backbone}, dropout {dropouts}, {args.texts} texts, {args.passes} train-mode passes")
    print(f"{'layer':>5} {'shift':>8} {'spread':>8}   (train mode vs eval mode, in eval-output sds)")
    for r in result["layers"]:
        print(f"{r['layer']:>5} {r['shift']:>8.4f} {r['noise']:>8.4f}")
    print(
        f"prediction: mean shift (train - eval) {result['mean_shift']:+.4f}, mean |shift| "
        f"{result['mean_abs_shift']:.4f}, train-mode sd {np.mean(result['train_pred_std']):.4f}"
    )
    plot(result, args.plot, f"{cfg.model.backbone}: dropout {dropouts}")
    print(f"plot: {args.plot}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--run", type=Path, help="a run folder: use its fold checkpoint and config")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--texts", type=int, default=32, help="training texts in the batch")
    parser.add_argument("--passes", type=int, default=30, help="train-mode passes")
    parser.add_argument("--plot", type=Path, default=Path("outputs/dropout_diagnostic.png"))
    parser.add_argument("overrides", nargs="*")
    return run_reporting_user_errors(lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
