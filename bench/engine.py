"""Step time and peak memory: privaudit DP-SGD vs non-private training vs Opacus (hooks, ghost).

Step time: for each model, all engines are built in one process and their
timed steps are interleaved round-robin, so that load from other jobs on a
shared machine falls on every engine alike. Peak memory: each (model, engine)
pair then runs again alone in its own process:

* CPU: peak resident set size (`resource.getrusage(...).ru_maxrss`) minus the
  resident size after the warm-up steps, i.e. a training step's transient
  memory as the operating system saw it (allocator caching included);
* CUDA: `torch.cuda.max_memory_allocated()` after `reset_peak_memory_stats()`,
  minus the memory allocated before the measured steps.

The DP engines sample batches by Poisson sampling with the same expected batch
size as the non-private baseline's fixed batch. privaudit pads to one fixed
physical batch (its automatic size, printed); Opacus feeds variable shapes.

    python bench/engine.py                       # CPU sizes, writes reports/benchmarks/engine.md
    python bench/engine.py --device cuda --batch-mlp 1024 --batch-cnn 1024 \
        --batch-transformer 1024 --seq-len 128   # the REFERENCES settings on a GPU
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ENGINES = ("non-private", "privaudit", "privaudit-auto", "opacus-hooks", "opacus-ghost")
MODELS = ("mlp", "cnn", "transformer")
VOCAB = 2048


def _build(model: str, args: argparse.Namespace):
    import torch

    from privaudit.training import build_model

    g = torch.Generator().manual_seed(0)
    if model == "mlp":
        n, b = 8 * args.batch_mlp, args.batch_mlp
        x = torch.randn(n, 64, generator=g)
        net = build_model("mlp", input_shape=(64,), num_classes=10, hidden=(512, 512))
    elif model == "cnn":
        n, b = 8 * args.batch_cnn, args.batch_cnn
        x = torch.randn(n, 3, 32, 32, generator=g)
        net = build_model("cnn", input_shape=(3, 32, 32), num_classes=10, channels=(64, 128, 128, 256))
    else:
        n, b = 8 * args.batch_transformer, args.batch_transformer
        x = torch.randint(0, VOCAB, (n, args.seq_len), generator=g)
        net = build_model("transformer", input_shape=(args.seq_len,), num_classes=10, vocab_size=VOCAB,
                          d_model=256, nhead=8, num_layers=4, dim_feedforward=2048)
    y = torch.randint(0, 10, (n,), generator=g)
    return net, x, y, b


def _rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _setup(device_name: str, threads: int):
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.benchmark = True  # fixed shapes tune once; variable shapes re-tune
    return device


def _engine(engine: str, args: argparse.Namespace, device):
    """Builds one engine on a fresh copy of the model; returns (step function, info, physical counts)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    net, x, y, b = _build(args.model, args)
    net.to(device)
    n = x.shape[0]
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    info: dict = {"model": args.model, "engine": engine, "batch": b,
                  "params": sum(p.numel() for p in net.parameters())}
    physical_counts: list[int] = []  # privaudit: passes per step
    rows_per_step: list[int] = []  # Opacus: rows of each (variable-size) Poisson batch

    if engine == "non-private":
        xd, yd = x.to(device), y.to(device)
        loss_fn = nn.CrossEntropyLoss()
        gen = torch.Generator().manual_seed(1)

        def step() -> None:
            idx = torch.randint(0, n, (b,), generator=gen).to(device)
            # Gradient buffers persist between steps (zeroed, not freed), as privaudit's
            # accumulators do: neither engine's step memory then counts its gradient buffer.
            opt.zero_grad(set_to_none=False)
            loss_fn(net(xd[idx]), yd[idx]).backward()
            opt.step()
    elif engine in ("privaudit", "privaudit-auto"):
        from privaudit.training import make_private

        # "privaudit": physical batches of exactly the non-private batch shape (a Poisson
        # batch larger than b takes two); "privaudit-auto": the default physical size.
        trainer = make_private(module=net, optimizer=opt, data=(x.to(device), y.to(device)),
                               loss_fn=nn.CrossEntropyLoss(), epochs=1000, expected_batch_size=b,
                               max_grad_norm=1.0, noise_multiplier=1.0, seed=0, device=device,
                               physical_batch_size=b if engine == "privaudit" else None)
        info["physical_batch"] = trainer.physical_batch_size

        def step() -> None:
            physical_counts.append(trainer.step().physical_batches)

        info["expected_passes"] = _expected_passes(x.shape[0], b / x.shape[0], trainer.physical_batch_size)
    else:
        from opacus import PrivacyEngine
        from opacus.validators import ModuleValidator
        from torch.utils.data import DataLoader, TensorDataset

        net = ModuleValidator.fix(net).to(device)  # nn.MultiheadAttention -> DPMultiheadAttention
        opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
        loader = DataLoader(TensorDataset(x, y), batch_size=b)
        mode = "hooks" if engine == "opacus-hooks" else "ghost"
        out = PrivacyEngine(accountant="prv").make_private(
            module=net, optimizer=opt, data_loader=loader, noise_multiplier=1.0, max_grad_norm=1.0,
            poisson_sampling=True, grad_sample_mode=mode, criterion=nn.CrossEntropyLoss())
        if mode == "ghost":
            model, dp_opt, criterion, dl = out
        else:
            (model, dp_opt, dl), criterion = out, nn.CrossEntropyLoss()
        batches = iter(dl)

        def step() -> None:
            nonlocal batches
            try:
                xb, yb = next(batches)
            except StopIteration:
                batches = iter(dl)
                xb, yb = next(batches)
            xb, yb = xb.to(device), yb.to(device)
            rows_per_step.append(int(xb.shape[0]))
            dp_opt.zero_grad(set_to_none=False)
            criterion(model(xb), yb).backward()
            dp_opt.step()

    return step, info, physical_counts if engine.startswith("privaudit") else rows_per_step


