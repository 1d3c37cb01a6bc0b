"""Utility of DEFAULT_RECIPE on scikit-learn digits, and how the recipe was chosen.

Protocol (Papernot & Steinke 2022, arXiv 2110.03620v2: choosing hyperparameters
by test accuracy leaks privacy and flatters the result):

* digits, features / 16, stratified 80/20 train/test split with seed 0
  (1,437 / 360), delta = 1e-5, Poisson sampling, PLD accounting;
* `--select 1`, then `--select 2`: a small grid is scored on a *validation* split (stratified 80/20
  of the training part, seed 1; 1,149 / 288) and never on the test split; the
  score of a candidate is min(acc(eps=1)/0.88, acc(eps=8)/0.94, acc(no DP)/0.96)
  averaged over 3 seeds, i.e. its worst margin against the three targets;
* default: the chosen recipe (privaudit.training.DEFAULT_RECIPE), trained on the
  whole training split, evaluated once on the test split, 3 seeds, mean +- std.
  The same recipe runs at every epsilon; only sigma changes.

    python bench/utility.py            # writes reports/utility.md
    python bench/utility.py --select 1  # the coarse validation grid (prints, slow)
    python bench/utility.py --select 2  # its refinement
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from privaudit.training import DEFAULT_RECIPE, Recipe

SEEDS = (0, 1, 2)
TARGETS = {1.0: 0.88, 8.0: 0.94, None: 0.96}


def digits_splits() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    x_fit, x_val, y_fit, y_val = train_test_split(x_tr, y_tr, test_size=0.2, stratify=y_tr, random_state=1)

    def t(a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.tensor(a, dtype=torch.float32), torch.tensor(b, dtype=torch.long)

    return {"train": t(x_tr, y_tr), "test": t(x_te, y_te), "fit": t(x_fit, y_fit), "val": t(x_val, y_val)}


def accuracy(recipe: Recipe, train: tuple, test: tuple, *, epsilon: float | None, seed: int) -> float:
    trainer = recipe.make_trainer(data=train, num_classes=10, target_epsilon=epsilon, no_dp=epsilon is None,
                                  seed=seed)
    trainer.run()
    model = trainer.module.eval()
    with torch.no_grad():
        return float((model(test[0]).argmax(1) == test[1]).float().mean())


def _grid(stage: int) -> list[Recipe]:
    """Stage 1: coarse grid around the REFERENCES anchors; stage 2: refinement around stage 1's best."""
    base = Recipe(model="mlp", model_kwargs=(("hidden", 256), ("activation", "tanh")), epochs=40,
                  sampling_rate=1 / 6, max_grad_norm=1.0, optimizer="adam", lr=0.01)
    grid = []
    if stage == 2:
        for lr, q, epochs, c in itertools.product([0.02, 0.03, 0.05], [1 / 10, 1 / 6], [40, 80], [0.5, 1.0]):
            grid.append(dataclasses.replace(base, lr=lr, sampling_rate=q, epochs=epochs, max_grad_norm=c))
        return grid
    for model_kwargs, lr, c in itertools.product(
        [(("hidden", 256), ("activation", "tanh")), (("hidden", 256), ("activation", "relu"))],
        [0.005, 0.01, 0.02], [0.5, 1.0, 2.0],
    ):
        grid.append(dataclasses.replace(base, model_kwargs=model_kwargs, lr=lr, max_grad_norm=c))
    for epochs, q in itertools.product([20, 40, 80], [1 / 10, 1 / 6, 1 / 3]):
        grid.append(dataclasses.replace(base, epochs=epochs, sampling_rate=q))
    grid.append(dataclasses.replace(base, model="logreg", model_kwargs=()))
    return grid


def select(splits: dict, stage: int) -> None:
    grid = _grid(stage)
    scored = []
    for recipe in grid:
        t0 = time.time()
        accs = {e: statistics.mean(accuracy(recipe, splits["fit"], splits["val"], epsilon=e, seed=s)
                                   for s in SEEDS) for e in TARGETS}
        score = min(accs[e] / TARGETS[e] for e in TARGETS)
        scored.append((score, recipe, accs))
        print(json.dumps({"score": round(score, 4), "val_acc": {str(k): round(v, 4) for k, v in accs.items()},
                          "recipe": recipe.to_dict(), "s": round(time.time() - t0, 1)}), flush=True)
    best = max(scored, key=lambda r: r[0])
    print("best:", json.dumps(best[1].to_dict()))


