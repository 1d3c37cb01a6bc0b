"""The embedded simulator: FedAvg against centralised training, vectorised against the sequential loop."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from privaudit.accounting import GaussianEvent, PoissonSampledEvent, flatten_event
from privaudit.training import build_model
from privaudit.training._data import load_dataset
from privaudit.training._fed_aggregate import DpFedAvg, FedAvg
from privaudit.training._fed_local import LocalTraining
from privaudit.training._fed_partition import Partition, partition_dirichlet
from privaudit.training._fed_sim import ClientSampler, FederatedSimulation, SampleLevelDP


@pytest.fixture(scope="module")
def digits():
    ds = load_dataset("digits")
    return torch.from_numpy(ds.x_train[:300]), torch.from_numpy(ds.y_train[:300])


def _sim(model, x, y, partition, local, *, engine="vectorised", seed=0, q=1.0, k=None, aggregator=None,
         sample_dp=None, max_clients=1024):
    ss = np.random.SeedSequence(seed).spawn(3)
    sampler = ClientSampler(num_clients=partition.num_clients, rng=np.random.default_rng(ss[0]),
                            sampling_rate=None if k else q, clients_per_round=k)
    return FederatedSimulation(module=model, x=x, y=y, partition=partition, local=local,
                               aggregator=aggregator if aggregator is not None else FedAvg(), sampler=sampler,
                               seed=seed, engine=engine, sample_dp=sample_dp,
                               max_clients=max_clients)


def _model(name="logreg", seed=0, double=False, **kw):
    torch.manual_seed(seed)
    m = build_model(name, input_shape=(64,), num_classes=10, **kw)
    return m.double() if double else m


@pytest.mark.parametrize("engine", ["vectorised", "sequential"])
def test_one_full_batch_step_per_round_equals_centralised_gradient_descent(digits, engine):
    # Exact conditions: every client in every round (q = 1), one local step on its whole data
    # (batch >= n_k), server lr 1, weights n_k. Then sum_k (n_k / n) grad(mean loss on D_k) is
    # grad(mean loss on the union), so a round is one full-batch GD step, with any client sizes.
    x, y = digits[0][:120].double(), digits[1][:120]
    part = Partition(clients=(np.arange(0, 10), np.arange(10, 40), np.arange(40, 120)), method="iid")
    model = _model(double=True)
    central = copy.deepcopy(model)
    sim = _sim(model, x, y, part, LocalTraining(steps=1, batch_size=1000, lr=0.5, momentum=0.9), engine=engine)
    opt = torch.optim.SGD(central.parameters(), lr=0.5)
    for _ in range(3):
        sim.run_round()
        opt.zero_grad()
        nn.functional.cross_entropy(central(x), y).backward()
        opt.step()
    assert torch.allclose(sim.global_flat, sim.layout.flatten(central), atol=1e-12)


@pytest.mark.parametrize("weighting", ["num_examples", "uniform"])
def test_identical_clients_equal_centralised_training_on_their_union(digits, weighting):
    # Three clients holding the same 40 examples, 4 local full-batch steps with momentum (reset each
    # round): every client follows the centralised trajectory on the union (whose mean loss is the
    # same), so their average does too, whatever the weights.
    x1, y1 = digits[0][:40].double(), digits[1][:40]
    x, y = x1.repeat(3, 1), y1.repeat(3)
    part = Partition(clients=tuple(np.arange(40 * i, 40 * (i + 1)) for i in range(3)), method="iid")
    model = _model(double=True)
    central = copy.deepcopy(model)
    sim = _sim(model, x, y, part, LocalTraining(steps=4, batch_size=40, lr=0.3, momentum=0.9),
               aggregator=FedAvg(weighting=weighting))
    for _ in range(2):
        sim.run_round()
        opt = torch.optim.SGD(central.parameters(), lr=0.3, momentum=0.9)
        for _ in range(4):
            opt.zero_grad()
            nn.functional.cross_entropy(central(x), y).backward()
            opt.step()
    assert torch.allclose(sim.global_flat, sim.layout.flatten(central), atol=1e-12)


@pytest.mark.parametrize(
    ("model_kw", "kw"),
    [
        (dict(name="logreg"), dict(q=0.5, max_clients=7)),
        (dict(name="mlp", hidden=16), dict(k=6)),
        (dict(name="mlp", hidden=16), dict(q=0.7, dp=True)),
    ],
)
def test_vectorised_simulator_equals_the_sequential_reference(digits, model_kw, kw):
    x, y = digits
    part = partition_dirichlet(y.numpy(), num_clients=20, alpha=0.3, seed=1)  # uneven sizes: padding
    local = LocalTraining(steps=3, batch_size=8, lr=0.2, momentum=0.9)
    dp = kw.pop("dp", False)
    sims = []
    for engine in ("vectorised", "sequential"):
        agg = (DpFedAvg(FedAvg(), noise_multiplier=0.5, clipping_norm=0.5, num_clients=20,
                        sampling_rate=kw["q"], rng=np.random.default_rng(3)) if dp else None)
        sims.append(_sim(_model(**model_kw), x, y, part, local, engine=engine, aggregator=agg, **kw))
    for _ in range(3):
        a, b = sims[0].run_round(), sims[1].run_round()
        assert np.array_equal(a.clients, b.clients)
    assert sims[0].participation == sims[1].participation
    assert torch.allclose(sims[0].global_flat, sims[1].global_flat, atol=1e-5)
    assert not torch.allclose(sims[0].global_flat, sims[0].layout.flatten(_model(**model_kw)))


def test_vectorised_engine_handles_a_small_cnn():
    ds = load_dataset("digits", image_shape=True)
    x, y = torch.from_numpy(ds.x_train[:60]), torch.from_numpy(ds.y_train[:60])
    part = partition_dirichlet(y.numpy(), num_clients=4, alpha=1.0, seed=0)
    local = LocalTraining(steps=2, batch_size=8, lr=0.1)
    sims = []
    for engine in ("vectorised", "sequential"):
        torch.manual_seed(0)
        m = build_model("cnn", input_shape=(1, 8, 8), num_classes=10, channels=(4, 4))
        sims.append(_sim(m, x, y, part, local, engine=engine))
        sims[-1].run_round()
    assert torch.allclose(sims[0].global_flat, sims[1].global_flat, atol=1e-5)


def test_ledger_counts_every_round_even_without_clients(digits):
    x, y = digits
    part = partition_dirichlet(y.numpy(), num_clients=10, alpha=1.0, seed=0)
    agg = DpFedAvg(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, num_clients=10, sampling_rate=0.1,
                   rng=np.random.default_rng(0))
    sim = _sim(_model(), x, y, part, LocalTraining(steps=1, batch_size=8, lr=0.1), q=0.1, aggregator=agg)
    sizes = [len(sim.run_round().clients) for _ in range(12)]
    assert 0 in sizes  # some rounds had nobody, and still cost (and got) noise
    assert agg.ledger.total_count() == sim.rounds_run == 12


def test_sample_level_dp_records_each_clients_own_steps(digits):
    x, y = digits
    part = partition_dirichlet(y.numpy(), num_clients=4, alpha=1.0, seed=0)
    local = LocalTraining(steps=2, batch_size=16, lr=0.1)
    sim = _sim(_model(), x, y, part, local, q=0.5, sample_dp=SampleLevelDP(noise_multiplier=1.1, max_grad_norm=1.0))
    for _ in range(3):
        sim.run_round()
    for k, ledger in enumerate(sim.client_ledgers):
        rounds_in = sum(k in r for r in sim.participation)
        assert ledger.total_count() == 2 * rounds_in
        if rounds_in:
            n = int(part.sizes[k])
            assert flatten_event(ledger.to_event()) == [
                (PoissonSampledEvent(min(16, n) / n, GaussianEvent(1.1)), 2 * rounds_in)]
    with pytest.raises(ValueError, match="not both"):
        agg = DpFedAvg(FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, num_clients=4, sampling_rate=0.5,
                       rng=np.random.default_rng(0))
        _sim(_model(), x, y, part, local, aggregator=agg, sample_dp=SampleLevelDP(noise_multiplier=1.0,
                                                                                 max_grad_norm=1.0))


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(sampling_rate=1.01), "sampling_rate=1.01 in \\(0.0, 1.0\\]"),
        (dict(sampling_rate=-0.1), "sampling_rate"),
        (dict(sampling_rate=None, clients_per_round=11), "clients_per_round=11 in \\[1, num_clients=10\\]"),
    ],
)
def test_bad_client_sampling_is_refused(kw, needle):
    with pytest.raises(ValueError, match=needle):
        ClientSampler(num_clients=10, rng=np.random.default_rng(0), **{"sampling_rate": 0.5, **kw})


def test_local_epochs_mean_passes_over_the_average_client():
    assert LocalTraining.steps_for_epochs(2.0, sizes=[10, 30, 50], batch_size=10) == 6
    assert LocalTraining.steps_for_epochs(0.01, sizes=[10], batch_size=32) == 1


def test_a_clients_batches_depend_only_on_its_own_seed():
    from privaudit.training._fed_local import batch_plan

    rows = [np.arange(0, 5), np.arange(5, 50), np.arange(50, 53)]
    seeds = [[0, 1, 0], [0, 1, 1], [0, 1, 2]]
    full = batch_plan(rows, steps=4, batch_size=8, seeds=seeds)
    alone = batch_plan(rows[1:2], steps=4, batch_size=8, seeds=seeds[1:2])
    assert torch.equal(full.indices[1], alone.indices[0]) and torch.equal(full.mask[1], alone.mask[0])
    # Client 0 (5 rows < batch 8): every step is its whole data, padded with masked rows.
    assert full.mask[0].sum(1).tolist() == [5] * 4
    assert all(sorted(full.indices[0, t][full.mask[0, t]].tolist()) == list(range(5)) for t in range(4))
    # Client 1 (45 rows): 4 steps of 8 distinct rows drawn without replacement within an epoch.
    used = full.indices[1][full.mask[1]].tolist()
    assert len(used) == 32 == len(set(used)) and set(used) <= set(range(5, 50))
