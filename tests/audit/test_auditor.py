"""The audit end to end: the one-run guess grid, the verdict, user trainers, files, soundness and power."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from privaudit.accounting import calibrate_noise_multiplier, dpsgd_event
from privaudit.accounting._gdp_math import gdp_epsilon
from privaudit.audit import (
    AuditResult,
    TrainerOutput,
    TrainingOptions,
    audit,
    one_run_epsilon,
    one_run_two_sided,
    write_audit,
)
from privaudit.audit._auditor import GUESS_FRACTIONS

# ---------------------------------------------------------------- the one-run guess grid


def _two_sided_naive(scores, member, delta, alpha):
    """Algorithm 1 of arXiv:2305.08846 with k+ = k- = k, written out: sort, count, bound, keep the best."""
    n = len(scores)
    ks = sorted({min(max(1, int(f * n)), n // 2) for f in GUESS_FRACTIONS})
    ranked = sorted(range(n), key=lambda i: (-scores[i], i))
    best = 0.0
    for k in ks:
        right = sum(member[i] for i in ranked[:k]) + sum(not member[i] for i in ranked[n - k:])
        best = max(best, one_run_epsilon(m=n, r=2 * k, v=right, delta=delta, alpha=alpha / len(ks)))
    return best


@pytest.mark.parametrize("shift, n, delta", [(0.0, 300, 1e-5), (1.0, 500, 0.0), (3.0, 1000, 1e-6)])
def test_two_sided_grid_matches_naive(shift, n, delta):
    rng = np.random.default_rng(int(shift * 10) + n)
    member = rng.random(n) < 0.5
    scores = rng.normal(size=n) + shift * member
    got = one_run_two_sided(scores, member, delta=delta, alpha=0.05)
    assert got.epsilon == pytest.approx(_two_sided_naive(scores, member, delta, 0.05), abs=1e-9)
    assert got.thresholds_tried == len({min(max(1, int(f * n)), n // 2) for f in GUESS_FRACTIONS})


def test_two_sided_grid_rejects_eps_zero_rarely_without_signal():
    # Scores independent of membership: "epsilon > 0" must be claimed in at most ~alpha of audits.
    rng = np.random.default_rng(0)
    hits = sum(one_run_two_sided(rng.normal(size=200), rng.random(200) < 0.5, delta=0.0).epsilon > 0
               for _ in range(200))
    assert hits <= 20  # Binomial(200, 0.05) exceeds 20 with probability < 0.2%


@pytest.mark.parametrize("mu", [0.5, 1.5, 3.0])
def test_bound_never_exceeds_the_true_epsilon_of_a_gaussian_mechanism(mu):
    # IN scores N(mu, 1) vs OUT N(0, 1) are exactly the mu-GDP trade-off curve.
    rng = np.random.default_rng(1)
    true_eps = gdp_epsilon(mu, 1e-5)
    for _ in range(20):
        member = rng.random(2000) < 0.5
        b = one_run_two_sided(rng.normal(size=2000) + mu * member, member, delta=1e-5)
        assert b.epsilon <= true_eps


def test_two_sided_grid_validates():
    with pytest.raises(ValueError, match="membership"):
        one_run_two_sided([1.0, 2.0], [1, 0, 1], delta=0.0)
    with pytest.raises(ValueError, match="alpha"):
        one_run_two_sided([1.0, 2.0], [1, 0], delta=0.0, alpha=1.0)
    with pytest.raises(ValueError, match="m="):
        one_run_two_sided([1.0, 2.0], [1, 0], delta=0.0, m=1)
    assert one_run_two_sided([1.0], [True], delta=0.0).guesses == 1


# ---------------------------------------------------------------- white-box scores


def _projections(rng, *, steps, m, q, noise, drift=0.0):
    member = rng.random(m) < 0.5
    hits = (rng.random((steps, m)) < q) & member
    offset = drift * np.linspace(1.0, 0.0, steps)[:, None] * rng.normal(size=m)  # early, coherent drift
    return hits + noise * rng.normal(size=(steps, m)) + offset, member


def test_lda_weights_are_flat_for_pure_noise_and_discount_a_drift():
    from privaudit.audit._whitebox import _fisher_weights, whitebox_scores

    rng = np.random.default_rng(0)
    x, member = _projections(rng, steps=20, m=20_000, q=1.0, noise=3.0)
    w = _fisher_weights(x)
    np.testing.assert_allclose(w / w.mean(), 1.0, atol=0.1)
    x, member = _projections(rng, steps=20, m=20_000, q=1.0, noise=3.0, drift=3.0)
    event = dpsgd_event(3.0, 20, sampling_rate=1.0)
    stat, lda = whitebox_scores(x, event=event, max_grad_norm=1.0)
    assert stat == "lda"
    _, plain = whitebox_scores(x, event=event, max_grad_norm=1.0, statistic="sum")
    assert one_run_two_sided(lda, member, delta=0.0).epsilon > one_run_two_sided(plain, member, delta=0.0).epsilon


def test_auto_statistic_follows_the_claim_and_the_observed_noise():
    from privaudit.accounting import ComposedEvent, GaussianEvent
    from privaudit.audit._whitebox import claimed_dpsgd, whitebox_scores

    rng = np.random.default_rng(1)
    claim = dpsgd_event(2.0, 30, sampling_rate=0.1)
    x, _ = _projections(rng, steps=30, m=500, q=0.1, noise=2.0)
    assert whitebox_scores(x, event=claim, max_grad_norm=1.0)[0] == "lr"
    assert whitebox_scores(x, event=claim, max_grad_norm=None)[0] == "sum"
    quiet, _ = _projections(rng, steps=30, m=500, q=0.1, noise=0.05)  # far less noise than claimed
    assert whitebox_scores(quiet, event=claim, max_grad_norm=1.0)[0] == "lr-centered"
    other = ComposedEvent((GaussianEvent(1.0), GaussianEvent(2.0)))
    assert claimed_dpsgd(other) is None
    assert whitebox_scores(x, event=other, max_grad_norm=1.0)[0] == "sum"
    with pytest.raises(ValueError, match="statistic"):
        whitebox_scores(x, event=other, max_grad_norm=1.0, statistic="lr")


# ---------------------------------------------------------------- user trainers (no training needed)


def _gaussian_trainer(*, noise_scale: float, steps: int = 20):
    """The white-box Gaussian mechanism: every step adds each included canary (norm C = 1, clipped)
    to noise of std `noise_scale` times the claimed sigma * C, claiming full-batch DP-GD."""

    def train(dataset, *, epsilon, delta, seed, record_updates):
        model = nn.Linear(64, 62)  # 4,030 parameters: room for 4,000 Dirac canaries
        d = 64 * 62 + 62
        sigma = calibrate_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sampling_rate=1.0,
                                           steps=steps)
        rng = np.random.default_rng(seed)
        updates = noise_scale * sigma * rng.normal(size=(steps, d))
        gc = dataset.gradient_canaries
        if gc is not None:
            coords, values = gc.directions(d)
            for k in gc.included:
                updates[:, coords[k]] += values[k]
        return TrainerOutput(model=model, event=dpsgd_event(sigma, steps, sampling_rate=1.0), delta=delta,
                             max_grad_norm=1.0, updates=updates if record_updates else None)

    return train


@pytest.mark.parametrize("epsilon", [1.0, 4.0])
def test_exact_gaussian_mechanism_passes_and_the_estimate_is_close(epsilon):
    result = audit(_gaussian_trainer(noise_scale=1.0), epsilon=epsilon, delta=1e-5, canaries=4000,
                   threat="whitebox", seed=3)
    assert result.verdict == "PASS"
    assert result.epsilon_claimed == pytest.approx(epsilon, rel=0.01)
    assert result.epsilon_lower <= result.epsilon_claimed
    assert result.canary_info["support"] == 1 and result.statistic == "lda"
    assert result.gdp is not None and result.gdp.is_bound is False
    # The score is exactly Gaussian here, so the fit is consistent: ~3% error on mu from 4,000 canaries.
    assert result.gdp.epsilon == pytest.approx(epsilon, rel=0.25)


def test_a_trainer_with_a_tenth_of_its_noise_fails():
    result = audit(_gaussian_trainer(noise_scale=0.1), epsilon=1.0, delta=1e-5, canaries=600,
                   threat="whitebox", seed=0)
    assert result.verdict == "FAIL"
    assert result.epsilon_lower > 2.0 * result.epsilon_claimed
    assert result.statistic == "lda"  # the default under a claimed full batch


def test_multi_run_uses_clopper_pearson_over_runs():
    result = audit(_gaussian_trainer(noise_scale=0.01), epsilon=0.5, delta=1e-5, canaries=1, runs=40,
                   threat="whitebox", seed=0)
    assert result.bound.method == "clopper-pearson/bonferroni"
    assert result.bound.positives + result.bound.negatives == 40
    assert result.verdict == "FAIL"  # 40 perfectly separated runs prove epsilon > 0.5
    assert result.scores.shape == (40,)
    assert result.statistic == "sum"  # fixed by the claim (full batch) before any run is seen


def test_trainer_contract_is_checked():
    def no_updates(dataset, *, epsilon, delta, seed, record_updates):
        return TrainerOutput(model=nn.Linear(64, 10), event=dpsgd_event(1.0, 1, sampling_rate=1.0), delta=delta)

    with pytest.raises(ValueError, match="updates"):
        audit(no_updates, epsilon=1.0, delta=1e-5, canaries=10, threat="whitebox")

    def not_an_output(dataset, *, epsilon, delta, seed, record_updates):
        return {"model": None}

    with pytest.raises(ValueError, match="TrainerOutput"):
        audit(not_an_output, epsilon=1.0, delta=1e-5, canaries=10)


@pytest.mark.parametrize("kwargs, name", [
    ({"epsilon": 0.0}, "epsilon"), ({"delta": 1.0}, "delta"), ({"canaries": 0}, "canaries"),
    ({"threat": "greybox"}, "threat"), ({"runs": 0}, "runs"), ({"alpha": 0.0}, "alpha"),
    ({"seed": -1}, "seed"), ({"runs": 5, "canaries": 10}, "canaries=1"), ({"canary_kind": "x"}, "canary_kind"),
    ({"statistic": "max"}, "statistic"), ({"trainer": "nope"}, "trainer"),
    ({"statistic": "lr", "threat": "blackbox"}, "statistic"),
    ({"statistic": "scaled_logit", "threat": "whitebox"}, "statistic"),
])
def test_audit_validates_arguments(kwargs, name):
    args = {"trainer": "reference", "epsilon": 1.0, "delta": 1e-5, "canaries": 10, **kwargs}
    with pytest.raises(ValueError, match=name):
        audit(args.pop("trainer"), **args)


def test_blackbox_audit_writes_json_and_plots(tmp_path):
    def untrained(dataset, *, epsilon, delta, seed, record_updates):
        torch.manual_seed(seed)
        return TrainerOutput(model=nn.Linear(64, 10), event=dpsgd_event(2.0, 10, sampling_rate=0.1), delta=delta)

    result = audit(untrained, epsilon=1.0, delta=1e-5, canaries=100, seed=1, out_dir=tmp_path / "a")
    assert isinstance(result, AuditResult) and result.verdict == "PASS"
    assert result.statistic == "scaled_logit-ring" and result.canary_info["kind"] == "outlier"  # the defaults
    assert result.canary_info["ring_points"] == 32 and result.canary_info["norm"] > 20.0
    data = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert data["verdict"] == "PASS" and data["epsilon_lower_bound"] == result.epsilon_lower
    assert len(data["scores"]) == 100 and sum(data["membership"]) == int(result.membership.sum())
    assert data["gdp_estimate"] is None or data["gdp_estimate"]["is_bound"] is False
    for png in ("audit_scores.png", "audit_bound.png"):
        assert (tmp_path / "a" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = write_audit(result, tmp_path / "b", plots=False)
    assert [p.name for p in again] == ["audit.json"]


def test_data_may_be_a_loaded_dataset():
    from privaudit.training._data import load_dataset

    def untrained(dataset, *, epsilon, delta, seed, record_updates):
        model = nn.Linear(dataset.input_shape[0], dataset.num_classes)
        return TrainerOutput(model=model, event=dpsgd_event(2.0, 10, sampling_rate=0.1), delta=delta)

    result = audit(untrained, epsilon=1.0, delta=1e-5, canaries=40, data=load_dataset("breast-cancer"),
                   canary_kind="mislabeled")
    assert result.data == "breast-cancer" and result.canary_info["base_examples"] == 455 - 40
    assert result.statistic == "scaled_logit"  # "auto" keeps the plain scaled logit for mislabelled rows
    outliers = audit(untrained, epsilon=1.0, delta=1e-5, canaries=40, data=load_dataset("breast-cancer"))
    assert outliers.canary_info["kind"] == "outlier" and outliers.canary_info["base_examples"] == 455
    with pytest.raises(ValueError, match="data"):
        audit(untrained, epsilon=1.0, delta=1e-5, canaries=40, data=3)


def test_importing_the_audit_package_does_not_import_torch():
    code = ("import sys, privaudit.audit as a; a.one_run_two_sided([1.0, 0.0], [1, 0], delta=0.0); "
            "a.AuditResult; a.GradientCanaries; sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# ---------------------------------------------------------------- real DP-SGD: soundness and power

SMALL = TrainingOptions(hidden=64, epochs=1.0, sampling_rate=0.2)  # 4,810 parameters, 5 steps
BLACKBOX_DIGITS = TrainingOptions(hidden=128, epochs=10.0, sampling_rate=0.2)  # 50 Poisson steps


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["privaudit", "opacus"])
@pytest.mark.parametrize("epsilon", [1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("threat", ["whitebox", "blackbox"])
def test_correct_dpsgd_never_fails(trainer, epsilon, threat):
    # White-box: gradient canaries on a small MLP; black-box: the outlier canaries on digits.
    canaries, options = (500, SMALL) if threat == "whitebox" else (300, BLACKBOX_DIGITS)
    result = audit(trainer, epsilon=epsilon, delta=1e-5, canaries=canaries, threat=threat, options=options,
                   seed=int(epsilon))
    assert result.verdict == "PASS", result.to_dict(include_scores=False)
    assert result.epsilon_claimed <= epsilon
    assert result.epsilon_lower <= result.epsilon_claimed


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["broken-no-clipping", "broken-noise-batch"])
def test_broken_dpsgd_fails_by_a_factor_two(trainer):
    # breast-cancer (455 rows, 30 features) keeps the test cheap; 8,450 parameters hold 1,000
    # canaries of 8 coordinates; 31 Poisson steps at q = 0.2 sample nearly every included canary.
    options = TrainingOptions(hidden=256, epochs=6.0, sampling_rate=0.2)
    result = audit(trainer, epsilon=2.0, delta=1e-5, canaries=1000, threat="whitebox", options=options,
                   data="breast-cancer", seed=0)
    assert result.verdict == "FAIL"
    assert result.epsilon_lower >= 2.0 * result.epsilon_claimed
    assert math.isfinite(result.epsilon_claimed)


# ---------------------------------------------------------------- black-box: outlier canaries and the ring


def test_ring_inputs_are_antithetic_at_the_angle():
    from privaudit.audit._blackbox import ring_inputs

    x = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32) * 10
    ring = ring_inputs(x, angle_degrees=30.0, points=6, seed=4)
    assert ring.shape == (6, 50, 16)
    np.testing.assert_allclose(np.linalg.norm(ring, axis=2), np.broadcast_to(np.linalg.norm(x, axis=1), (6, 50)),
                               rtol=1e-5)
    cos = (ring * x).sum(2) / (np.linalg.norm(ring, axis=2) * np.linalg.norm(x, axis=1))
    np.testing.assert_allclose(cos, math.cos(math.radians(30.0)), atol=1e-5)
    np.testing.assert_allclose(ring[0] + ring[1], 2 * math.cos(math.radians(30.0)) * x, atol=1e-4)
    assert np.array_equal(ring, ring_inputs(x, angle_degrees=30.0, points=6, seed=4))
    for bad in ({"points": 3}, {"points": 0}, {"angle_degrees": 0.0}, {"angle_degrees": 180.0}):
        with pytest.raises(ValueError, match="points|angle"):
            ring_inputs(x, **bad)


def test_ring_statistic_is_zero_where_the_model_ignores_its_input_and_peaks_at_a_memorised_canary():
    from privaudit.audit import make_input_canaries
    from privaudit.audit._blackbox import blackbox_scores

    x = np.random.default_rng(0).random((100, 64)).astype(np.float32)  # 64 features: the canaries are ~orthogonal
    canaries, _ = make_input_canaries(x, np.arange(100) % 3, num_classes=3, count=20, kind="outlier", seed=1)

    class Constant(nn.Module):
        def forward(self, inputs):
            return torch.tensor([1.0, -2.0, 0.5]).expand(inputs.shape[0], 3)

    np.testing.assert_allclose(blackbox_scores(Constant(), canaries, statistic="scaled_logit-ring"), 0.0, atol=1e-12)

    class Peaked(nn.Module):  # "memorised" canary 0: its label gets a bump that decays away from it
        def forward(self, inputs):
            u = torch.as_tensor(canaries.x[0] / np.linalg.norm(canaries.x[0]))
            cos = (inputs @ u) / inputs.norm(dim=1)
            bump = torch.relu(cos - 0.8) * 20.0
            out = torch.zeros(inputs.shape[0], 3, dtype=inputs.dtype)
            out[:, int(canaries.y[0])] = bump
            return out

    ring = blackbox_scores(Peaked(), canaries, statistic="scaled_logit-ring")
    assert ring[0] > 2.0 and np.abs(ring[1:]).max() < 1e-6  # 3.31 at the canary, 0.64 on its ring
    with pytest.raises(ValueError, match="statistic"):
        blackbox_scores(Constant(), canaries, statistic="lr")


# breast-cancer (455 rows): 50 Poisson steps at q = 0.2 keep these fast; digits below is the data.
BLACKBOX_FAST = TrainingOptions(hidden=256, epochs=10.0, sampling_rate=0.2)


@pytest.mark.parametrize("trainer, verdict", [("broken-noise-batch", "FAIL"), ("privaudit", "PASS")])
def test_blackbox_outlier_audit_tells_too_little_noise_from_correct_dpsgd(trainer, verdict):
    result = audit(trainer, epsilon=1.0, delta=1e-5, canaries=300, threat="blackbox", data="breast-cancer",
                   options=BLACKBOX_FAST, seed=0)
    assert result.canary_info["kind"] == "outlier" and result.statistic == "scaled_logit-ring"
    assert result.verdict == verdict, result.to_dict(include_scores=False)
    if verdict == "FAIL":
        assert result.epsilon_lower >= 2.0 * result.epsilon_claimed


@pytest.mark.slow
@pytest.mark.parametrize("trainer", ["broken-no-clipping", "broken-noise-batch"])
def test_blackbox_outlier_audit_catches_broken_dpsgd_on_digits(trainer):
    result = audit(trainer, epsilon=1.0, delta=1e-5, canaries=300, threat="blackbox", options=BLACKBOX_DIGITS,
                   seed=0)
    assert result.verdict == "FAIL", result.to_dict(include_scores=False)
    assert result.epsilon_lower >= 2.0 * result.epsilon_claimed
    plain = audit(trainer, epsilon=1.0, delta=1e-5, canaries=300, threat="blackbox", options=BLACKBOX_DIGITS,
                  seed=0, statistic="scaled_logit")
    assert plain.epsilon_lower < result.epsilon_lower  # the ring is what lifts the bound
