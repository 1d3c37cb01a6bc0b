"""LOSS, LiRA and RMIA: null data gives chance, planted leakage is found, math matches closed forms."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from scipy.stats import norm

import privaudit.attacks as attacks
from privaudit.attacks import LiraAttack, LossAttack, NotFittedError, RmiaAttack, roc_auc

# --- synthetic shadow/target data -------------------------------------------------------


def _world(seed, *, k=16, n=2000, shift=1.0, spread=3.0, noise=1.0, augmentations=None):
    """Per-example difficulty d_i; phi = d_i + shift * member + noise for shadows and target.

    Returns (shadow_phi (K, n[, A]), shadow_in (K, n), target_phi (n[, A]), target_in (n,)).
    """
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, spread, size=n)
    shadow_in = rng.random((k, n)) < 0.5
    target_in = rng.random(n) < 0.5
    extra = () if augmentations is None else (augmentations,)
    shadow = (difficulty + shift * shadow_in)[..., None] + rng.normal(0, noise, size=(k, n) + (extra or (1,)))
    target = (difficulty + shift * target_in)[..., None] + rng.normal(0, noise, size=(n,) + (extra or (1,)))
    if augmentations is None:
        shadow, target = shadow[..., 0], target[..., 0]
    return shadow, shadow_in, target, target_in


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _rmia_world(seed, *, k=8, n=2000, m=1000, shift=1.0):
    """Confidences sigmoid(phi) for targets and an all-OUT population z."""
    shadow_phi, shadow_in, target_phi, target_in = _world(seed, k=k, n=n, shift=shift)
    rng = np.random.default_rng(seed + 1000)
    z_difficulty = rng.normal(0, 3.0, size=m)
    pop_ref = _sigmoid(z_difficulty + rng.normal(size=(k, m)))
    pop_target = _sigmoid(z_difficulty + rng.normal(size=m))
    return _sigmoid(shadow_phi), shadow_in, _sigmoid(target_phi), target_in, pop_ref, pop_target


def _auc_standard_error(membership):
    p, n = int(membership.sum()), int((~membership).sum())
    return math.sqrt((p + n + 1) / (12 * p * n))  # AUC's standard deviation under the null (Mann-Whitney)


LIRA_VARIANTS = [
    dict(online=True, fixed_variance=False),
    dict(online=True, fixed_variance=True),
    dict(online=False, fixed_variance=False),
    dict(online=False, fixed_variance=True),
]


# --- no membership information -> chance ------------------------------------------------


@pytest.mark.parametrize("options", LIRA_VARIANTS)
def test_lira_on_null_data_is_at_chance(options):
    shadow, shadow_in, target, target_in = _world(3, shift=0.0)
    scores = LiraAttack(**options).fit(shadow_signals=shadow, shadow_membership=shadow_in).score(target)
    assert abs(roc_auc(scores=scores, membership=target_in) - 0.5) < 4 * _auc_standard_error(target_in)


def test_loss_on_null_data_is_at_chance():
    _, _, target, target_in = _world(4, shift=0.0)
    scores = LossAttack(signal="scaled_logit").score(target)
    assert abs(roc_auc(scores=scores, membership=target_in) - 0.5) < 4 * _auc_standard_error(target_in)


@pytest.mark.parametrize("online", [True, False])
def test_rmia_on_null_data_is_at_chance(online):
    ref, ref_in, target, target_in, pop_ref, pop_target = _rmia_world(5, shift=0.0)
    attack = RmiaAttack(online=online).fit(shadow_signals=ref, shadow_membership=ref_in, population_signals=pop_ref)
    scores = attack.score(target, population_signals=pop_target)
    assert abs(roc_auc(scores=scores, membership=target_in) - 0.5) < 4 * _auc_standard_error(target_in)


# --- planted leakage is found -----------------------------------------------------------


def test_lira_online_beats_loss_on_heterogeneous_examples():
    shadow, shadow_in, target, target_in = _world(6, shift=1.0, spread=3.0)
    loss_auc = roc_auc(scores=LossAttack(signal="scaled_logit").score(target), membership=target_in)
    lira = LiraAttack(online=True).fit(shadow_signals=shadow, shadow_membership=shadow_in)
    lira_auc = roc_auc(scores=lira.score(target), membership=target_in)
    # Optimal AUC here is Phi(1 / sqrt(2)) = 0.76; a global threshold is swamped by difficulty.
    assert lira_auc > 0.66
    assert lira_auc > loss_auc + 0.08
    assert loss_auc > 0.5 + 2 * _auc_standard_error(target_in)


@pytest.mark.parametrize("options", LIRA_VARIANTS)
def test_every_lira_variant_finds_a_planted_shift(options):
    shadow, shadow_in, target, target_in = _world(7, shift=1.0)
    scores = LiraAttack(**options).fit(shadow_signals=shadow, shadow_membership=shadow_in).score(target)
    assert roc_auc(scores=scores, membership=target_in) > 0.66


@pytest.mark.parametrize("online", [True, False])
def test_rmia_finds_a_planted_shift(online):
    ref, ref_in, target, target_in, pop_ref, pop_target = _rmia_world(8, shift=1.0)
    attack = RmiaAttack(online=online).fit(shadow_signals=ref, shadow_membership=ref_in, population_signals=pop_ref)
    scores = attack.score(target, population_signals=pop_target)
    assert roc_auc(scores=scores, membership=target_in) > 0.6


# --- LiRA math --------------------------------------------------------------------------


def _exact_world(seed, n=12):
    """Shadows whose per-example sample mean and (ddof=1) variance are known exactly.

    Each example is IN for 2 or 3 of 5 shadow models, placed at random; the IN values
    are mu_in +- s_in (and mu_in for a third), likewise OUT.
    """
    rng = np.random.default_rng(seed)
    k = 5
    mu_in, mu_out = rng.normal(2, 3, size=n), rng.normal(0, 3, size=n)
    s_in, s_out = rng.uniform(0.5, 2, size=n), rng.uniform(0.5, 2, size=n)
    signals = np.empty((k, n))
    membership = np.zeros((k, n), dtype=bool)
    var_in, var_out = np.empty(n), np.empty(n)
    ss_in = ss_out = 0.0
    dof_in = dof_out = 0
    for i in range(n):
        n_in = 2 + (i % 2)
        ins = [mu_in[i] - s_in[i], mu_in[i] + s_in[i], mu_in[i]][:n_in]
        outs = [mu_out[i] - s_out[i], mu_out[i] + s_out[i], mu_out[i]][: k - n_in]
        var_in[i] = 2 * s_in[i] ** 2 / (n_in - 1)
        var_out[i] = 2 * s_out[i] ** 2 / (k - n_in - 1)
        ss_in += 2 * s_in[i] ** 2
        ss_out += 2 * s_out[i] ** 2
        dof_in += n_in - 1
        dof_out += k - n_in - 1
        perm = rng.permutation(k)
        for slot, value in zip(perm[:n_in], ins):
            signals[slot, i], membership[slot, i] = value, True
        for slot, value in zip(perm[n_in:], outs):
            signals[slot, i] = value
    target = rng.normal(1, 3, size=n)
    return signals, membership, target, mu_in, var_in, mu_out, var_out, ss_in / dof_in, ss_out / dof_out


def test_lira_online_equals_closed_form_log_likelihood_ratio():
    signals, member, target, mu_in, var_in, mu_out, var_out, _, _ = _exact_world(10)
    scores = LiraAttack(online=True).fit(shadow_signals=signals, shadow_membership=member).score(target)
    want = norm.logpdf(target, mu_in, np.sqrt(var_in)) - norm.logpdf(target, mu_out, np.sqrt(var_out))
    np.testing.assert_allclose(scores, want, rtol=1e-9, atol=1e-9)


def test_lira_fixed_variance_uses_the_pooled_within_example_variance():
    signals, member, target, mu_in, _, mu_out, _, pooled_in, pooled_out = _exact_world(11)
    attack = LiraAttack(online=True, fixed_variance=True).fit(shadow_signals=signals, shadow_membership=member)
    assert attack.fitted.pooled_var_in.tolist() == pytest.approx([pooled_in], rel=1e-12)
    assert attack.fitted.pooled_var_out.tolist() == pytest.approx([pooled_out], rel=1e-12)
    np.testing.assert_allclose(attack.fitted.var_in, pooled_in, rtol=1e-12)
    want = norm.logpdf(target, mu_in, math.sqrt(pooled_in)) - norm.logpdf(target, mu_out, math.sqrt(pooled_out))
    np.testing.assert_allclose(attack.score(target), want, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("fixed_variance", [False, True])
def test_lira_offline_is_the_one_sided_test_against_out(fixed_variance):
    signals, member, target, _, _, mu_out, var_out, _, pooled_out = _exact_world(12)
    attack = LiraAttack(online=False, fixed_variance=fixed_variance)
    scores = attack.fit(shadow_signals=signals, shadow_membership=member).score(target)
    sd = math.sqrt(pooled_out) if fixed_variance else np.sqrt(var_out)
    want = -np.log(norm.sf(target, mu_out, sd))  # -log Pr[Z >= phi], Z ~ N(mu_out, sd^2)
    np.testing.assert_allclose(scores, want, rtol=1e-9, atol=1e-9)


def test_lira_online_converges_to_the_exact_ratio_with_many_shadows():
    rng = np.random.default_rng(13)
    k, n = 20000, 15
    mu_in, mu_out = rng.normal(1, 2, size=n), rng.normal(0, 2, size=n)
    sd_in, sd_out = rng.uniform(0.5, 1.5, size=n), rng.uniform(0.5, 1.5, size=n)
    member = rng.random((k, n)) < 0.5
    signals = np.where(member, rng.normal(mu_in, sd_in, size=(k, n)), rng.normal(mu_out, sd_out, size=(k, n)))
    target = (mu_in + mu_out) / 2 + rng.normal(0, 1, size=n)
    scores = LiraAttack(online=True).fit(shadow_signals=signals, shadow_membership=member).score(target)
    exact = norm.logpdf(target, mu_in, sd_in) - norm.logpdf(target, mu_out, sd_out)
    # ~10,000 shadows a side: mu and sigma are off by ~1% of sigma, which moves each log-density
    # by ~1% of (1 + z^2); the tolerance is 5% of that (the worst of 30 seeds used 43% of it).
    z2 = ((target - mu_in) / sd_in) ** 2 + ((target - mu_out) / sd_out) ** 2
    assert np.all(np.abs(scores - exact) <= 0.05 * (1 + z2)), np.abs(scores - exact).max()

    # With a fixed variance and a common true sd, the pooled estimate is the common variance,
    # not the (much larger) variance of all IN values across examples.
    common = np.where(member, rng.normal(mu_in, 0.7, size=(k, n)), rng.normal(mu_out, 0.7, size=(k, n)))
    fitted = LiraAttack(fixed_variance=True).fit(shadow_signals=common, shadow_membership=member).fitted
    assert fitted.pooled_var_in.tolist() == pytest.approx([0.49], rel=0.03)
    assert fitted.pooled_var_out.tolist() == pytest.approx([0.49], rel=0.03)
    assert np.var(common[member]) > 2.0


@pytest.mark.parametrize("options", LIRA_VARIANTS)
def test_lira_averages_per_augmentation_scores(options):
    shadow, shadow_in, target, _ = _world(14, k=8, n=50, augmentations=3)
    attack = LiraAttack(**options).fit(shadow_signals=shadow, shadow_membership=shadow_in)
    fit = attack.fitted
    assert fit.mu_in.shape == (50, 3)
    per_aug = []
    for a in range(3):
        if options["online"]:
            per_aug.append(norm.logpdf(target[:, a], fit.mu_in[:, a], np.sqrt(fit.var_in[:, a]))
                           - norm.logpdf(target[:, a], fit.mu_out[:, a], np.sqrt(fit.var_out[:, a])))
        else:
            per_aug.append(-norm.logsf(target[:, a], fit.mu_out[:, a], np.sqrt(fit.var_out[:, a])))
    np.testing.assert_allclose(attack.score(target), np.mean(per_aug, axis=0), rtol=1e-9, atol=1e-9)
    # Each augmentation gets its own Gaussians (pooled variances too): same as fitting each column alone.
    alone = [LiraAttack(**options).fit(shadow_signals=shadow[:, :, a], shadow_membership=shadow_in)
             .score(target[:, a]) for a in range(3)]
    np.testing.assert_allclose(attack.score(target), np.mean(alone, axis=0), rtol=1e-10, atol=1e-10)
    if options["fixed_variance"]:
        assert np.all(fit.var_in == fit.pooled_var_in) and np.all(fit.var_out == fit.pooled_var_out)


def test_lira_falls_back_for_examples_missing_a_side():
    shadow, shadow_in, target, _ = _world(15, k=6, n=40)
    shadow_in = shadow_in.copy()
    shadow_in[:, 0] = False  # example 0: never IN
    shadow_in[:, 1] = True  # example 1: never OUT
    shadow_in[:2, 2] = [True, False]  # example 2: exactly one IN ...
    shadow_in[2:, 2] = False
    attack = LiraAttack(online=True).fit(shadow_signals=shadow, shadow_membership=shadow_in)
    fit = attack.fitted
    both = (fit.n_in > 0) & (fit.n_out > 0)
    gap = np.mean([shadow[shadow_in[:, i], i].mean() - shadow[~shadow_in[:, i], i].mean()
                   for i in np.flatnonzero(both)])
    assert fit.gap[0] == pytest.approx(gap)
    assert fit.mu_in[0, 0] == pytest.approx(shadow[:, 0].mean() + gap)
    assert fit.mu_out[1, 0] == pytest.approx(shadow[:, 1].mean() - gap)
    assert fit.var_in[0, 0] == pytest.approx(fit.pooled_var_in[0])
    assert fit.var_in[2, 0] == pytest.approx(fit.pooled_var_in[0])  # one IN shadow: no per-example variance
    assert fit.var_out[1, 0] == pytest.approx(fit.pooled_var_out[0])
    assert np.isfinite(attack.score(target)).all()
    for online in (True, False):
        assert np.isfinite(LiraAttack(online=online).fit(shadow_signals=shadow, shadow_membership=shadow_in)
                           .score(target)).all()


def test_lira_handles_constant_signals():
    shadow = np.ones((4, 3))
    member = np.array([[1, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 1]], dtype=bool)
    scores = LiraAttack().fit(shadow_signals=shadow, shadow_membership=member).score(np.array([1.0, 2.0, 0.0]))
    assert np.isfinite(scores).all()


# --- RMIA math --------------------------------------------------------------------------


def _rmia_naive(ref_x, ref_x_in, ref_z, ref_z_in, target_x, target_z, *, online, a, gamma):
    """The paper's Score_MIA as loops: for each x, the fraction of z with LR(x, z) >= gamma."""
    k = ref_x.shape[0]

    def marginal(conf, membership, j):
        if online:
            return sum(conf[r, j] for r in range(k)) / k
        outs = [conf[r, j] for r in range(k) if not membership[r, j]]
        if not outs:
            return sum(conf[r, j] for r in range(k)) / k
        return ((1 + a) * (sum(outs) / len(outs)) + (1 - a)) / 2

    scores = []
    for i in range(ref_x.shape[1]):
        ratio_x = target_x[i] / marginal(ref_x, ref_x_in, i)
        hits = 0
        for j in range(ref_z.shape[1]):
            ratio_z = target_z[j] / marginal(ref_z, ref_z_in, j)
            hits += ratio_x / ratio_z >= gamma
        scores.append(hits / ref_z.shape[1])
    return np.array(scores)


