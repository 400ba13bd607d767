"""Time-LLM (Jin et al. ICLR 2024) end to end on real series from the statsmodels wheel.

    python benchmarks/time_llm.py [--datasets sm_sunspots sm_elnino sm_co2] [--epochs 30]
    python benchmarks/time_llm.py --quick   # smoke run (the test suite's): a tiny LM, 1 epoch

Trains :func:`jaxreprog.embedding.time_llm` through a frozen, *randomly initialised* small
GPT-2-shaped LM (no GPT-2 weights install offline: there is no pretrained LM here, so this
measures the mechanism end to end, not what a pretrained LM adds) and reports test MSE / MAE,
in units of the train segment's standard deviation, against naive (last value), seasonal
naive (the value one period back) and linear (least squares on the context window, fitted on
the train windows) baselines. Validation selects the epoch. The prompt-as-prefix renders the
statistics as GPT-2's one-character tokens (:func:`~jaxreprog.embedding.time_llm.gpt2_char_id`),
so the LM's vocabulary is cut to 256 (the ids it uses are < 256).
"""

from __future__ import annotations

import argparse
import importlib
import time

import jax
import numpy as np
import optax

import jaxreprog as jr
from jaxreprog.data import forecasting
from jaxreprog.models import gpt2

tl = importlib.import_module("jaxreprog.embedding.time_llm")


def baselines(name: str, x: dict, y: dict) -> dict[str, np.ndarray]:
    """Test predictions of the naive, seasonal-naive and linear baselines."""
    period, h = forecasting.period(name), y["test"].shape[1]
    xt = x["test"]
    seasonal = xt[:, xt.shape[1] - period + (np.arange(h) % period)]
    design = np.concatenate([x["train"], np.ones((len(x["train"]), 1), np.float32)], 1)
    w, *_ = np.linalg.lstsq(design, y["train"], rcond=None)
    return {
        "naive (last value)": np.repeat(xt[:, -1:], h, axis=1),
        f"seasonal naive (period {period})": seasonal,
        "linear (least squares)": np.concatenate([xt, np.ones((len(xt), 1), np.float32)], 1) @ w,
    }


def errors(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    return float(np.mean((pred - target) ** 2)), float(np.mean(np.abs(pred - target)))


def run_time_llm(
    name: str, x: dict, y: dict, epochs: int, seed: int = 0, quick: bool = False
) -> tuple[np.ndarray, float, int]:
    context, horizon = x["train"].shape[1], y["train"].shape[1]
    width, layers = (32, 1) if quick else (64, 2)
    config = gpt2.GPT2Config(
        vocab_size=256, hidden_size=width, num_layers=layers, num_heads=4, max_positions=256
    )
    lm = gpt2.from_config(config, jax.random.key(seed))
    prompt = tl.StatsPrompt.from_chars(f"{name}: forecast {horizon} steps from {context}.", tl.gpt2_char_id)
    model = jr.embedding.time_llm_backbone(lm, prompt=prompt)
    patch = 8 if context < 64 else 16
    hook = jr.embedding.time_llm(
        context, horizon, patch_len=patch, stride=patch // 2, d_model=16, heads=4, num_prototypes=100, d_ff=32
    )
    program = jr.reprogram(model, embedding=hook)
    # quick: whole batches only, so the step compiles once
    train = jr.data.from_arrays(
        x["train"], y["train"], batch_size=32, shuffle_seed=seed, drop_remainder=quick
    )
    apply = jax.jit(program.apply)
    theta = program.init(jax.random.key(seed + 1))
    best = {"val": np.inf, "theta": theta, "epoch": 0}

    def keep_best(record, theta):  # validation picks the epoch
        val = errors(np.asarray(apply(theta, model.params, x["validation"])), y["validation"])[0]
        if val < best["val"]:
            best.update(val=val, theta=theta, epoch=record["epoch"])

    start = time.perf_counter()
    jr.train.fit(
        program,
        model,
        train,
        epochs=epochs,
        optimizer=optax.adam(1e-3),
        loss=jr.train.mse,
        key=jax.random.key(seed + 2),
        theta=theta,
        progress=False,
        callback=keep_best,
    )
    seconds = time.perf_counter() - start
    return np.asarray(apply(best["theta"], model.params, x["test"])), seconds, best["epoch"]


def main(argv: list[str] | None = None) -> dict[str, dict[str, tuple[float, float]]]:
    """Prints the markdown table; returns ``{dataset: {model: (test MSE, test MAE)}}``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["sm_sunspots", "sm_elnino", "sm_co2"])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="smoke run: sm_sunspots, a tiny LM, 1 epoch")
    parser.add_argument(
        "--data-dir", default=None, help="the TFDS folder (default: jr.data.default_data_dir())"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.datasets, args.epochs = ["sm_sunspots"], 1
    print("| dataset | model | test MSE | test MAE |")
    print("|---|---|---|---|")
    results = {}
    for name in args.datasets:
        x, y = {}, {}
        for split in ("train", "validation", "test"):
            # standardised with the train segment's mean and std
            x[split], y[split] = jr.data.arrays(name, split, data_dir=args.data_dir)
        rows = {k: errors(p, y["test"]) for k, p in baselines(name, x, y).items()}
        pred, seconds, epoch = run_time_llm(name, x, y, args.epochs, quick=args.quick)
        label = f"Time-LLM, random-init GPT-2-shaped LM (epoch {epoch}/{args.epochs} by val, {seconds:.0f} s)"
        rows[label] = errors(pred, y["test"])
        for model, (mse, mae) in rows.items():
            print(f"| {name} (test windows {len(y['test'])}) | {model} | {mse:.4f} | {mae:.4f} |", flush=True)
        results[name] = rows
    return results


if __name__ == "__main__":
    main()