def _expected_passes(n: int, q: float, size: int) -> float:
    """E[ceil(b / size)] for b ~ Binomial(n, q): the expected passes of a Poisson step."""
    pmf = [math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
                    + k * math.log(q) + (n - k) * math.log1p(-q)) for k in range(n + 1)]
    return sum(p * math.ceil(k / size) for k, p in enumerate(pmf))


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def _child_time(args: argparse.Namespace) -> list[dict]:
    """All engines of one model in one process, their timed steps interleaved round-robin,
    so that load from other jobs on a shared machine falls on every engine alike."""
    device = _setup(args.device, args.threads)
    built, rows = {}, {}
    for engine in args.engines.split(","):
        try:
            step, info, counts = _engine(engine, args, device)
            for _ in range(args.warmup):
                step()
            _sync(device)
            built[engine] = (step, counts)
            rows[engine] = dict(info, times=[])
        except Exception as exc:  # an engine that cannot run this model is reported, not fatal
            rows[engine] = {"model": args.model, "engine": engine, "error": f"{type(exc).__name__}: {exc}"}
    for _ in range(args.steps):
        for engine, (step, _) in list(built.items()):
            t0 = time.perf_counter()
            try:
                step()
                _sync(device)
            except Exception as exc:  # e.g. an engine that fails on an empty Poisson batch
                rows[engine] = {"model": args.model, "engine": engine, "error": f"{type(exc).__name__}: {exc}"}
                del built[engine]
                continue
            rows[engine]["times"].append(time.perf_counter() - t0)
    out = []
    for engine, row in rows.items():
        times = row.pop("times", None)
        if times:
            row.update(ms=1000 * statistics.median(times), ms_min=1000 * min(times),
                       ms_mean=1000 * statistics.fmean(times))
            counts = built[engine][1][-args.steps:]
            if counts and engine.startswith("privaudit"):
                # Every pass has one fixed shape, so a step costs (passes) x (one pass): the
                # expected step is E[passes] x the fastest pass, whichever batch sizes the
                # few timed steps happened to draw (their fastest step is a lucky one-pass draw).
                row["physical_per_step"] = statistics.mean(counts)
                row["ms_per_physical_min"] = 1000 * min(t / max(1, k) for t, k in zip(times, counts))
                row["ms_expected"] = row["ms_per_physical_min"] * row["expected_passes"]
            elif counts:
                # Variable-size batches: time per real row, times the expected rows q N.
                row["rows_per_step"] = statistics.mean(counts)
                row["ms_expected"] = 1000 * min(t / max(1, k) for t, k in zip(times, counts)) * row["batch"]
        out.append(row)
    return out