@pytest.mark.parametrize("online", [True, False])
@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("a", [0.0, 0.3, 1.0])
def test_rmia_matches_the_naive_pairwise_loop(online, gamma, a):
    rng = np.random.default_rng(16)
    k, n, m = 4, 30, 40
    ref_x, ref_z = rng.uniform(0.01, 1, size=(k, n)), rng.uniform(0.01, 1, size=(k, m))
    ref_x_in = rng.random((k, n)) < 0.5
    ref_x_in[:, 0] = True  # no OUT reference: offline falls back to the mean over all
    ref_z_in = rng.random((k, m)) < 0.3
    target_x, target_z = rng.uniform(0.01, 1, size=n), rng.uniform(0.01, 1, size=m)
    attack = RmiaAttack(online=online, a=a, gamma=gamma).fit(
        shadow_signals=ref_x, shadow_membership=ref_x_in, population_signals=ref_z, population_membership=ref_z_in
    )
    got = attack.score(target_x, population_signals=target_z)
    want = _rmia_naive(ref_x, ref_x_in, ref_z, ref_z_in, target_x, target_z, online=online, a=a, gamma=gamma)
    np.testing.assert_array_equal(got, want)


def test_rmia_counts_exact_ties_with_gamma_one():
    rng = np.random.default_rng(17)
    ref = rng.uniform(0.05, 1, size=(3, 10))
    member = np.zeros((3, 10), dtype=bool)
    target = rng.uniform(0.05, 1, size=10)
    # The population is the targets themselves (all OUT): LR(x, x) = 1 >= gamma counts.
    attack = RmiaAttack(online=False).fit(shadow_signals=ref, shadow_membership=member, population_signals=ref)
    got = attack.score(target, population_signals=target)
    want = _rmia_naive(ref, member, ref, member, target, target, online=False, a=0.3, gamma=1.0)
    np.testing.assert_array_equal(got, want)
    assert got.min() >= 0.1


