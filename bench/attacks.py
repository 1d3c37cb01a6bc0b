"""Shadow-model training: K models side by side (vectorised) vs a loop of K engine trainings.

Both train the same K models on the same digits population (1,797 examples,
each model on its own random half, as `run_attack` does): same model, epochs,
batch size, optimiser (SGD, momentum 0.9) and seeds. The sequential baseline is
`make_private(...).run()` once per model, the engine `privaudit train` uses;
the vectorised one is `train_shadows`. The two give the same parameters (see
tests/attacks/test_shadows.py); only the wall time differs.

Reported: seconds per epoch of all K models (wall time / epochs), the best of
`--repeats` timed runs after one untimed warm-up; the speedup is sequential /
vectorised. The sequential K=64 case runs fewer epochs (`--seq64-epochs`) to
stay quick; time per epoch is what is compared.

    python bench/attacks.py                      # CPU, writes reports/benchmarks/attacks.md
    python bench/attacks.py --device cuda --threads 0 --out reports/benchmarks/attacks-cuda.md
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from privaudit.attacks._shadows import ShadowConfig, assign_membership, shadow_seeds, train_shadows
from privaudit.training import build_model, make_private
from privaudit.training._data import load_dataset

from _machine import cpu_model  # bench/_machine.py (scripts run as python bench/NAME.py)

MODELS = {"logreg": {}, "mlp": {"hidden": 256}}


def _population() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load_dataset("digits", test_fraction=0.5)
    x = torch.from_numpy(np.concatenate([ds.x_train, ds.x_test]))
    y = torch.from_numpy(np.concatenate([ds.y_train, ds.y_test]))
    return x, y


def _model_fn(name: str):
    def build(seed: int) -> nn.Module:
        return build_model(name, input_shape=(64,), num_classes=10, **MODELS[name])

    return build


def _sequential(cfg: ShadowConfig, name: str, x, y, membership, seeds, device) -> None:
    fn = _model_fn(name)
    for k, seed in enumerate(seeds):
        torch.manual_seed(seed)
        model = fn(seed).to(device)
        rows = np.flatnonzero(membership[k])
        trainer = make_private(
            module=model, optimizer=torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum),
            data=(x[rows], y[rows]), loss_fn=nn.CrossEntropyLoss(), epochs=cfg.epochs,
            expected_batch_size=min(cfg.batch_size, len(rows)), max_grad_norm=None if cfg.no_dp else cfg.max_grad_norm,
            noise_multiplier=cfg.noise_multiplier, seed=seed, no_dp=cfg.no_dp, device=device)
        trainer.run()
        trainer.close()


def _vectorised(cfg: ShadowConfig, name: str, x, y, membership, seeds, device) -> None:
    train_shadows(model_fn=_model_fn(name), inputs=x, targets=y, membership=membership, seeds=seeds, config=cfg,
                  device=device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, repeats: int, device: str) -> float:
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best


def _machine(device: str, threads: int) -> list[str]:
    cpu = cpu_model(platform.processor() or platform.machine())
    try:
        load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        load = "n/a"
    lines = [f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch threads: {threads or torch.get_num_threads()}",
             f"- load average (1/5/15 min) when the run ended: {load} (the machine is shared; timings are the "
             "best of the repeats)",
             f"- Python {platform.python_version()}, torch {torch.__version__}, device {device}"]
    if device.startswith("cuda"):
        lines.append(f"- GPU: {torch.cuda.get_device_name(device)}")
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=False).stdout.strip()
        lines.append(f"- privaudit commit: {commit or 'n/a'} (plus uncommitted work)")
    except OSError:
        pass
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: leave torch's default)")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--seq64-epochs", type=float, default=2.0, help="epochs of the sequential K=64 runs")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--out", default="reports/benchmarks/attacks.md")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    x, y = _population()
    rows = []
    for model in args.models:
        for dp in (False, True):
            for k in args.ks:
                membership = assign_membership(num_models=k, num_examples=len(y), seed=0)
                seeds = shadow_seeds(num_models=k, seed=0)
                common = dict(batch_size=args.batch_size, lr=0.1 if not dp else 2.0, momentum=0.9, no_dp=not dp,
                              max_grad_norm=0.1 if dp else None, noise_multiplier=1.0 if dp else None)
                seq_epochs = args.seq64_epochs if k >= 64 else args.epochs
                warm = ShadowConfig(epochs=0.5, **common)
                _vectorised(warm, model, x, y, membership[:2], seeds[:2], args.device)
                _sequential(warm, model, x, y, membership[:1], seeds[:1], args.device)
                vec = seq = float("inf")
                for _ in range(args.repeats):  # alternated, so that both see the same machine load
                    vec = min(vec, _time(lambda: _vectorised(ShadowConfig(epochs=args.epochs, **common), model, x, y,
                                                             membership, seeds, args.device), 1, args.device))
                    seq = min(seq, _time(lambda: _sequential(ShadowConfig(epochs=seq_epochs, **common), model, x, y,
                                                             membership, seeds, args.device), 1, args.device))
                vec, seq = vec / args.epochs, seq / seq_epochs
                rows.append((model, "DP-SGD" if dp else "no DP", k, args.epochs, seq_epochs, seq, vec))
                print(f"{model:7s} {'dp' if dp else 'nodp':5s} K={k:3d}  sequential {seq:8.3f} s/epoch  "
                      f"vectorised {vec:8.3f} s/epoch  speedup {seq / vec:5.2f}x", flush=True)
    lines = ["# Shadow-model training: vectorised vs sequential", "",
             "Generated by `python bench/attacks.py " + " ".join(sys.argv[1:]) + "`.", "",
             "K models of one architecture on the digits population (1,797 examples; each model trains on its own",
             "random half, ~898 examples), SGD with momentum 0.9, expected batch "
             f"{args.batch_size}. DP-SGD: sigma = 1, C = 0.1, Poisson",
             "sampling, flat clipping (the vectorised path uses ghost norms for these all-Linear models). Sequential =",
             "`make_private(...).run()` per model (the engine); vectorised = `train_shadows` (one vmap over models).",
             "Both produce the same parameters (tests/attacks/test_shadows.py). Time = seconds per epoch of all K",
             f"models, best of {args.repeats} alternated runs after a warm-up; speedup = sequential / vectorised.", "",
             "| model | training | K | epochs timed (vectorised / sequential) | sequential s/epoch | "
             "vectorised s/epoch | speedup |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for model, mode, k, ve, se, seq, vec in rows:
        lines.append(f"| {model} | {mode} | {k} | {ve:g} / {se:g} | {seq:.3f} | {vec:.3f} | {seq / vec:.2f}x |")
    lines += ["", "Machine:", "", *_machine(args.device, args.threads), ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
