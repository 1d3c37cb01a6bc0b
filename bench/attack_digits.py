"""Membership inference on digits, end to end: `privaudit train` runs attacked by `run_attack`.

1. Non-private targets with the default recipe (`privaudit train --no-dp`:
   MLP 64-256-10 tanh, Adam lr 0.02, expected batch N/6, 40 epochs) on a
   50/50 split of digits
   (`test_fraction=0.5`: 898 members, 899 non-members), one per target seed
   (seed = training seed = split seed), each attacked with K shadow models
   (LOSS, LiRA online/offline, RMIA online/offline). Scores are also pooled
   over the targets (as the LiRA paper pools its target models), which gives
   enough non-members to report TPR at 1% FPR (>= 10 false positives).
2. A DP-SGD target at epsilon = 1 (the default digits recipe), attacked the
   same way: its empirical epsilon lower bounds must never exceed 1.

Checks (from the issue): LiRA online AUC >= 0.67 and TPR@1%FPR >= 7%; LiRA
offline AUC >= 0.62; LOSS AUC in [0.53, 0.65]; LiRA online TPR@1% >= 5x
LOSS's; RMIA online at least as strong as LOSS (AUC and TPR@1%); every
epsilon lower bound of the epsilon=1 model <= 1. Each is reported as PASS or
MISS with the measured value; nothing is tuned on the attack results beyond
the training settings recorded in the report.

    python bench/attack_digits.py                    # writes reports/attacks_digits.md

The report's second section attacks "overfit" non-private targets trained with `--overfit-target FLAGS`
(default OVERFIT_FLAGS: MLP 64-4096-10 ReLU, Adam lr 0.02, batch N/6, 800 epochs, the top rung of a
pre-registered capacity ladder, see the report); `--overfit-target ""` skips it. `--sweep FLAGS` runs the
cheaper leave-one-out protocol for one training configuration and only prints.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from privaudit.attacks import AttackOptions, attack_metrics, run_attack
from privaudit.training._job import TrainSettings, train_job

ATTACKS = ("loss", "lira_online", "lira_offline", "rmia_online", "rmia_offline")
FPRS = (0.001, 0.01, 0.1)
#: Training flags of the "overfit" non-private targets (second report section): the largest network trained
#: longest on the capacity ladder (ReLU, width 1024/2048/4096 x 200/800 epochs, Adam lr 0.02, batch N/6), a rule
#: fixed before any rung was attacked (report, "Overfit candidates").
OVERFIT_FLAGS = "--activation relu --hidden 4096 --epochs 800"
#: Everything from this line on in an existing report is kept when the report is rewritten.
_KEEP = "<!-- kept: sweep results (python bench/attack_digits.py --sweep ...) -->"


def _train(settings: TrainSettings) -> tuple[Path, float, float]:
    """Trains (or reuses a finished run); returns (run dir, test accuracy, seconds)."""
    rd = Path(settings.out) / settings.run_name()
    if (rd / "summary.json").is_file():
        import json

        summary = json.loads((rd / "summary.json").read_text())
        return rd, float(summary["test_accuracy"]), float(summary["train_seconds"])
    t0 = time.perf_counter()
    result = train_job(settings)
    return rd, result.test_accuracy, time.perf_counter() - t0


def _sweep_one(overrides: dict[str, object], k: int = 17, targets: int = 4) -> dict[str, tuple[float, float, float]]:
    """Leave-one-out over k non-private models trained side by side on random halves of digits with the
    `privaudit train` settings `overrides` (the rest: the default recipe): models 0..targets-1 are attacked in
    turn with the other k - 1 as shadows; scores pooled. {attack: (AUC, TPR@1%, TPR@0.1%)}, plus "fit":
    (mean train accuracy, mean test accuracy, seconds)."""
    from privaudit.attacks import AttackInputs, evaluate_attacks, tpr_at_fpr
    from privaudit.attacks._model_signals import stacked_model_logits
    from privaudit.attacks._shadow_run import shadow_config_for
    from privaudit.attacks._shadows import assign_membership, shadow_seeds, train_shadows
    from privaudit.training._data import load_dataset
    from privaudit.training._job import build_for

    settings = TrainSettings(data="digits", no_dp=True, test_fraction=0.5, **overrides)
    ds = load_dataset("digits", test_fraction=0.5)
    x = torch.from_numpy(np.concatenate([ds.x_train, ds.x_test]))
    y = torch.from_numpy(np.concatenate([ds.y_train, ds.y_test]))
    mem = assign_membership(num_models=k, num_examples=len(y), seed=0)
    seeds = shadow_seeds(num_models=k, seed=0)
    started = time.perf_counter()
    # Each model as a target with these settings would train (on ~half the population), as `run_attack` does.
    template, params = train_shadows(
        model_fn=lambda s: build_for(dataclasses.replace(settings, seed=int(s)), ds), inputs=x, targets=y,
        membership=mem, seeds=seeds,
        config=shadow_config_for(settings, ds.n_train))
    seconds = time.perf_counter() - started
    logits = stacked_model_logits(template, params, x)
    pred, labels = logits[:, 0].argmax(-1), y.numpy()
    fit = (float(np.mean([(pred[j][mem[j]] == labels[mem[j]]).mean() for j in range(k)])),
           float(np.mean([(pred[j][~mem[j]] == labels[~mem[j]]).mean() for j in range(k)])), seconds)
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {a: ([], []) for a in ATTACKS}
    for t in range(targets):
        others = [j for j in range(k) if j != t]
        res = evaluate_attacks(AttackInputs(target_logits=logits[t], labels=labels, membership=mem[t],
                                            shadow_logits=logits[others], shadow_membership=mem[others]),
                               delta=None)
        for n, r in res.items():
            pooled[n][0].append(r.scores)
            pooled[n][1].append(mem[t])
    out: dict[str, tuple[float, float, float]] = {"fit": fit}
    for n, (sc, me) in pooled.items():
        s_all, m_all = np.concatenate(sc), np.concatenate(me)
        out[n] = (attack_metrics(scores=s_all, membership=m_all).auc,
                  tpr_at_fpr(scores=s_all, membership=m_all, fpr=0.01),
                  tpr_at_fpr(scores=s_all, membership=m_all, fpr=0.001))
    return out


def _sweep(configs: list[str]) -> None:
    """Prints the leave-one-out results of each configuration (`privaudit train` flags)."""
    for flags in configs:
        res = _sweep_one(_target_flags(flags))
        train_acc, test_acc, seconds = res.pop("fit")
        print(f"[{flags}] train acc {train_acc:.4f} test acc {test_acc:.4f} ({seconds:.0f} s): " + "; ".join(
            f"{n} AUC {v[0]:.4f} TPR@1% {100 * v[1]:.2f}% TPR@0.1% {100 * v[2]:.2f}%" for n, v in res.items()),
            flush=True)


def _flags(overrides: dict[str, object]) -> str:
    return "".join(f"--{k.replace('_', '-')} {v:g} " if isinstance(v, float) else f"--{k.replace('_', '-')} {v} "
                   for k, v in sorted(overrides.items()))


def _recipe_text(s: TrainSettings, n_train: int) -> str:
    batch = (f"batch {s.batch_size}" if s.batch_size is not None
             else f"expected batch N/6 = {s.expected_batch_size(n_train)}")
    opt = f"Adam lr {s.lr:g}" if s.optimizer == "adam" else f"SGD lr {s.lr:g} momentum {s.momentum:g}"
    return f"{s.model.upper()} 64-{s.hidden}-10 {s.activation}, {opt}, {batch}, {s.epochs:g} epochs"


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f}%"


def _tag(overrides: dict[str, object]) -> str:
    return "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in sorted(overrides.items()))


def _target_flags(text: str) -> dict[str, object]:
    """TrainSettings overrides from `privaudit train` flags ("--optimizer sgd --lr 0.1 --batch-size 32 ...")."""
    p = argparse.ArgumentParser(prog="--overfit-target", add_help=False, exit_on_error=False)
    p.add_argument("--model", choices=["mlp"])
    p.add_argument("--hidden", type=int)
    p.add_argument("--activation", choices=["tanh", "relu", "gelu"])
    p.add_argument("--epochs", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["adam", "sgd"])
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    return {k: v for k, v in vars(p.parse_args(shlex.split(text))).items() if v is not None}


def _final_metrics(rd: Path) -> dict[str, float]:
    """The last line of the run's metrics.jsonl (train/test accuracy and loss at the end of training)."""
    import json

    lines = [ln for ln in (rd / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return json.loads(lines[-1])


def _measure(overrides: dict[str, object], args: argparse.Namespace, options: AttackOptions):
    """Trains (or reuses) one non-private target per seed with `overrides` and attacks it.
    Returns (per-seed rows, pooled metrics {attack: metrics})."""
    tag = _tag(overrides)
    per_seed = []
    pooled: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {a: ([], []) for a in ATTACKS}
    for seed in args.target_seeds:
        settings = TrainSettings(data="digits", no_dp=True, test_fraction=0.5, seed=seed, split_seed=seed,
                                 device="cpu", out=args.runs, **overrides,
                                 name=f"digits-nodp-{tag or 'recipe'}-s{seed}")
        rd, acc, train_s = _train(settings)
        t0 = time.perf_counter()
        report = run_attack(rd, shadows=args.shadows, seed=seed, fprs=FPRS, device="cpu", options=options)
        attack_s = time.perf_counter() - t0
        per_seed.append((seed, acc, train_s, attack_s, report, _final_metrics(rd)))
        for name, res in report.results.items():
            pooled[name][0].append(res.scores)
            pooled[name][1].append(report.membership)
        print(f"[{tag or 'recipe'}] seed {seed}: test acc {acc:.4f}; " + ", ".join(
            f"{n} {r.metrics.auc:.4f}" for n, r in report.results.items()), flush=True)
    pooled_metrics = {n: attack_metrics(scores=np.concatenate(s), membership=np.concatenate(m), fprs=FPRS)
                      for n, (s, m) in pooled.items()}
    return per_seed, pooled_metrics


def _checks(pm) -> list[tuple[str, bool, str]]:
    """The issue's checks on pooled non-private metrics: (name, passed, measured)."""
    tpr1 = {n: pm[n].tpr_at_fpr[0.01] for n in ATTACKS}
    return [
        ("LiRA online AUC >= 0.67", pm["lira_online"].auc >= 0.67, f"{pm['lira_online'].auc:.4f}"),
        ("LiRA online TPR@1%FPR >= 7%", tpr1["lira_online"] is not None and tpr1["lira_online"] >= 0.07,
         _pct(tpr1["lira_online"])),
        ("LiRA offline AUC >= 0.62", pm["lira_offline"].auc >= 0.62, f"{pm['lira_offline'].auc:.4f}"),
        ("LOSS AUC in [0.53, 0.65]", 0.53 <= pm["loss"].auc <= 0.65, f"{pm['loss'].auc:.4f}"),
        ("LiRA online TPR@1% >= 5x LOSS's", tpr1["lira_online"] is not None and tpr1["loss"] is not None
         and tpr1["lira_online"] >= 5 * tpr1["loss"],
         f"{_pct(tpr1['lira_online'])} vs {_pct(tpr1['loss'])}"
         + (f" ({tpr1['lira_online'] / tpr1['loss']:.1f}x)" if tpr1["loss"] else "")),
        ("RMIA online >= LOSS (AUC and TPR@1%)", pm["rmia_online"].auc >= pm["loss"].auc
         and (tpr1["rmia_online"] or 0) >= (tpr1["loss"] or 0),
         f"AUC {pm['rmia_online'].auc:.4f} vs {pm['loss'].auc:.4f}; TPR@1% {_pct(tpr1['rmia_online'])} vs "
         f"{_pct(tpr1['loss'])}"),
    ]


def _pooled_table(pm) -> list[str]:
    lines = ["| attack | AUC | TPR@0.1% FPR | TPR@1% FPR | TPR@10% FPR | advantage |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for n in ATTACKS:
        m = pm[n]
        lines.append(f"| {n} | {m.auc:.4f} | {_pct(m.tpr_at_fpr[0.001])} | {_pct(m.tpr_at_fpr[0.01])} | "
                     f"{_pct(m.tpr_at_fpr[0.1])} | {m.advantage:.4f} |")
    return lines


def _per_target_table(per_seed, with_fit: bool = False) -> list[str]:
    fit_head = "train accuracy | train loss | test loss | " if with_fit else ""
    lines = ["| seed | " + fit_head + "test accuracy | train s | attack s (shadows trained) | " + " | ".join(
                 f"{n} AUC" for n in ATTACKS) + " |",
             "| ---: | " + ("---: | ---: | ---: | " if with_fit else "") + "---: | ---: | ---: | "
             + " | ".join("---:" for _ in ATTACKS) + " |"]
    for seed, acc, train_s, attack_s, report, fin in per_seed:
        fit = (f"{fin['train_accuracy']:.4f} | {fin['train_loss']:.5f} | {fin['test_loss']:.4f} | "
               if with_fit else "")
        lines.append(f"| {seed} | {fit}{acc:.4f} | {train_s:.0f} | {attack_s:.0f} "
                     f"({report.shadows['training_seconds']:.0f} s shadows) | "
                     + " | ".join(f"{report.results[n].metrics.auc:.4f}" for n in ATTACKS) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="/tmp/privaudit-attack-digits", help="where the runs are written")
    parser.add_argument("--target-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--shadows", type=int, default=16)
    parser.add_argument("--augment", default="auto", choices=["auto", "none"],
                        help="query augmentation of `privaudit attack` (auto = none for digits' flat features)")
    parser.add_argument("--epochs", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's N/6")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--optimizer", default=None, choices=["adam", "sgd"], help="default: the recipe's")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD only")
    parser.add_argument("--overfit-target", default=OVERFIT_FLAGS, metavar="FLAGS",
                        help="also measure non-private targets trained with these `privaudit train` flags "
                             "(--model/--hidden/--activation/--epochs/--batch-size/--optimizer/--lr/--momentum) "
                             "on the same seeds, and report them in a second section with their own checks; "
                             f"\"\" to skip (default: \"{OVERFIT_FLAGS}\", chosen as in the report's "
                             "\"Overfit candidates\" section)")
    parser.add_argument("--dp-epsilon", type=float, default=1.0)
    parser.add_argument("--skip-dp", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--report", default="reports/attacks_digits.md")
    parser.add_argument("--sweep", action="append", metavar="FLAGS",
                        help="only run the leave-one-out protocol (17 models side by side, models 0-3 attacked in "
                             "turn with the other 16 as shadows, pooled) for non-private models trained with these "
                             "`privaudit train` flags (as --overfit-target; \"\" = the default recipe); "
                             "repeatable; prints, writes no report")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.sweep is not None:
        _sweep(args.sweep)
        return
    started = time.perf_counter()

    overrides = {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("lr", args.lr),
                                   ("optimizer", args.optimizer)) if v is not None}
    if overrides.get("optimizer", TrainSettings(no_dp=True).optimizer) == "sgd":
        overrides["momentum"] = args.momentum
    options = AttackOptions(augment=args.augment)
    per_seed, pooled_metrics = _measure(overrides, args, options)
    overfit = None
    if args.overfit_target:
        of_overrides = _target_flags(args.overfit_target)
        overfit = (of_overrides, *_measure(of_overrides, args, options))

    dp_report = dp_acc = dp_eps = None
    if not args.skip_dp:
        dp_settings = TrainSettings(data="digits", target_epsilon=args.dp_epsilon, test_fraction=0.5,
                                    seed=0, split_seed=0, device="cpu", out=args.runs,
                                    name=f"digits-recipe-eps{args.dp_epsilon:g}-s0")
        rd, dp_acc, _ = _train(dp_settings)
        import json

        dp_eps = json.loads((rd / "summary.json").read_text())["epsilon"]
        dp_report = run_attack(rd, shadows=args.shadows, seed=0, fprs=FPRS, device="cpu", options=options)
        print("DP: " + ", ".join(f"{n} auc {r.metrics.auc:.4f} eps_lb {r.metrics.epsilon.epsilon:.3f}"
                                 for n, r in dp_report.results.items()), flush=True)

    # -- checks ------------------------------------------------------------------------
    pm = pooled_metrics
    checks = _checks(pm)
    if dp_report is not None:
        worst = max(r.metrics.epsilon.epsilon for r in dp_report.results.values())
        checks.append((f"every eps lower bound of the eps={args.dp_epsilon:g} model <= {args.dp_epsilon:g}",
                       worst <= args.dp_epsilon, f"max {worst:.3f}"))

    # -- report ------------------------------------------------------------------------
    first = per_seed[0][4]
    n_mem, n_non = int(first.membership.sum()), int((~first.membership).sum())
    lines = ["# Membership-inference attacks on digits", "",
             f"Generated by `python bench/attack_digits.py {shlex.join(sys.argv[1:])}` "
             f"({(time.perf_counter() - started) / 60:.1f} min on {os.cpu_count()} shared CPU cores, "
             f"torch threads {args.threads or torch.get_num_threads()}, torch {torch.__version__}, "
             f"Python {platform.python_version()}).", "",
             "## Setup", "",
             "- Data: sklearn digits (1,797 images, 64 features in [0, 1]), stratified 50/50 split "
             f"(`test_fraction=0.5`): {n_mem} members, {n_non} non-members per target; split seed = target seed.",
             f"- Non-private targets: `privaudit train --data digits --no-dp {_flags(overrides)}--test-fraction 0.5 "
             f"--seed S --split-seed S`: {_recipe_text(TrainSettings(no_dp=True, **overrides), n_mem)}, "
             f"no weight decay, shuffled mini-batches; target seeds {args.target_seeds}.",
             f"- Attacks: `privaudit attack RUN --shadows {args.shadows} --seed S`: {args.shadows} shadow models on "
             "random halves of the whole population (each example IN for exactly "
             f"{args.shadows // 2}), trained with the target's settings; LiRA with one variance per side, pooled "
             "over examples (within-example deviations) "
             f"(K = {args.shadows} < 64); RMIA with gamma = 1, a = 0.3 (offline), every population point as z "
             f"(chosen blind to membership); query augmentation: {args.augment} (digits' 64 flat features: none).",
             "- TPR at an FPR is reported only with >= 10 false positives behind it: per target (899 "
             "non-members) only TPR@10% qualifies; pooled over the targets "
             f"({sum(int((~r.membership).sum()) for *_, r, _f in per_seed)} non-members) TPR@1% does too. "
             "TPR@0.1% would need 10,000 non-members.", "",
             "## Non-private targets, pooled over target seeds", "",
             ]
    lines += _pooled_table(pm)
    lines += ["", "## Per target", ""] + _per_target_table(per_seed)
    if dp_report is not None:
        lines += ["", f"## DP-SGD target at epsilon = {args.dp_epsilon:g}", "",
                  f"`privaudit train --data digits --target-epsilon {args.dp_epsilon:g} --test-fraction "
                  f"0.5` (the default recipe: {_recipe_text(dp_settings, n_mem)}, C = {dp_settings.max_grad_norm:g}, "
                  f"PLD accountant, delta {dp_settings.delta:g}): accounted epsilon {dp_eps:.4f}, "
                  f"test accuracy {dp_acc:.4f}; "
                  f"{args.shadows} DP shadow models with the same sigma and C.", "",
                  "| attack | AUC | TPR@10% FPR | advantage | eps lower bound (alpha 0.05, delta 1e-5) |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for n, r in dp_report.results.items():
            m = r.metrics
            lines.append(f"| {n} | {m.auc:.4f} | {_pct(m.tpr_at_fpr[0.1])} | {m.advantage:.4f} | "
                         f"{m.epsilon.epsilon:.3f} |")
        ties = int(np.unique(dp_report.results["loss"].scores, return_counts=True)[1].max())
        if ties > 0.01 * dp_report.membership.shape[0]:
            lines += ["", f"The largest group of tied LOSS scores on this model holds {ties} of "
                          f"{dp_report.membership.shape[0]} examples (identical logits, e.g. from inactive ReLUs); "
                          "a threshold takes a tied group whole or not at all, which is why LOSS can show a TPR of 0 "
                          "at 10% FPR."]
    lines += ["", "## Checks", "", "| check | result | measured |", "| --- | --- | --- |"]
    for name, ok, value in checks:
        lines.append(f"| {name} | {'PASS' if ok else 'MISS'} | {value} |")
    if overfit is not None:
        of_overrides, of_seed, of_pm = overfit
        lines += ["", "## Overfit non-private targets", "",
                  f"Targets trained with `privaudit train --data digits --no-dp {_flags(of_overrides)}"
                  f"--test-fraction 0.5 --seed S --split-seed S` "
                  f"(`--overfit-target \"{args.overfit_target}\"`): "
                  f"{_recipe_text(TrainSettings(no_dp=True, **of_overrides), n_mem)}, no weight decay; "
                  f"target seeds {args.target_seeds}, attacked exactly as above ({args.shadows} shadow models "
                  "with the target's settings). How this configuration was chosen: see "
                  "\"Overfit candidates\" below.", "",
                  "### Pooled over target seeds", ""]
        lines += _pooled_table(of_pm)
        lines += ["", "### Per target (train/test loss and accuracy at the end of training, metrics.jsonl)", ""]
        lines += _per_target_table(of_seed, with_fit=True)
        lines += ["", "### Checks (overfit targets)", "", "| check | result | measured |", "| --- | --- | --- |"]
        for name, ok, value in _checks(of_pm):
            lines.append(f"| {name} | {'PASS' if ok else 'MISS'} | {value} |")
    lines.append("")
    out = Path(args.report)
    out.parent.mkdir(parents=True, exist_ok=True)
    kept = ""
    if out.is_file() and _KEEP in out.read_text():  # the hand-kept sweep section survives regeneration
        kept = out.read_text()[out.read_text().index(_KEEP):]
    out.write_text("\n".join(lines) + ("\n" + kept if kept else ""))
    for name, ok, value in checks:
        print(f"{'PASS' if ok else 'MISS'}  {name}: {value}")
    if overfit is not None:
        for name, ok, value in _checks(overfit[2]):
            print(f"{'PASS' if ok else 'MISS'}  [overfit] {name}: {value}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