def test_rmia_augmentation_axis_is_averaged():
    rng = np.random.default_rng(18)
    ref, ref_z = rng.uniform(0.1, 1, size=(4, 20, 2)), rng.uniform(0.1, 1, size=(4, 25, 2))
    member = rng.random((4, 20)) < 0.5
    target, target_z = rng.uniform(0.1, 1, size=(20, 2)), rng.uniform(0.1, 1, size=(25, 2))
    with_axis = RmiaAttack().fit(shadow_signals=ref, shadow_membership=member, population_signals=ref_z)
    averaged = RmiaAttack().fit(shadow_signals=ref.mean(2), shadow_membership=member, population_signals=ref_z.mean(2))
    np.testing.assert_array_equal(with_axis.score(target, population_signals=target_z),
                                  averaged.score(target.mean(1), population_signals=target_z.mean(1)))


# --- LOSS ---------------------------------------------------------------------------------


def test_loss_scores_and_global_threshold():
    loss = np.array([0.1, 2.0, 0.5])
    np.testing.assert_array_equal(LossAttack().score(loss), -loss)
    np.testing.assert_array_equal(LossAttack(signal="confidence").score(loss), loss)
    np.testing.assert_array_equal(LossAttack().score(np.array([[1.0, 3.0], [0.0, 0.0]])), [-2.0, 0.0])

    rng = np.random.default_rng(19)
    member = rng.random((5, 200)) < 0.5
    shadow_loss = rng.exponential(1.0, size=(5, 200)) * np.where(member, 0.5, 1.5)
    attack = LossAttack().fit(shadow_signals=shadow_loss, shadow_membership=member)
    scores, truth = -shadow_loss.ravel(), member.ravel()
    best = max(np.mean(scores[truth] >= t) - np.mean(scores[~truth] >= t) for t in np.unique(scores))
    chosen = attack.threshold
    assert np.mean(scores[truth] >= chosen) - np.mean(scores[~truth] >= chosen) == pytest.approx(best)
    np.testing.assert_array_equal(attack.predict(shadow_loss[0]), -shadow_loss[0] >= chosen)
    with pytest.raises(NotFittedError):
        LossAttack().threshold