def _selection_table(logs: list[str]) -> list[str]:
    """The five best candidates of each `--select` stage, from its printed JSON lines."""
    lines: list[str] = []
    for stage, path in enumerate(logs, 1):
        rows = [json.loads(l) for l in Path(path).read_text().splitlines() if l.startswith("{")]
        rows.sort(key=lambda r: -r["score"])
        lines += ["", f"Selection stage {stage} ({len(rows)} candidates, validation accuracy, mean of 3 seeds), "
                  "best five:", "", "| score | eps=1 | eps=8 | no DP | model | epochs | q | C | lr |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in rows[:5]:
            rc, acc = r["recipe"], r["val_acc"]
            act = rc["model_kwargs"].get("activation", "")
            lines.append(f"| {r['score']:.3f} | {100 * acc['1.0']:.1f} | {100 * acc['8.0']:.1f} | "
                         f"{100 * acc['None']:.1f} | {rc['model']} {act} | {rc['epochs']:g} | "
                         f"{rc['sampling_rate']:.3f} | {rc['max_grad_norm']:g} | {rc['lr']:g} |")
    return lines


def report(splits: dict, out: Path, epsilons: list[float | None], selection_logs: list[str]) -> None:
    rows = []
    for eps in epsilons:
        accs = [accuracy(DEFAULT_RECIPE, splits["train"], splits["test"], epsilon=eps, seed=s) for s in SEEDS]
        rows.append((eps, accs))
        print(eps, accs, flush=True)
    n = splits["train"][0].shape[0]
    r = DEFAULT_RECIPE
    lines = [
        "# Utility of `DEFAULT_RECIPE` on digits",
        "",
        "scikit-learn `load_digits`, features / 16, stratified 80/20 split (seed 0): "
        f"{n} training / {splits['test'][0].shape[0]} test examples; delta = 1e-5; Poisson sampling; "
        "PLD accountant; test accuracy, mean +- std over seeds " + ", ".join(map(str, SEEDS)) + ".",
        "",
        f"Recipe (the same at every epsilon; only sigma changes): `{json.dumps(r.to_dict())}`, i.e. "
        f"expected batch {r.expected_batch_size(n)} (q = {r.sampling_rate:.4f}), "
        f"{r.epochs:g} epochs, C = {r.max_grad_norm:g}, {r.optimizer} lr {r.lr:g}.",
        "",
        "| epsilon | target | test accuracy (mean +- std) | per seed |",
        "|---|---|---|---|",
    ]
    for eps, accs in rows:
        tgt = TARGETS.get(eps)
        label = "non-private (no_dp)" if eps is None else f"{eps:g}"
        lines.append(f"| {label} | {'' if tgt is None else f'>= {100 * tgt:.0f}%'} | "
                     f"{100 * statistics.mean(accs):.1f} +- {100 * statistics.stdev(accs):.1f}% | "
                     + ", ".join(f"{100 * a:.1f}" for a in accs) + " |")
    lines += [
        "",
        "How the recipe was chosen: `python bench/utility.py --select 1` (28 candidates around the "
        "REFERENCES anchors: activation, Adam learning rate, C, epochs, batch fraction, logistic regression) "
        "and `--select 2` (24 refinements: learning rate, batch fraction, epochs, C) score each candidate on a "
        "validation split of the training part (1,149 / 288 examples), never on the test split (exploratory "
        "one-seed sweeps on the same validation split, 135 SGD-with-momentum and 108 Adam configurations, "
        "came first and pointed to Adam and tanh); the score is "
        "the worst of acc/target over eps = 1, eps = 8 and non-private, mean of 3 seeds. The test split was "
        "used for this table only (and for one early smoke run of the engine with SGD, before the search, "
        "which did not enter the choice). Choosing hyperparameters on the private data itself costs privacy "
        "that this table does not account for (Papernot & Steinke 2022, arXiv 2110.03620v2); the grid was "
        "small and the recipe is fixed across epsilons, but the numbers remain somewhat optimistic.",
        "",
        "For comparison, REFERENCES.md's Opacus anchors (best of a sweep *per epsilon*, MLP 64-256-10): "
        "89.2 +- 1.1% at eps = 1, 95.9 +- 1.0% at eps = 8, 96.9 +- 0.6% without DP.",
        *_selection_table(selection_logs),
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--select", type=int, choices=[1, 2], help="run selection grid stage 1 or 2")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="reports/utility.md")
    p.add_argument("--selection-logs", nargs="*", default=[],
                   help="stdout of --select 1 and --select 2, summarised in the report")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    splits = digits_splits()
    if args.select:
        select(splits, args.select)
    else:
        report(splits, Path(args.out), [0.5, 1.0, 2.0, 4.0, 8.0, None], args.selection_logs)


if __name__ == "__main__":
    main()
