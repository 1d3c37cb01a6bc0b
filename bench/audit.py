"""Privacy audits measured: soundness, power, tightness, and the CLI's wall time; writes reports/audit.md.

    python bench/audit.py                 # everything (10 to 50 minutes on 2 shared CPU cores)
    python bench/audit.py --only power    # one section: soundness | power | blackbox | tightness | ideal | cli
    python bench/audit.py --only blackbox # the black-box rows with outlier canaries (5 to 15 minutes)

`--only` keeps the other sections' rows from the raw file ($PRIVAUDIT_BENCH_RAW)
and regenerates reports/audit.md from all of them.

Every audit uses the default dataset (digits) and the built-in trainers' default
recipe (MLP 64-256-10 tanh, 19,210 parameters, Adam 0.01, clipping norm 1,
10 epochs at Poisson rate 0.1 = 100 steps) unless a row says otherwise. Each
row is one audit with its own seed; alpha = 0.05, delta = 1e-5.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REPORT = ROOT / "reports" / "audit.md"
RAW = Path(os.environ.get("PRIVAUDIT_BENCH_RAW", "/tmp/privaudit_bench_audit.json"))
DELTA = 1e-5


def _row(r, extra: str = "") -> dict:
    return {"trainer": r.trainer, "threat": r.threat, "canaries": r.canaries, "eps_target": r.epsilon_target,
            "eps_claimed": r.epsilon_claimed, "lower": r.epsilon_lower, "bound_stat": r.statistic,
            "guesses": getattr(r.bound, "guesses", None), "correct": getattr(r.bound, "correct", None),
            "gdp": None if r.gdp is None else r.gdp.epsilon, "verdict": r.verdict, "seconds": r.seconds,
            "steps": r.trainer_info.get("steps"), "extra": extra, "canary_kind": r.canary_info.get("kind")}


def _audit(trainer, *, epsilon, canaries, threat, seed, options=None, extra="", **kw):
    from privaudit.audit import audit

    r = audit(trainer, epsilon=epsilon, delta=DELTA, canaries=canaries, threat=threat, seed=seed,
              options=options, **kw)
    row = _row(r, extra)
    print(json.dumps(row), flush=True)
    return row


def soundness() -> list[dict]:
    rows = []
    for trainer in ("privaudit", "opacus"):
        for eps in (1.0, 2.0, 4.0, 8.0):
            for threat in ("whitebox", "blackbox"):
                kind = {"canary_kind": "mislabeled"} if threat == "blackbox" else {}
                rows.append(_audit(trainer, epsilon=eps, canaries=1000, threat=threat, seed=int(eps) + 10, **kind))
    return rows


def power() -> list[dict]:
    from privaudit.audit import TrainingOptions

    rows = []
    cases = [("broken-no-clipping", None, ""), ("broken-noise-batch", None, ""), ("broken-no-noise", None, ""),
             ("broken-clamp", None, ""), ("broken-noise-sigma", None, "C = 0.5"),
             ("broken-noise-sigma", TrainingOptions(max_grad_norm=4.0), "C = 4"),
             ("broken-shuffle", None, ""), ("reference", None, "control")]
    for trainer, options, extra in cases:
        for threat in ("whitebox", "blackbox"):
            kind = {"canary_kind": "mislabeled"} if threat == "blackbox" else {}
            rows.append(_audit(trainer, epsilon=2.0, canaries=1000, threat=threat, seed=1, options=options,
                               extra=extra, **kind))
    rows.append(_audit("broken-no-clipping", epsilon=2.0, canaries=1000, threat="blackbox", seed=1,
                       canary_kind="random", extra="random-input canaries"))
    rows.append(_audit("broken-clamp", epsilon=2.0, canaries=1000, threat="whitebox", seed=1,
                       canary_support=1, extra="Dirac canaries (support 1)"))
    for eps in (1.0, 4.0, 8.0):  # shuffling is said to matter most when sigma is small
        rows.append(_audit("broken-shuffle", epsilon=eps, canaries=1000, threat="whitebox", seed=2,
                           extra="shuffle vs claimed Poisson"))
        rows.append(_audit("reference", epsilon=eps, canaries=1000, threat="whitebox", seed=2,
                           extra="same recipe, Poisson"))
    return rows


def blackbox() -> list[dict]:
    """Black-box audits with the default canaries (outliers, scored against their ring of queries).

    Power at claim 2 (the broken trainers and the correct reference loop as a control), then
    soundness of privaudit and Opacus at epsilon 1, 2, 4, 8; 1,000 canaries each.
    """
    from privaudit.audit import TrainingOptions

    rows = []
    cases = [("broken-no-clipping", None, "power"), ("broken-noise-batch", None, "power"),
             ("broken-clamp", None, "power"), ("broken-noise-sigma", None, "power, C = 0.5"),
             ("broken-noise-sigma", TrainingOptions(max_grad_norm=4.0), "power, C = 4"),
             ("broken-shuffle", None, "power"), ("reference", None, "control")]
    for trainer, options, extra in cases:
        rows.append(_audit(trainer, epsilon=2.0, canaries=1000, threat="blackbox", seed=1, options=options,
                           extra=extra))
    for trainer in ("privaudit", "opacus"):
        for eps in (1.0, 2.0, 4.0, 8.0):
            rows.append(_audit(trainer, epsilon=eps, canaries=1000, threat="blackbox", seed=int(eps) + 10,
                               extra="soundness"))
    return rows


def tightness() -> list[dict]:
    from privaudit.audit import TrainingOptions

    rows = []
    for hidden in (256, 512):  # 19,210 and 38,410 parameters: Dirac canaries, then blocks of 3
        full = TrainingOptions(sampling_rate=1.0, epochs=100.0, hidden=hidden)  # full-batch DP-GD, 100 steps
        poisson = TrainingOptions(sampling_rate=0.1, epochs=10.0, hidden=hidden)  # 100 steps
        for seed in (0, 1, 2):
            rows.append(_audit("privaudit", epsilon=8.0, canaries=10_000, threat="whitebox", seed=seed,
                               options=full, extra=f"full-batch DP-GD, T = 100, hidden {hidden}, seed {seed}"))
            rows.append(_audit("privaudit", epsilon=8.0, canaries=10_000, threat="whitebox", seed=seed,
                               options=poisson, extra=f"Poisson q = 0.1, T = 100, hidden {hidden}, seed {seed}"))
    return rows


def ideal() -> list[dict]:
    """The same bound on an exact Gaussian mechanism without any data: the ceiling for the rows above."""
    from privaudit.accounting import calibrate_noise_multiplier
    from privaudit.audit import gdp_fit, one_run_two_sided
    from privaudit.audit._whitebox import _log_lr

    rows = []
    rng = np.random.default_rng(0)
    for q, steps in ((1.0, 100), (0.1, 100)):
        sigma = calibrate_noise_multiplier(target_epsilon=8.0, target_delta=DELTA, sampling_rate=q, steps=steps)
        for seed in range(3):
            member = rng.random(10_000) < 0.5
            hits = (rng.random((steps, 10_000)) < q) & member
            x = hits + sigma * rng.normal(size=(steps, 10_000))
            s = _log_lr(x, q=q, c=1.0, std=sigma)
            b = one_run_two_sided(s, member, delta=DELTA)
            g = gdp_fit(s[member], s[~member], delta=DELTA)
            row = {"q": q, "steps": steps, "sigma": sigma, "lower": b.epsilon, "guesses": b.guesses,
                   "correct": b.correct, "gdp": g.epsilon, "seed": seed}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def cli() -> list[dict]:
    rows = []
    exe = str(Path(sys.executable).parent / "privaudit")
    for threat in ("whitebox", "blackbox"):
        args = [exe, "audit", "--trainer", "privaudit", "--epsilon", "2", "--canaries", "1000", "--threat", threat,
                "--out", f"/tmp/privaudit-bench-audit-{threat}", "--quiet"]
        t0 = time.perf_counter()
        proc = subprocess.run(args, capture_output=True, text=True)
        row = {"command": " ".join(["privaudit", *args[1:]]), "exit": proc.returncode,
               "seconds": time.perf_counter() - t0, "output": proc.stdout.strip()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


SECTIONS = {"soundness": soundness, "power": power, "blackbox": blackbox, "tightness": tightness, "ideal": ideal,
            "cli": cli}


def _fmt(x, nd=2):
    if x is None:
        return "n/a"
    if isinstance(x, float) and not math.isfinite(x):
        return "inf"
    return f"{x:.{nd}f}"


def _table(rows: list[dict]) -> list[str]:
    out = ["| trainer | threat | note | eps claimed | lower bound (95%) | right / guesses | score | GDP estimate "
           "| verdict | s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        note = r["extra"]
        if r["threat"] == "blackbox" and "canaries" not in note:  # rows before the kind was recorded: mislabeled
            kind = r.get("canary_kind") or "mislabeled"
            note = f"{note}, {kind} canaries" if note else f"{kind} canaries"
        out.append(f"| {r['trainer']} | {r['threat']} | {note} | {_fmt(r['eps_claimed'], 3)} | "
                   f"{_fmt(r['lower'], 3)} | {r['correct']} / {r['guesses']} | {r['bound_stat']} | "
                   f"{_fmt(r['gdp'])} | {r['verdict']} | {r['seconds']:.0f} |")
    return out


def _kept_notes() -> list[str]:
    """The hand-written notes of the current report (between the markers), kept across reruns."""
    if not REPORT.exists():
        return [NOTES_START, "(notes)", NOTES_END]
    text = REPORT.read_text()
    if NOTES_START not in text or NOTES_END not in text:
        return [NOTES_START, "(notes)", NOTES_END]
    return [NOTES_START + text.split(NOTES_START, 1)[1].split(NOTES_END, 1)[0] + NOTES_END]


NOTES_START, NOTES_END = "<!-- notes -->", "<!-- /notes -->"


def write_report(raw: dict) -> None:
    import torch

    lines = ["# Privacy audits: measurements", "",
             f"`python bench/audit.py` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPU cores (shared), torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')}. Every number below is in the tables "
             "(raw rows were kept in `$PRIVAUDIT_BENCH_RAW`).", "",
             "Default recipe unless a row says otherwise: digits (1,437 training rows), MLP 64-256-10 tanh "
             "(19,210 parameters), Adam 0.01, C = 1, 10 epochs at Poisson rate q = 0.1 (100 steps), noise "
             "calibrated with the PLD accountant to the target epsilon at delta = 1e-5. White-box canaries: "
             "gradient norm 100, disjoint random-sign blocks of 19,210 // m coordinates. Black-box canaries: "
             "as the note says (outliers, the default since the black-box section; mislabelled training rows "
             "before). Bounds: one-run, two-sided top-k grid, alpha = 0.05.", "",
             *_kept_notes(), ""]
    if "soundness" in raw:
        lines += ["## Soundness: correct DP-SGD never FAILs", "", *_table(raw["soundness"]), ""]
    if "power" in raw:
        lines += ["## Power: broken trainers at claimed epsilon = 2, 1,000 canaries", "", *_table(raw["power"]), ""]
    if "blackbox" in raw:
        lines += ["## Black-box: outlier canaries, scored against their ring", "",
                  "Canaries: random directions at 8 x the training rows' RMS norm (31.0 on digits), random labels; "
                  "score: scaled logit at the canary minus its mean over 32 queries at 30 degrees "
                  "(`scaled_logit-ring`). Power rows at claimed epsilon = 2, then soundness; 1,000 canaries.", "",
                  *_table(raw["blackbox"]), ""]
    if "tightness" in raw:
        lines += ["## Tightness: white-box, one run, 10,000 canaries, epsilon = 8", "",
                  "Dirac canaries at hidden 256 (19,210 parameters), 3-coordinate blocks at hidden 512.", "",
                  *_table(raw["tightness"]), ""]
    if "ideal" in raw:
        lines += ["### The same statistics on an exact Gaussian mechanism (no data, no training)", "",
                  "The canary's share is C = 1 in each sampled step plus N(0, sigma^2), scored by `lr` "
                  "(the plain sum when q = 1); seeds 0, 1, 2.", "",
                  "| q | steps | sigma | lower bound | right / guesses | GDP estimate |", "|---|---|---|---|---|---|"]
        for r in raw["ideal"]:
            lines.append(f"| {r['q']} | {r['steps']} | {r['sigma']:.3f} | {r['lower']:.3f} | "
                         f"{r['correct']} / {r['guesses']} | {r['gdp']:.2f} |")
        lines.append("")
    if "cli" in raw:
        lines += ["## `privaudit audit` wall time on CPU", "", "| command | exit | seconds |", "|---|---|---|"]
        for r in raw["cli"]:
            lines.append(f"| `{r['command']}` | {r['exit']} | {r['seconds']:.0f} |")
        lines.append("")
    REPORT.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(SECTIONS), action="append")
    args = parser.parse_args()
    raw = json.loads(RAW.read_text()) if RAW.exists() else {}
    for name in args.only or list(SECTIONS):
        print(f"== {name}", flush=True)
        raw[name] = SECTIONS[name]()
        RAW.write_text(json.dumps(raw, indent=1) + "\n")
    write_report(raw)


if __name__ == "__main__":
    main()