# --- determinism, validation, public surface ----------------------------------------------


def test_same_seed_gives_same_scores_and_inputs_are_not_modified():
    runs = []
    for _ in range(2):
        shadow, shadow_in, target, _ = _world(20, k=8, n=300)
        before = (shadow.copy(), shadow_in.copy(), target.copy())
        lira = LiraAttack().fit(shadow_signals=shadow, shadow_membership=shadow_in).score(target)
        ref, ref_in, t, _, pop_ref, pop_t = _rmia_world(20, k=4, n=300, m=200)
        rmia = RmiaAttack().fit(shadow_signals=ref, shadow_membership=ref_in, population_signals=pop_ref)
        runs.append((lira, rmia.score(t, population_signals=pop_t)))
        for arr, orig in zip((shadow, shadow_in, target), before):
            np.testing.assert_array_equal(arr, orig)
    for first, second in zip(*runs):
        np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    ("signals", "membership", "match"),
    [
        (np.zeros((4, 5)), np.zeros((4, 6), dtype=bool), "shadow_signals"),
        (np.zeros((4, 5)), np.zeros((3, 5), dtype=bool), "shadow_signals"),
        (np.full((4, 5), np.nan), np.zeros((4, 5), dtype=bool), "shadow_signals"),
        (np.zeros((0, 5)), np.zeros((0, 5), dtype=bool), "shadow_signals"),
        (np.zeros(5), np.zeros(5, dtype=bool), "shadow_signals"),
        (np.zeros((4, 5)), np.full((4, 5), 2), "shadow_membership"),
        (np.zeros((4, 5)), np.full((4, 5), 0.5), "shadow_membership"),
        (np.zeros((4, 5)), np.zeros(5, dtype=bool), "shadow_membership"),
        (np.zeros((4, 5)), np.full((4, 5), "x"), "shadow_membership"),
    ],
)
def test_bad_shadow_input_names_the_argument(signals, membership, match):
    with pytest.raises(ValueError, match=match):
        LiraAttack().fit(shadow_signals=signals, shadow_membership=membership)
    with pytest.raises(ValueError, match=match):
        LossAttack().fit(shadow_signals=signals, shadow_membership=membership)
    with pytest.raises(ValueError, match=match):
        RmiaAttack().fit(shadow_signals=np.clip(signals, 0, 1), shadow_membership=membership,
                         population_signals=np.full((4, 3), 0.5))


