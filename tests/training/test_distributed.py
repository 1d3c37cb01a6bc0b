"""Multi-process DP-SGD: 2 gloo processes on CPU (under torchrun) against 1 process with the same seed.

Each launch runs under a wall-clock timeout; on expiry every process it started
(torchrun and its workers, found through /proc) is killed by pid.
"""

from __future__ import annotations

import importlib.util
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from privaudit.accounting import make_accountant
from privaudit.training import RunDir, make_private
from privaudit.training._distributed import DistContext
from privaudit.training._job import TrainSettings, train_job

HERE = Path(__file__).resolve().parent
LAUNCH_TIMEOUT_S = 150

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _worker_module():
    spec = importlib.util.spec_from_file_location("privaudit_dist_worker", HERE / "_dist_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every live descendant of `pid` (torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _torchrun(args: list[str], *, cwd: Path) -> str:
    """Runs `python -m torch.distributed.run --nproc-per-node 2 ARGS` on 127.0.0.1; returns its output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "--max-restarts", "0",
           "--monitor-interval", "0.2", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        for pid in [*_descendants(proc.pid), proc.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within {LAUNCH_TIMEOUT_S} s (killed):\n{out[-4000:]}")
    assert proc.returncode == 0, out[-6000:]
    return out


CLI_FLAGS = dict(data="digits", model="mlp", hidden=32, epochs=1.0, noise_multiplier=1.0, device="cpu", seed=3)


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """One torchrun launch (2 gloo ranks): every `_dist_worker` scenario, then `privaudit train` (CLI_FLAGS)."""
    out = tmp_path_factory.mktemp("dist")
    cli = [f"--{k.replace('_', '-')}={v}" for k, v in CLI_FLAGS.items()]
    t0 = time.perf_counter()
    log = _torchrun([str(HERE / "_dist_worker.py"), str(out), "--", *cli, "--out", str(out / "runs"),
                     "--name", "d2"], cwd=out)
    print(f"torchrun, 2 ranks (scenarios + privaudit train): {time.perf_counter() - t0:.1f} s")
    return out, log


@pytest.fixture(scope="module")
def two_ranks(launch):
    """Both ranks' results for every scenario."""
    out, _ = launch
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


@pytest.fixture(scope="module")
def one_rank():
    worker = _worker_module()
    return {name: worker.run_scenario(name, distributed=False) for name in worker.SCENARIOS}


DETERMINISTIC = ["flat_sgd", "per_layer_adam", "zero_grad", "no_dp"]


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_two_process_steps_equal_the_one_process_steps_with_the_same_seed(two_ranks, one_rank, name):
    r0, r1, ref = two_ranks[0][name], two_ranks[1][name], one_rank[name]
    assert r0["world_size"] == r1["world_size"] == 2 and ref["world_size"] == 1
    # Every rank applied the same update: the models are identical, bit for bit.
    for key in r0["after"]:
        assert torch.equal(r0["after"][key], r1["after"][key]), key
    # And equal to the single-process model (up to the order of the floating-point sums).
    for key in ref["after"]:
        assert not torch.equal(ref["after"][key], ref["before"][key]), key
        torch.testing.assert_close(r0["after"][key], ref["after"][key], rtol=1e-4, atol=1e-5)
    # The same ledger: same events, same step count, same epsilon, same metadata.
    assert r0["steps"] == r0["planned_steps"] == ref["steps"] == ref["planned_steps"] >= 1
    assert r0["events"] == r1["events"] == ref["events"]
    assert r0["metadata"] == r1["metadata"] == ref["metadata"]
    assert r0["epsilon"] == r1["epsilon"] == ref["epsilon"]
    # Step statistics are reduced over the ranks: the same as the single process's.
    assert r0["losses"] == pytest.approx(ref["losses"], rel=1e-5, nan_ok=True)


@pytest.mark.parametrize("name", [*DETERMINISTIC, "random_seed"])
def test_each_rank_takes_a_disjoint_share_of_the_same_global_poisson_batch(two_ranks, one_rank, name):
    s0, s1 = two_ranks[0][name]["shares"], two_ranks[1][name]["shares"]
    assert len(s0) == len(s1) == two_ranks[0][name]["steps"]
    for (g0, l0), (g1, l1) in zip(s0, s1):
        assert g0 == g1  # the same global batch on every rank
        assert not set(l0) & set(l1)
        assert sorted(l0 + l1) == sorted(g0) and len(set(g0)) == len(g0)
        assert abs(len(l0) - len(l1)) <= 1
    if name != "random_seed":  # the global batches are the single-process run's
        assert [g for g, _ in s0] == [g for g, _ in one_rank[name]["shares"]]


def test_noise_is_added_exactly_once(two_ranks, one_rank):
    # Zero gradients, SGD lr 1 without momentum: the update is -noise / (qN), noise ~ N(0, sigma^2 C^2).
    sc = _worker_module().SCENARIOS["zero_grad"]
    r0, ref = two_ranks[0]["zero_grad"], one_rank["zero_grad"]
    assert r0["steps"] == 1
    scale = sc["lr"] * sc["noise_multiplier"] * sc["max_grad_norm"] / sc["expected_batch_size"]
    delta = torch.cat([(r0["after"][k] - r0["before"][k]).flatten() for k in r0["after"]]).double()
    z = -delta / scale
    # 20,100 coordinates: the sample std is within ~1% of 1; noise added on both ranks would give sqrt(2).
    assert float(z.std()) == pytest.approx(1.0, abs=0.04)
    assert abs(float(z.mean())) < 0.04
    ref_delta = torch.cat([(ref["after"][k] - ref["before"][k]).flatten() for k in ref["after"]]).double()
    torch.testing.assert_close(delta, ref_delta, rtol=1e-6, atol=1e-9)  # the very same noise draw


def test_a_random_seed_is_agreed_across_ranks(two_ranks):
    r0, r1 = two_ranks[0]["random_seed"], two_ranks[1]["random_seed"]
    assert r0["rng_seed"] is not None and r0["rng_seed"] == r1["rng_seed"]
    for key in r0["after"]:
        assert torch.equal(r0["after"][key], r1["after"][key]), key
    assert r0["events"] == r1["events"] and r0["steps"] == r0["planned_steps"]


def test_ranks_with_different_data_are_refused_on_every_rank(two_ranks):
    for r in (0, 1):
        assert two_ranks[r]["mismatch"] is not None and "'data'" in two_ranks[r]["mismatch"]


def test_without_a_process_group_training_is_single_process():
    assert DistContext.current() is None
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="distributed=True needs an initialised"):
        make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                     data=(torch.zeros(4, 2), torch.zeros(4).long()), loss_fn=torch.nn.CrossEntropyLoss(),
                     epochs=1, expected_batch_size=2, max_grad_norm=1.0, noise_multiplier=1.0, distributed=True)


