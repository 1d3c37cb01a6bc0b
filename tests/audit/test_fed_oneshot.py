"""One-shot empirical privacy estimation for DP-FedAvg (Andrew et al. 2023): canary clients, cosines, estimate."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from privaudit.accounting._gdp_math import gdp_epsilon
from privaudit.audit import fed_oneshot_estimate, gaussian_pair_epsilon
from privaudit.cli import main
from privaudit.training._fed_settings import FederatedSettings

TINY = dict(data="digits", model="logreg", clients=6, rounds=3, client_rate=0.5, local_steps=2, batch_size=32,
            dp="client", device="cpu", eval_every=3)


def test_gaussian_pair_epsilon_is_gdp_for_equal_variances():
    for mu in (0.0, 0.3, 1.0, 4.0):
        assert gaussian_pair_epsilon(mu=mu, sigma=1.0, sigma0=1.0, delta=1e-5) == pytest.approx(
            gdp_epsilon(mu, 1e-5), rel=1e-6, abs=1e-9)
    # scale-free and symmetric in the sign of mu
    a = gaussian_pair_epsilon(mu=0.02, sigma=0.01, sigma0=0.01, delta=1e-5)
    assert a == pytest.approx(gdp_epsilon(2.0, 1e-5), rel=1e-6)
    assert gaussian_pair_epsilon(mu=-0.02, sigma=0.01, sigma0=0.01, delta=1e-5) == pytest.approx(a, rel=1e-9)
    # a variance mismatch alone is distinguishable
    assert gaussian_pair_epsilon(mu=0.0, sigma=0.5, sigma0=1.0, delta=1e-5) > 1.0


def test_tiny_noise_makes_the_canaries_clearly_visible():
    s = FederatedSettings(noise_multiplier=0.05, **TINY)
    est = fed_oneshot_estimate(s, canaries=20, null_directions=200, seed=0)
    assert est.canaries == 20 and est.dimension == 650 and est.clients == 6 and est.rounds == 3
    assert est.mu_c / est.sigma_0 > 3
    assert est.epsilon_estimate > 10 and est.epsilon_gdp > 10
    assert est.epsilon_claimed > 100  # the accountant's claim for sigma = 0.05
    assert est.canary_rounds.sum() > 0 and est.canary_cosines.shape == (est.inserted,)
    assert 0 < est.inserted < 20 and est.pool_included.sum() == est.inserted


def test_the_one_run_bound_fails_a_run_whose_noise_is_far_below_its_claim():
    # sigma = 0.05 yet a claim of about 1: the rigorous bound must exceed the claim (FAIL).
    s = FederatedSettings(noise_multiplier=0.05, **TINY)
    est = fed_oneshot_estimate(s, canaries=200, null_directions=10, seed=1)
    small_claim = 1.0
    assert est.epsilon_lower > small_claim  # what any run claiming epsilon = 1 would be refuted by
    # Most guesses right (an inserted canary that was never sampled in a round looks OUT).
    assert est.bound["correct"] >= 0.9 * est.bound["guesses"]


def test_correct_dp_fedavg_passes_the_one_run_audit():
    for seed in range(3):
        est = fed_oneshot_estimate(FederatedSettings(target_epsilon=2.0, **TINY), canaries=100,
                                   null_directions=10, seed=seed)
        assert est.verdict == "PASS" and est.epsilon_lower <= est.epsilon_claimed


def test_large_noise_estimate_is_near_zero():
    s = FederatedSettings(noise_multiplier=50.0, **TINY)
    est = fed_oneshot_estimate(s, canaries=1000, null_directions=200, seed=0)
    assert abs(est.mu_c) / est.sigma_0 < 0.2
    assert est.epsilon_gdp < 0.5 and est.epsilon_estimate < 1.0
    assert est.epsilon_claimed < 0.2


def test_the_estimate_never_uses_the_null_directions():
    s = FederatedSettings(noise_multiplier=1.0, **TINY)
    a = fed_oneshot_estimate(s, canaries=30, null_directions=5, seed=3)
    b = fed_oneshot_estimate(s, canaries=30, null_directions=2000, seed=3)
    assert a.epsilon_estimate == b.epsilon_estimate and a.mu_c == b.mu_c and a.sigma_c == b.sigma_c
    np.testing.assert_array_equal(a.canary_cosines, b.canary_cosines)
    # the null directions were never inserted: their cosines follow N(0, 1/d)
    assert abs(b.null_mean) < 4 * b.sigma_0 / math.sqrt(2000)
    assert b.null_std == pytest.approx(b.sigma_0, rel=0.1)


@pytest.mark.parametrize("canaries", [0, -1, True, 1.5])
def test_bad_canary_counts_are_refused(canaries):
    with pytest.raises(ValueError, match="canaries >= 1"):
        fed_oneshot_estimate(FederatedSettings(noise_multiplier=1.0, **TINY), canaries=canaries)


@pytest.mark.parametrize("dp", ["sample", "none"])
def test_only_client_level_dp_is_estimated(dp):
    kw = {**TINY, "dp": dp}
    s = FederatedSettings(**kw) if dp == "none" else FederatedSettings(noise_multiplier=1.0, **kw)
    with pytest.raises(ValueError, match="expected dp='client'"):
        fed_oneshot_estimate(s, canaries=5)


def test_adaptive_clipping_is_refused():
    with pytest.raises(ValueError, match="adaptive clipping"):
        fed_oneshot_estimate(FederatedSettings(noise_multiplier=1.0, adaptive_clip=True, **TINY), canaries=5)


def test_fixed_updates_replace_training_and_leave_other_clients_alone():
    from privaudit.training import build_model
    from privaudit.training._federated import (ClientSampler, FedAvg, FederatedSimulation, LocalTraining,
                                               partition_iid)

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=g), torch.randint(0, 2, (40,), generator=g)
    part = partition_iid(40, num_clients=4, seed=0)

    def sim(fixed):
        torch.manual_seed(0)
        return FederatedSimulation(module=build_model("logreg", input_shape=(5,), num_classes=2), x=x, y=y,
                                   partition=part, local=LocalTraining(steps=2, batch_size=4, lr=0.1),
                                   aggregator=FedAvg(), seed=1, fixed_updates=fixed,
                                   sampler=ClientSampler(num_clients=4, sampling_rate=1.0,
                                                         rng=np.random.default_rng(0)))

    plain = sim(None)
    u = torch.arange(12, dtype=torch.float32)
    with_fixed = sim({2: u})
    a = plain.client_updates([0, 1, 2, 3], round_number=1)
    b = with_fixed.client_updates([0, 1, 2, 3], round_number=1)
    torch.testing.assert_close(b[[0, 1, 3]], a[[0, 1, 3]])
    torch.testing.assert_close(b[2], u)
    with pytest.raises(ValueError, match="fixed update"):
        sim({1: torch.zeros(3)})


def test_cli_prints_the_claim_and_the_estimate_and_writes_audit_json(tmp_path):
    out = tmp_path / "oneshot"
    args = ["audit", "--trainer", "dp-fedavg", "--epsilon", "4", "--canaries", "20", "--clients", "6",
            "--rounds", "3", "--client-rate", "0.5", "--local-steps", "2", "--model", "logreg",
            "--null-directions", "50", "--alpha", "0.1", "--quiet", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "90% confidence" in result.output  # --alpha reaches the one-run bound
    assert "epsilon claimed" in result.output and "NOT a bound" in result.output and "verdict: PASS" in result.output
    data = json.loads((out / "audit.json").read_text())
    assert data["kind"] == "estimate" and data["canaries"] == 20 and data["dimension"] == 650
    assert data["verdict"] == "PASS" and data["epsilon_lower"] <= data["epsilon_claimed"]
    assert data["epsilon_claimed"] == pytest.approx(4.0, abs=0.05)
    assert {"epsilon_estimate", "mu_c", "sigma_c", "epsilon_gdp"} <= set(data)


@pytest.mark.parametrize("extra, message", [
    (["--canaries", "0"], "canaries >= 1"),
    (["--canaries", "5", "--threat", "whitebox"], "--threat does not apply"),
])
def test_cli_bad_input_exits_2(extra, message):
    result = CliRunner().invoke(main, ["audit", "--trainer", "dp-fedavg", "--epsilon", "2", "--quiet", *extra])
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output


def test_federated_flags_need_the_dp_fedavg_trainer():
    result = CliRunner().invoke(main, ["audit", "--trainer", "privaudit", "--epsilon", "2", "--canaries", "5",
                                       "--rounds", "3"])
    assert result.exit_code == 2 and "--rounds applies to --trainer dp-fedavg only" in result.output


def test_result_is_json_ready():
    est = fed_oneshot_estimate(FederatedSettings(noise_multiplier=1.0, **{**TINY, "rounds": 1}), canaries=3,
                               null_directions=3)
    d = est.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["kind"] == "estimate" and "ESTIMATE" in d["note"] and "rigorous one-run lower bound" in d["note"]
    assert dataclasses.fields(est)