def test_lira_rejects_unusable_membership_and_bad_targets():
    shadow = np.random.default_rng(0).normal(size=(4, 5))
    with pytest.raises(ValueError, match="shadow_membership"):
        LiraAttack(online=True).fit(shadow_signals=shadow, shadow_membership=np.zeros((4, 5), dtype=bool))
    with pytest.raises(ValueError, match="shadow_membership"):
        LiraAttack(online=False).fit(shadow_signals=shadow, shadow_membership=np.ones((4, 5), dtype=bool))
    with pytest.raises(ValueError, match="shadow_membership"):  # each example on one side only: no IN-OUT gap
        LiraAttack().fit(shadow_signals=shadow, shadow_membership=np.tile([True, False, True, False, True], (4, 1)))
    with pytest.raises(NotFittedError):
        LiraAttack().score(np.zeros(5))
    two_diagonals = np.eye(4, 5, dtype=bool) | np.eye(4, 5, 1, dtype=bool)
    attack = LiraAttack().fit(shadow_signals=shadow, shadow_membership=two_diagonals)
    for bad in (np.zeros(4), np.zeros((5, 2)), np.array([0, 0, np.nan, 0, 0]), np.array([0, 0, np.inf, 0, 0])):
        with pytest.raises(ValueError, match="target_signals"):
            attack.score(bad)