def _peak_reset() -> bool:
    """Resets the kernel's peak-RSS mark (VmHWM) of this process (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child_memory(args: argparse.Namespace) -> dict:
    """One engine alone in its process: the peak memory of its steps after the warm-up."""
    import torch

    device = _setup(args.device, args.threads)
    step, info, _ = _engine(args.engine, args, device)
    for _ in range(args.warmup):
        step()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()
        reset = _peak_reset()
    for _ in range(args.memory_steps):
        step()
    _sync(device)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20 - base
    else:
        peak = _peak_rss_mib() - base  # since the reset, or over the whole process where it could not be reset
    return {"peak_mib": max(peak, 0.0), "peak_measured_steps_only": device.type == "cuda" or reset}


#: glibc settings of the CPU memory children: every allocation of 64 KiB or more gets its
#: own mapping, returned to the system when freed, so the resident set follows the live
#: tensors instead of the allocator's cache (which hid transients in earlier reports).
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def _machine(args: argparse.Namespace) -> str:
    import torch

    dev = args.device
    if dev.startswith("cuda"):
        dev = f"{dev} ({torch.cuda.get_device_name(0)})"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"device {dev}; CPU {cpu}, {os.cpu_count()} logical cores visible, torch threads {args.threads}; "
            f"load average at the end {load} (other jobs share this machine); "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def _report(rows: list[dict], args: argparse.Namespace) -> str:
    mem_kind = ("torch.cuda.max_memory_allocated (MiB above the allocation before the measured steps)"
                if args.device.startswith("cuda") else
                "the process's peak RSS during the measured steps (VmHWM, reset after the warm-up) minus its RSS "
                "after the warm-up, in MiB, with glibc told to map every allocation of 64 KiB or more on its own "
                "and return it when freed (MALLOC_MMAP_THRESHOLD_=65536, MALLOC_TRIM_THRESHOLD_=0), so that the "
                "resident set follows the live tensors: the transient memory of a step")
    lines = [
        "# DP-SGD engine benchmark",
        "",
        f"Machine: {_machine(args)}.",
        f"Timed steps: {args.steps} per engine after {args.warmup} warm-up steps, interleaved across engines "
        f"in one process; memory: {args.memory_steps} steps, each engine alone in a process. Sizes: MLP batch "
        f"{args.batch_mlp}, CNN batch {args.batch_cnn}, transformer batch {args.batch_transformer} x seq "
        f"{args.seq_len}. Memory: {mem_kind}.",
        "",
        "Times use fastest timed steps (the machine is shared with other jobs, whose load only ever adds "
        "time); medians are in the raw rows. The DP engines sample Poisson batches (size Binomial(N, q), "
        "expected size = the non-private batch), so their fastest step is also their luckiest draw. "
        "'expected' removes that luck: privaudit's passes all have one shape, so its expected step is "
        "E[passes] (exact, from the binomial) x its fastest pass; Opacus' batches vary in size, so its "
        "expected step is the expected rows x its fastest time per row. 'per physical batch' is the "
        "fastest step time divided by its passes; with physical batch = the non-private batch it is the "
        "like-for-like cost of one forward/backward/clip pass. On CPU privaudit pads the last pass of a "
        "step only to a multiple of 8 rows (on GPU every pass keeps one shape), so its 'expected' column, "
        "which assumes full passes, is an upper bound there; 'mean' is the measured mean over the timed "
        "steps (their Poisson draws and the machine's load included), the like-for-like expected cost.",
        "",
        "| model | params | engine | ms/step (min) | ms/step (expected) | x non-private | ms/step (mean) "
        "| x non-private (mean) | ms per physical batch (min) | x non-private | peak MiB | x non-private | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        base = next((r for r in rows if r["model"] == model and r["engine"] == "non-private" and "ms" in r), None)
        for r in (r for r in rows if r["model"] == model):
            if "ms" not in r:
                lines.append(f"| {model} | | {r['engine']} | n/a | | | | | | | | | {r.get('error', '')[:120]} |")
                continue
            mean = r.get("ms_mean")
            mean_s = "" if mean is None else f"{mean:.1f}"
            rmean = f"{mean / base['ms_mean']:.2f}x" if base and mean is not None and base.get("ms_mean") else ""
            exp = r.get("ms_expected", r["ms_min"] if r["engine"] == "non-private" else None)
            rt = f"{exp / base['ms_min']:.2f}x" if base and exp is not None else ""
            per = r.get("ms_per_physical_min")
            same_shape = r.get("physical_batch") == r["batch"]
            rp = f"{per / base['ms_min']:.2f}x" if base and per is not None and same_shape else ""
            peak = r.get("peak_mib", float("nan"))
            rm = f"{peak / base['peak_mib']:.2f}x" if base and base.get("peak_mib", 0) > 1 else ""
            if "physical_batch" in r:
                note = (f"physical batch {r['physical_batch']}, {r['physical_per_step']:.1f} passes per timed "
                        f"step, {r['expected_passes']:.2f} expected")
            elif "rows_per_step" in r:
                note = f"{r['rows_per_step']:.1f} rows per timed step"
            else:
                note = ""
            per_s = "" if per is None else f"{per:.1f}"
            exp_s = "" if exp is None else f"{exp:.1f}"
            lines.append(f"| {model} | {r['params'] / 1e6:.2f}M | {r['engine']} | {r['ms_min']:.1f} | {exp_s} | {rt} | "
                         f"{mean_s} | {rmean} | {per_s} | {rp} | {peak:.0f} | {rm} | {note} |")
    lines += [
        "",
        "Notes:",
        "",
        "* privaudit keeps each layer's inputs and output gradients (norm layers reduce theirs to "
        "per-example gradients during the backward pass and drop them), then per layer either ghost "
        "norms (Gram matrices) + one book-keeping contraction for the clipped sum, or per-example gradients "
        "materialised a chunk of examples at a time, whose norms and clipped share come from the same chunk; "
        "the choice is by flop count, and the chunks are sized to 1/8 of the stored activations and "
        "gradients (see src/privaudit/training/_per_sample.py and _conv.py). No second backward pass. Its "
        "backward pass skips the parameter gradients that non-private training computes, which pays for "
        "part of the norm computation.",
        "* 'privaudit' uses physical batches of exactly the non-private batch size, so a Poisson batch above "
        "the expected size takes two passes; 'privaudit-auto' uses the default physical size (the one that "
        "minimises expected padded rows plus a 16-row cost per pass, at most 1024 and at most the "
        "expected batch). Opacus feeds its variable-size Poisson batches directly (no padding, but changing "
        "shapes).",
        "* Opacus is given nn.MultiheadAttention replaced by its DPMultiheadAttention (ModuleValidator.fix); "
        "an engine that fails on a model is listed with its error.",
        "* The noise (one Gaussian draw per parameter per step) is included in every DP engine's step time.",
        "* Gradient buffers persist between steps in every engine (non-private and Opacus zero their .grad "
        "with set_to_none=False; privaudit keeps its accumulators), so the memory column compares what a "
        "step adds on top of parameters, gradient buffers and optimizer state.",
        "* On a CPU shared with other jobs (see the load average above), single ratios move by up to ~0.3x "
        "between runs; read CPU ratios as rough.",
        "* On a GPU run `python bench/engine.py --device cuda --batch-mlp 1024 --batch-cnn 1024 "
        "--batch-transformer 1024 --seq-len 128 --threads 16` to compare with REFERENCES.md.",
    ]
    lines += ["", "Raw rows (JSON):", "", "```", *(json.dumps(r) for r in rows), "```", ""]
    return "\n".join(lines)


def _run_child(cmd: list[str], env: dict[str, str] | None = None) -> tuple[object | None, str]:
    res = subprocess.run(cmd, capture_output=True, text=True, env=None if env is None else {**os.environ, **env})
    if res.returncode != 0:
        return None, (res.stderr.strip().splitlines() or ["?"])[-1]
    return json.loads(res.stdout.strip().splitlines()[-1]), ""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--memory-steps", type=int, default=2)
    p.add_argument("--batch-mlp", type=int, default=1024)
    p.add_argument("--batch-cnn", type=int, default=32)
    p.add_argument("--batch-transformer", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--out", default="reports/benchmarks/engine.md")
    p.add_argument("--rows", help="re-render the report from JSON rows printed by an earlier run")
    p.add_argument("--child", choices=["time", "memory"], help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--engine", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child == "time":
        print(json.dumps(_child_time(args)))
        return
    if args.child == "memory":
        print(json.dumps(_child_memory(args)))
        return
    if args.rows:
        rows = [json.loads(line) for line in Path(args.rows).read_text().splitlines() if line.startswith("{")]
        Path(args.out).write_text(_keep_summary(Path(args.out), _report(rows, args)))
        return
    common = [sys.executable, __file__, "--device", args.device, "--threads", str(args.threads), "--steps",
              str(args.steps), "--warmup", str(args.warmup), "--memory-steps", str(args.memory_steps),
              "--batch-mlp", str(args.batch_mlp), "--batch-cnn", str(args.batch_cnn), "--batch-transformer",
              str(args.batch_transformer), "--seq-len", str(args.seq_len), "--engines", args.engines]
    rows = []
    for model in args.models.split(","):
        timed, err = _run_child([*common, "--child", "time", "--model", model])
        if timed is None:
            timed = [{"model": model, "engine": e, "error": err} for e in args.engines.split(",")]
        for row in timed:
            if "error" not in row:
                mem, err = _run_child([*common, "--child", "memory", "--model", model, "--engine", row["engine"]],
                                      env=_MALLOC_ENV if args.device == "cpu" else None)
                row.update(mem if mem is not None else {"peak_mib": float("nan"), "memory_error": err})
            rows.append(row)
            print(json.dumps(row), flush=True)
    text = _report(rows, args)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(_keep_summary(Path(args.out), text))
    print(text)


_SUMMARY, _GENERATED = "## Summary (hand-written", "## Generated report"


def _keep_summary(out: Path, text: str) -> str:
    """The new report, with the hand-written summary of an existing report at `out` kept above it (flagged as
    written for an earlier run: its numbers are that run's, not the tables below)."""
    old = out.read_text() if out.is_file() else ""
    if _SUMMARY not in old or _GENERATED not in old:
        return text
    summary = old[old.index(_SUMMARY):old.index(_GENERATED)].rstrip()
    stale = ("_Kept from the previous report by `bench/engine.py`: the summary below was written for an earlier "
             "run; the generated tables further down are from this one._")
    if stale not in summary:
        head, _, rest = summary.partition("\n")
        summary = f"{head}\n\n{stale}\n{rest}"
    title, _, body = text.partition("\n")
    return f"{title}\n\n{summary}\n\n{_GENERATED}\n{body}"


if __name__ == "__main__":
    main()
