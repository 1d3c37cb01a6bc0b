"""Federated core: partitions, FedAvg, DP-FedAvg (clipping, noise, accounting), adaptive clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from privaudit.accounting import (GaussianEvent, PoissonSampledEvent, SampledWithoutReplacementEvent,
                                  flatten_event, make_accountant)
from privaudit.training._adaptive import AdaptiveClipping, effective_noise_multiplier, update_noise_multiplier
from privaudit.training._fed_aggregate import DpFedAvg, FedAvg, clip_updates
from privaudit.training._fed_partition import (Partition, partition_by_owner, partition_dirichlet,
                                               partition_iid)

LABELS = np.repeat(np.arange(10), 50)  # 500 examples, 10 classes


def _dp(**kw):
    base = dict(noise_multiplier=1.0, clipping_norm=1.0, num_clients=100, sampling_rate=0.1,
                rng=np.random.default_rng(0))
    return DpFedAvg(FedAvg(), **{**base, **kw})


# -- partitions -------------------------------------------------------------------------------
def test_iid_partition_is_balanced_complete_and_seeded():
    p = partition_iid(500, num_clients=7, seed=3)
    assert p.sizes.max() - p.sizes.min() <= 1
    assert sorted(np.concatenate(p.clients).tolist()) == list(range(500))
    again = partition_iid(500, num_clients=7, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(p.clients, again.clients))
    other = partition_iid(500, num_clients=7, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(p.clients, other.clients))


@pytest.mark.parametrize(("clients", "alpha"), [(10, 0.5), (300, 0.05), (500, 0.1)])
def test_dirichlet_partition_leaves_no_client_empty(clients, alpha):
    p = partition_dirichlet(LABELS, num_clients=clients, alpha=alpha, seed=0)
    assert p.num_clients == clients and p.sizes.min() >= 1
    assert sorted(np.concatenate(p.clients).tolist()) == list(range(500))


def test_small_alpha_skews_labels_and_large_alpha_does_not():
    def classes_per_client(alpha):
        p = partition_dirichlet(LABELS, num_clients=10, alpha=alpha, seed=1)
        return np.mean([np.unique(LABELS[c]).size for c in p.clients])

    assert classes_per_client(0.05) < 4 < 9.5 < classes_per_client(1000.0)


def test_owner_partition_groups_rows_by_owner_and_round_trips():
    p = partition_by_owner(np.array(["u2", "u1", "u2", "u3", "u1"]))
    assert p.owners == ("u1", "u2", "u3")
    assert [c.tolist() for c in p.clients] == [[1, 4], [0, 2], [3]]
    q = Partition.from_dict(p.to_dict())
    assert q.owners == p.owners and all(np.array_equal(a, b) for a, b in zip(p.clients, q.clients))
    assert p.client_of().tolist() == [1, 0, 1, 2, 0]


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda: partition_iid(5, num_clients=6, seed=0), "num_clients=6 in \\[1, 5\\]"),
        (lambda: partition_dirichlet(np.zeros(5, np.int64), num_clients=6, alpha=1.0, seed=0), "num_clients=6"),
        (lambda: partition_dirichlet(LABELS, num_clients=3, alpha=0.0, seed=0), "alpha=0.0 in \\(0, inf\\)"),
        (lambda: partition_dirichlet(LABELS, num_clients=3, alpha=-1.0, seed=0), "alpha"),
        (lambda: Partition(clients=(np.array([0, 1]), np.array([], np.int64)), method="iid"), "at least one"),
        (lambda: Partition(clients=(np.array([0, 1]), np.array([1])), method="iid"), "disjoint"),
    ],
)
def test_bad_partitions_are_refused(make, needle):
    with pytest.raises(ValueError, match=needle):
        make()


# -- FedAvg -----------------------------------------------------------------------------------
def test_fedavg_weights_follow_sample_counts():
    updates = torch.eye(4, dtype=torch.float64)
    counts = torch.tensor([1, 2, 3, 14])
    out = FedAvg().aggregate(updates, num_examples=counts)
    assert torch.allclose(out, counts.double() / 20)
    uniform = FedAvg(weighting="uniform").aggregate(updates, num_examples=counts)
    assert torch.allclose(uniform, torch.full((4,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("make", [FedAvg, lambda: _dp(rng=np.random.default_rng(5)),
                                  lambda: _dp(rng=np.random.default_rng(5), adaptive=AdaptiveClipping())])
def test_aggregation_is_invariant_to_client_order(make):
    g = torch.Generator().manual_seed(0)
    updates, counts = torch.randn(12, 30, generator=g, dtype=torch.float64), torch.arange(1, 13)
    perm = torch.randperm(12, generator=g)
    a, b = make(), make()
    assert torch.allclose(a.aggregate(updates, num_examples=counts),
                          b.aggregate(updates[perm], num_examples=counts[perm]), atol=1e-12)
    if isinstance(a, DpFedAvg):
        assert a.clipping_norm == pytest.approx(b.clipping_norm, rel=1e-12)


def test_server_learning_rate_and_momentum():
    agg = FedAvg(server_lr=0.5, server_momentum=0.9)
    u = torch.ones(1, 3)
    first = agg.aggregate(u, num_examples=torch.tensor([1]))
    second = agg.aggregate(u, num_examples=torch.tensor([1]))
    assert torch.allclose(first, torch.full((3,), 0.5)) and torch.allclose(second, torch.full((3,), 0.5 * 1.9))
    assert torch.equal(FedAvg().aggregate(torch.zeros(0, 3), num_examples=torch.zeros(0)), torch.zeros(3))


# -- clipping and noise -----------------------------------------------------------------------
@settings(max_examples=60, deadline=None)
@given(rows=st.lists(st.lists(st.floats(-1e3, 1e3), min_size=5, max_size=5), min_size=1, max_size=8),
       s=st.floats(1e-3, 100.0))
def test_clipped_updates_have_norm_at_most_s(rows, s):
    u = torch.tensor(rows, dtype=torch.float32)
    clipped, norms = clip_updates(u, s)
    assert bool((torch.linalg.vector_norm(clipped.double(), dim=1) <= s * (1 + 1e-6)).all())
    small = norms <= s
    assert torch.equal(clipped[small], u[small])  # within the bound: untouched
    assert torch.allclose(torch.linalg.vector_norm(clipped[~small].double(), dim=1),
                          torch.full(((~small).sum(),), s, dtype=torch.float64), rtol=1e-5)


@pytest.mark.parametrize(("sigma", "s"), [(1.0, 1.0), (0.7, 3.0)])
def test_server_noise_has_std_sigma_times_s(sigma, s):
    # Zero client updates: the noisy sum times m is exactly the noise, N(0, sigma^2 S^2) per coordinate.
    agg = _dp(noise_multiplier=sigma, clipping_norm=s, rng=np.random.default_rng(11))
    noise = agg.aggregate(torch.zeros(10, 20_000, dtype=torch.float64),
                          num_examples=torch.ones(10)).numpy() * agg.expected_clients
    assert stats.kstest(noise, "norm", args=(0.0, sigma * s)).pvalue > 1e-3
    for wrong in (0.67, 1.5):
        assert stats.kstest(noise, "norm", args=(0.0, wrong * sigma * s)).pvalue < 1e-6


def test_fixed_denominator_and_unweighted_sum():
    # Tiny noise: the estimate is sum of clipped updates / m, whatever the counts and the realised K.
    u = torch.tensor([[3.0, 4.0], [0.3, 0.4], [0.0, 0.0]], dtype=torch.float64)
    for kw, m in ((dict(sampling_rate=0.05), 5.0), (dict(sampling_rate=None, clients_per_round=4), 4.0)):
        agg = _dp(noise_multiplier=1e-12, **kw)
        out = agg.aggregate(u, num_examples=torch.tensor([1000, 1, 7]))
        assert torch.allclose(out, torch.tensor([0.9, 1.2], dtype=torch.float64) / m)


def test_rounds_are_recorded_as_the_declared_sampled_gaussian():
    pois = _dp(noise_multiplier=1.3)
    fixed = _dp(noise_multiplier=1.3, sampling_rate=None, clients_per_round=10)
    for _ in range(4):
        pois.aggregate(torch.ones(3, 2), num_examples=torch.ones(3))
        fixed.aggregate(torch.ones(10, 2), num_examples=torch.ones(10))
    assert pois.ledger.total_count() == fixed.ledger.total_count() == 4
    assert flatten_event(pois.ledger.to_event()) == [(PoissonSampledEvent(0.1, GaussianEvent(1.3)), 4)]
    assert flatten_event(fixed.ledger.to_event()) == [
        (SampledWithoutReplacementEvent(100, 10, GaussianEvent(1.3)), 4)]
    assert fixed.ledger.neighboring_relation == "replace_one"
    eps = make_accountant("pld", neighboring_relation="replace_one").compose(fixed.ledger.to_event())
    assert 0 < eps.get_epsilon(1e-5) < math.inf


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        (dict(sampling_rate=0.0), "sampling_rate=0.0 in \\(0.0, 1.0\\]"),
        (dict(sampling_rate=1.5), "sampling_rate=1.5"),
        (dict(sampling_rate=None), "exactly one"),
        (dict(clients_per_round=3), "exactly one"),
        (dict(sampling_rate=None, clients_per_round=101), "clients_per_round=101"),
        (dict(noise_multiplier=0.0), "noise_multiplier"),
        (dict(clipping_norm=-1.0), "clipping_norm"),
        (dict(rng=np.random), "numpy.random.Generator"),
    ],
)
def test_bad_dp_arguments_are_refused(kw, needle):
    with pytest.raises(ValueError, match=needle):
        _dp(**kw)


# -- adaptive clipping ------------------------------------------------------------------------
def test_effective_noise_multiplier_and_its_inverse():
    z = effective_noise_multiplier(1.2, 5.0)
    assert z == pytest.approx((1.2 ** -2 + 10.0 ** -2) ** -0.5)
    assert update_noise_multiplier(z, 5.0) == pytest.approx(1.2)
    with pytest.raises(ValueError, match="count_noise_std"):
        update_noise_multiplier(2.0, 1.0)
    agg = _dp(noise_multiplier=1.2, adaptive=AdaptiveClipping(count_noise_std=5.0))
    agg.aggregate(torch.ones(3, 2), num_examples=torch.ones(3))
    assert flatten_event(agg.ledger.to_event()) == [(PoissonSampledEvent(0.1, GaussianEvent(z)), 1)]
    assert _dp(adaptive=AdaptiveClipping()).count_noise_std == pytest.approx(10 / 20)  # m / 20


@pytest.mark.parametrize("gamma", [0.2, 0.5, 0.8])
def test_adaptive_clip_tracks_the_target_quantile(gamma):
    # 1,000 clients whose update norms are 1, 2, ..., 1000 (times 0.01): the gamma-quantile is 10 * gamma.
    n = 1000
    updates = torch.zeros(n, 2, dtype=torch.float64)
    updates[:, 0] = torch.arange(1, n + 1, dtype=torch.float64) * 0.01
    agg = _dp(num_clients=n, sampling_rate=1.0, clipping_norm=0.1,
              adaptive=AdaptiveClipping(target_quantile=gamma, learning_rate=0.2, count_noise_std=5.0))
    for _ in range(300):
        agg.aggregate(updates, num_examples=torch.ones(n))
    assert agg.clipping_norm == pytest.approx(10 * gamma, rel=0.05)