def test_rmia_rejects_bad_input():
    ref = np.full((3, 4), 0.5)
    member = np.zeros((3, 4), dtype=bool)
    with pytest.raises(ValueError, match="shadow_signals"):
        RmiaAttack().fit(shadow_signals=ref + 1, shadow_membership=member, population_signals=ref)
    with pytest.raises(ValueError, match="population_signals"):
        RmiaAttack().fit(shadow_signals=ref, shadow_membership=member, population_signals=np.full((2, 4), 0.5))
    with pytest.raises(ValueError, match="population_membership"):
        RmiaAttack().fit(shadow_signals=ref, shadow_membership=member, population_signals=ref,
                         population_membership=np.zeros((3, 5), dtype=bool))
    with pytest.raises(NotFittedError):
        RmiaAttack().score(np.full(4, 0.5), population_signals=np.full(4, 0.5))
    attack = RmiaAttack().fit(shadow_signals=ref, shadow_membership=member, population_signals=ref)
    with pytest.raises(ValueError, match="target_signals"):
        attack.score(np.full(5, 0.5), population_signals=np.full(4, 0.5))
    with pytest.raises(ValueError, match="target_signals"):
        attack.score(np.full(4, -0.1), population_signals=np.full(4, 0.5))
    with pytest.raises(ValueError, match="population_signals"):
        attack.score(np.full(4, 0.5), population_signals=np.full(3, 0.5))


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RmiaAttack(a=1.5), "a="),
        (lambda: RmiaAttack(gamma=0.0), "gamma"),
        (lambda: RmiaAttack(online="yes"), "online"),
        (lambda: LiraAttack(fixed_variance=1), "fixed_variance"),
        (lambda: LossAttack(signal="entropy"), "signal"),
    ],
)
def test_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_options_are_frozen():
    attack = LiraAttack(online=False)
    with pytest.raises(AttributeError):
        attack.options.online = True  # type: ignore[misc]


def test_public_api_is_sorted_and_torch_free():
    assert list(attacks.__all__) == sorted(attacks.__all__)
    assert all(hasattr(attacks, name) for name in attacks.__all__)
    public = {n for n, v in vars(attacks).items() if not n.startswith("_") and not isinstance(v, type(sys))}
    assert public <= set(attacks.__all__) | {"annotations"}, public - set(attacks.__all__)
    assert RmiaAttack.needs_population and not LiraAttack.needs_population and not LossAttack.needs_population
    code = "import sys, privaudit.attacks; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