def test_privaudit_cli_runs_as_a_module():
    # What `torchrun -m privaudit.cli train ...` runs.
    res = subprocess.run([sys.executable, "-m", "privaudit.cli", "--version"], capture_output=True, text=True,
                         timeout=60)
    assert res.returncode == 0 and "privaudit" in res.stdout


def test_privaudit_train_on_two_ranks_writes_one_run_directory_like_a_single_process_run(launch, tmp_path):
    out, log = launch
    single = train_job(TrainSettings(out=str(tmp_path), name="d1", **CLI_FLAGS))
    assert log.count("privaudit train:") == 1  # the result table, printed by rank 0 only
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["d2"]
    a, b = RunDir.open(out / "runs" / "d2"), RunDir.open(tmp_path / "d1")
    la, lb = a.read_ledger(), b.read_ledger()
    assert [(e.event, e.count) for e in la.entries] == [(e.event, e.count) for e in lb.entries]
    assert la.metadata == lb.metadata
    summary = a.read_summary()
    assert la.total_count() == summary["steps"] == summary["planned_steps"] == single.steps == 6
    eps = make_accountant("pld").compose(la.to_event()).get_epsilon(1e-5)
    assert summary["epsilon"] == pytest.approx(eps, rel=1e-12) and summary["epsilon"] == single.epsilon
    assert len(a.read_metrics()) == 1  # written once (rank 1 wrote nothing)
    assert a.read_config()["resolved"]["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert "distributed" not in b.read_config()["resolved"]
    assert a.read_config()["settings"] == {**b.read_config()["settings"], "out": str(out / "runs"), "name": "d2"}
    wa, wb = a.load_weights(), b.load_weights()
    for key in wb:
        torch.testing.assert_close(wa[key], wb[key], rtol=1e-3, atol=1e-4)
    assert summary["status"] == "complete" and math.isfinite(summary["test_accuracy"])


def test_a_checkpoint_resumes_under_another_physical_batch_size():
    # A run checkpointed on 2 ranks (smaller automatic passes) resumes on 1, and vice versa.
    def trainer(**kw):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        g = torch.Generator().manual_seed(0)
        args = dict(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                    data=(torch.randn(60, 6, generator=g), torch.randint(0, 3, (60,), generator=g)),
                    loss_fn=torch.nn.CrossEntropyLoss(), epochs=1, expected_batch_size=12, max_grad_norm=1.0,
                    noise_multiplier=1.0, seed=0, physical_batch_size=4)
        args.update(kw)
        return make_private(**args)

    a = trainer()
    a.run(steps=2)
    b = trainer(physical_batch_size=32)
    b.load_state_dict(a.state_dict())
    a.run()
    b.run()
    for pa, pb in zip(a.module.parameters(), b.module.parameters()):
        torch.testing.assert_close(pa, pb)
    with pytest.raises(ValueError, match="max_grad_norm"):
        trainer(max_grad_norm=2.0).load_state_dict(a.state_dict())
