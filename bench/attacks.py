"""Shadow-model training: K models side by side (vectorised) vs a loop of K engine trainings.

Both train the same K models on the same digits population (1,797 examples,
each model on its own random half, as `run_attack` does) with the default
recipe's settings (`DEFAULT_RECIPE`: Adam, expected batch N_k / 6, MLP 256 tanh;
DP-SGD with its C and sigma = 1): same model, epochs, batch size, optimiser and
seeds. The sequential baseline is `make_private(...).run()` once per model, the
engine `privaudit train` uses; the vectorised one is `train_shadows`, timed with
its default backend ("auto": batched matrix products for these plain MLPs) and
with the generic `torch.func.vmap` backend. All give the same parameters (see
tests/attacks/test_shadows.py); only the wall time differs.

Reported: seconds per epoch of all K models (wall time / epochs), the best of
`--repeats` timed runs after one untimed warm-up; the speedup is sequential /
vectorised. Every arm trains the same number of epochs unless `--seq64-epochs`
shortens the sequential K=64 runs; time per epoch is what is compared.

    python bench/attacks.py                      # CPU, writes reports/benchmarks/attacks.md
    python bench/attacks.py --device cuda --threads 0 --out reports/benchmarks/attacks-cuda.md
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
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
from privaudit.training._recipe import DEFAULT_RECIPE

from _machine import cpu_model  # bench/_machine.py (scripts run as python bench/NAME.py)

MODELS = {"logreg": {}, "mlp": dict(DEFAULT_RECIPE.model_kwargs)}
#: Everything from this line on in an existing report is kept when the report is rewritten.
_KEEP = "<!-- kept: notes written by hand (bench/attacks.py keeps everything from this line on) -->"


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
        optimizer = (torch.optim.Adam(model.parameters(), lr=cfg.lr) if cfg.optimizer == "adam"
                     else torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum))
        batch = (max(1, min(len(rows), round(cfg.sampling_rate * len(rows)))) if cfg.sampling_rate is not None
                 else min(cfg.batch_size, len(rows)))  # as train_shadows: the run's rate times N_k
        trainer = make_private(
            module=model, optimizer=optimizer,
            data=(x[rows], y[rows]), loss_fn=nn.CrossEntropyLoss(), epochs=cfg.epochs,
            expected_batch_size=batch, max_grad_norm=None if cfg.no_dp else cfg.max_grad_norm,
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
    lines = [f"- CPU: {cpu}, {os.cpu_count()} logical cores; torch's default threads: {threads} (the table's "
             "'torch threads' column gives each row's setting)",
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
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 0],
                        help="torch CPU threads, one table block per value (0: torch's default, all cores)")
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--seq64-epochs", type=float, default=None,
                        help="epochs of the sequential K=64 runs (default: --epochs)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ks", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--no-vmap", action="store_true", help="skip the vmap-backend arm")
    parser.add_argument("--out", default="reports/benchmarks/attacks.md")
    args = parser.parse_args()
    default_threads = torch.get_num_threads()
    x, y = _population()
    r = DEFAULT_RECIPE
    backends = ["auto"] + ([] if args.no_vmap else ["vmap"])
    rows = []
    started = time.perf_counter()
    for threads, model, dp, k in itertools.product(args.threads, args.models, (False, True), args.ks):
        torch.set_num_threads(threads or default_threads)
        membership = assign_membership(num_models=k, num_examples=len(y), seed=0)
        seeds = shadow_seeds(num_models=k, seed=0)
        common = dict(batch_size=1, sampling_rate=r.sampling_rate, optimizer=r.optimizer, lr=r.lr,
                      no_dp=not dp, max_grad_norm=r.max_grad_norm if dp else None,
                      noise_multiplier=1.0 if dp else None)
        seq_epochs = args.seq64_epochs if k >= 64 and args.seq64_epochs else args.epochs
        warm = ShadowConfig(epochs=0.5, **common)
        for b in backends:
            _vectorised(dataclasses.replace(warm, backend=b), model, x, y, membership[:2], seeds[:2],
                        args.device)
        _sequential(warm, model, x, y, membership[:1], seeds[:1], args.device)
        vec = {b: float("inf") for b in backends}
        seq = float("inf")
        for _ in range(args.repeats):  # alternated, so that every arm sees the same machine load
            for b in backends:
                cfg = ShadowConfig(epochs=args.epochs, backend=b, **common)
                vec[b] = min(vec[b], _time(lambda: _vectorised(cfg, model, x, y, membership, seeds,
                                                               args.device), 1, args.device))
            cfg = ShadowConfig(epochs=seq_epochs, **common)
            seq = min(seq, _time(lambda: _sequential(cfg, model, x, y, membership, seeds, args.device), 1,
                                 args.device))
        vec = {b: v / args.epochs for b, v in vec.items()}
        seq /= seq_epochs
        rows.append((torch.get_num_threads(), model, "DP-SGD" if dp else "no DP", k, args.epochs, seq_epochs,
                     seq, vec))
        print(f"threads {torch.get_num_threads()} {model:7s} {'dp' if dp else 'nodp':5s} K={k:3d}  "
              f"sequential {seq:8.3f} s/epoch  "
              + "  ".join(f"{b} {v:8.3f} s/epoch ({seq / v:5.2f}x)" for b, v in vec.items()), flush=True)
    minutes = (time.perf_counter() - started) / 60
    hidden = dict(r.model_kwargs)
    lines = ["# Shadow-model training: vectorised vs sequential", "",
             "Generated by `python bench/attacks.py " + " ".join(sys.argv[1:]) + f"` ({minutes:.1f} min).", "",
             "K models of one architecture on the digits population (1,797 examples; each model trains on its own",
             "random half, ~898 examples) with the default recipe's optimiser and batch rule: "
             f"{r.optimizer.capitalize()} lr {r.lr:g}, expected batch",
             f"N_k / {1 / r.sampling_rate:g} (~150). mlp = 64-{hidden['hidden']}-10 {hidden['activation']}; "
             "logreg = 64-10. DP-SGD: sigma = 1, "
             f"C = {r.max_grad_norm:g}, Poisson sampling, flat clipping (ghost norms). "
             "Sequential = `make_private(...).run()` per",
             "model (the engine); vectorised = `train_shadows`, with its default backend (auto = batched matrix "
             "products and a hand-written backward pass for these plain MLPs) and with the generic "
             "`torch.func.vmap` backend (the path every model took before; it shares this version's in-place "
             "optimiser and noise code).",
             "All produce the same parameters (tests/attacks/test_shadows.py). Time = seconds per epoch of all K",
             f"models, best of {args.repeats} alternated runs after a warm-up; speedup = sequential / vectorised.", "",
             "| torch threads | model | training | K | epochs timed (vectorised / sequential) | sequential s/epoch | "
             + " | ".join(f"vectorised {b} s/epoch | speedup {b}" for b in backends) + " |",
             "| ---: | --- | --- | ---: | ---: | ---: | " + " | ".join("---: | ---:" for _ in backends) + " |"]
    for threads, model, mode, k, ve, se, seq, vec in rows:
        lines.append(f"| {threads} | {model} | {mode} | {k} | {ve:g} / {se:g} | {seq:.3f} | "
                     + " | ".join(f"{v:.3f} | {seq / v:.2f}x" for v in vec.values()) + " |")
    lines += ["", "Machine:", "", *_machine(args.device, default_threads), ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = ""
    if out.is_file() and _KEEP in out.read_text():  # hand-written notes survive regeneration
        kept = out.read_text()[out.read_text().index(_KEEP):]
    out.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
