"""A few DP-SGD steps per scenario, run on every rank by `test_distributed.py` under torchrun.

`python -m torch.distributed.run --nproc-per-node 2 ... _dist_worker.py OUT -- ARGS` writes
OUT/rank<r>.pt, then runs `privaudit train ARGS` on every rank (one launch for both:
starting processes is most of the cost). The test imports `SCENARIOS` and
`run_scenario` to build the single-process reference in its own process.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from privaudit.training import init_distributed, make_private


def _data(n: int, d: int, k: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _zero_loss(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 0.0 * out.sum(1)  # zero gradient: the whole update is noise


# name -> settings; every scenario is a few steps on a tiny model.
SCENARIOS: dict[str, dict[str, Any]] = {
    # Flat clipping, SGD with momentum, several padded physical batches per rank.
    "flat_sgd": dict(model="mlp", opt="sgd", lr=0.5, n=240, expected_batch_size=48, epochs=1.0,
                     noise_multiplier=1.0, max_grad_norm=1.0, physical_batch_size=8, clipping="flat", seed=7),
    # Per-layer clipping with Adam, automatic physical batch size.
    "per_layer_adam": dict(model="mlp", opt="adam", lr=0.05, n=200, expected_batch_size=40, epochs=1.0,
                           noise_multiplier=0.8, max_grad_norm=0.5, physical_batch_size=None,
                           clipping="per_layer", seed=3),
    # Zero gradients, one step with SGD lr 1: the update is -noise / (q N).
    "zero_grad": dict(model="wide", opt="sgd0", lr=1.0, n=40, expected_batch_size=10, epochs=0.25,
                      noise_multiplier=1.7, max_grad_norm=0.3, physical_batch_size=None, clipping="flat", seed=1),
    # Non-private training (the same loop without clipping and noise).
    "no_dp": dict(model="mlp", opt="sgd", lr=0.5, n=120, expected_batch_size=30, epochs=1.0,
                  noise_multiplier=None, max_grad_norm=None, physical_batch_size=None, clipping="flat", seed=5),
    # A seed drawn at random: the ranks must agree on rank 0's draw.
    "random_seed": dict(model="mlp", opt="sgd", lr=0.5, n=120, expected_batch_size=30, epochs=0.5,
                        noise_multiplier=1.0, max_grad_norm=1.0, physical_batch_size=None, clipping="flat",
                        seed=None),
}


def run_scenario(name: str, *, distributed: bool) -> dict[str, Any]:
    """Trains scenario `name` to its planned end and returns what the test compares."""
    sc = SCENARIOS[name]
    torch.manual_seed(11)
    if sc["model"] == "wide":
        model: nn.Module = nn.Linear(200, 100)
        x, y = torch.randn(sc["n"], 200, generator=torch.Generator().manual_seed(2)), torch.zeros(sc["n"]).long()
        loss_fn: Any = _zero_loss
    else:
        model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
        x, y = _data(sc["n"], 6, 3)
        loss_fn = nn.CrossEntropyLoss()
    if sc["opt"] == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(model.parameters(), lr=sc["lr"])
    else:
        opt = torch.optim.SGD(model.parameters(), lr=sc["lr"], momentum=0.9 if sc["opt"] == "sgd" else 0.0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    trainer = make_private(module=model, optimizer=opt, data=(x, y), loss_fn=loss_fn, epochs=sc["epochs"],
                           expected_batch_size=sc["expected_batch_size"], max_grad_norm=sc["max_grad_norm"],
                           noise_multiplier=sc["noise_multiplier"], physical_batch_size=sc["physical_batch_size"],
                           clipping=sc["clipping"], seed=sc["seed"], no_dp=sc["noise_multiplier"] is None,
                           distributed=distributed)
    shares: list[tuple[list[int], list[int]]] = []
    real = trainer._local_indices

    def spy(indices: torch.Tensor) -> torch.Tensor:
        local = real(indices)
        shares.append((indices.tolist(), local.tolist()))
        return local

    trainer._local_indices = spy  # type: ignore[method-assign]
    stats = trainer.run()
    trainer.close()
    return {
        "before": before,
        "after": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "shares": shares,
        "events": [(e.event.to_dict(), e.count) for e in trainer.ledger.entries],
        "metadata": trainer.ledger.metadata,
        "steps": trainer.steps_taken,
        "planned_steps": trainer.planned_steps,
        "epsilon": trainer.epsilon(),
        "losses": [s.loss for s in stats],
        "rng_seed": trainer.rng_record.seed,
        "world_size": trainer.world_size,
    }


def mismatched_data_error() -> str | None:
    """make_private with data that differs on rank 1: every rank must refuse (None if not)."""
    model = nn.Linear(6, 3)
    x, y = _data(50, 6, 3, seed=torch.distributed.get_rank())
    try:
        make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data=(x, y),
                     loss_fn=nn.CrossEntropyLoss(), epochs=1, expected_batch_size=10, max_grad_norm=1.0,
                     noise_multiplier=1.0, seed=0, distributed=True)
    except ValueError as exc:
        return str(exc)
    return None


def main(out: str, cli_args: list[str]) -> None:
    init_distributed("cpu", timeout_s=60)
    rank = torch.distributed.get_rank()
    try:
        results: dict[str, Any] = {name: run_scenario(name, distributed=True) for name in SCENARIOS}
        results["mismatch"] = mismatched_data_error()
        torch.save(results, f"{out}/rank{rank}.pt")
        if cli_args:  # then `privaudit train CLI_ARGS`, on every rank, as under `torchrun -m privaudit.cli`
            from privaudit.cli import main as cli

            cli(["train", *cli_args], prog_name="privaudit", standalone_mode=False)
    finally:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    # _dist_worker.py OUT [-- privaudit-train-args...]
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    main(argv[0], extra)
