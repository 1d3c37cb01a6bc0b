"""Signals from logits: naive formulas where they are finite, finite where they are not."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from privaudit.attacks import SIGNAL_KINDS, compute_signal, confidence, cross_entropy_loss, scaled_logit


def _naive(logits_row, label):
    """(loss, p_y, phi) for one example, straight from the softmax definition."""
    exps = [math.exp(v) for v in logits_row]
    total = sum(exps)
    probs = [e / total for e in exps]
    p_y = probs[label]
    rest = sum(p for j, p in enumerate(probs) if j != label)
    return -math.log(p_y), p_y, math.log(p_y) - math.log(rest)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    n=st.integers(1, 6),
    num_classes=st.integers(2, 6),
)
def test_signals_match_naive_formula_on_moderate_logits(data, n, num_classes):
    logits = data.draw(hnp.arrays(np.float64, (n, num_classes), elements=st.floats(-30, 30)))
    labels = np.array(data.draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    want = np.array([_naive(logits[i], labels[i]) for i in range(n)])
    np.testing.assert_allclose(cross_entropy_loss(logits=logits, labels=labels), want[:, 0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(confidence(logits=logits, labels=labels), want[:, 1], rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(scaled_logit(logits=logits, labels=labels), want[:, 2], rtol=1e-9, atol=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    logits=hnp.arrays(np.float64, (4, 5), elements=st.floats(-1000, 1000)),
    label=st.integers(0, 4),
    shift=st.floats(-1e3, 1e3),
)
def test_phi_is_finite_and_shift_invariant_for_extreme_logits(logits, label, shift):
    labels = np.full(4, label)
    phi = scaled_logit(logits=logits, labels=labels)
    loss = cross_entropy_loss(logits=logits, labels=labels)
    assert np.isfinite(phi).all() and np.isfinite(loss).all()
    np.testing.assert_allclose(scaled_logit(logits=logits + shift, labels=labels), phi, rtol=1e-9, atol=1e-9)
    # phi > 0 exactly when p_y > 1/2, i.e. when z_y beats the log-sum-exp of the others.
    others = np.delete(logits, label, axis=1)
    lse = np.log(np.sum(np.exp(others - others.max(axis=1, keepdims=True)), axis=1)) + others.max(axis=1)
    np.testing.assert_allclose(phi, logits[:, label] - lse, rtol=1e-12, atol=1e-9)


def test_extreme_logits_give_exact_values():
    logits = np.array([[1000.0, -1000.0, 0.0], [1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 1000.0]])
    labels = np.array([0, 1, 2])
    np.testing.assert_allclose(scaled_logit(logits=logits, labels=labels), [1000.0, -2000.0, 0.0], atol=1e-9)
    np.testing.assert_allclose(cross_entropy_loss(logits=logits, labels=labels), [0.0, 2000.0, math.log(2)], atol=1e-9)
    np.testing.assert_allclose(confidence(logits=logits, labels=labels), [1.0, 0.0, 0.5], atol=1e-12)


def test_augmentations_mean_and_none():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 5, size=(3, 7, 4))  # (A, n, C)
    labels = rng.integers(0, 4, size=7)
    for fn in (cross_entropy_loss, confidence, scaled_logit):
        per_aug = np.stack([fn(logits=logits[a], labels=labels) for a in range(3)], axis=1)  # (n, A)
        kept = fn(logits=logits, labels=labels, aggregate="none")
        assert kept.shape == (7, 3)
        np.testing.assert_allclose(kept, per_aug, rtol=1e-12)
        np.testing.assert_allclose(fn(logits=logits, labels=labels), per_aug.mean(axis=1), rtol=1e-12)
        assert fn(logits=logits[0], labels=labels, aggregate="none").shape == (7,)


def test_compute_signal_dispatches():
    logits = np.array([[2.0, 0.0, -1.0]])
    labels = np.array([0])
    for kind in SIGNAL_KINDS:
        fn = {"loss": cross_entropy_loss, "confidence": confidence, "scaled_logit": scaled_logit}[kind]
        np.testing.assert_array_equal(compute_signal(kind=kind, logits=logits, labels=labels),
                                      fn(logits=logits, labels=labels))
    with pytest.raises(ValueError, match="kind"):
        compute_signal(kind="entropy", logits=logits, labels=labels)


@pytest.mark.parametrize(
    ("logits", "labels", "match"),
    [
        (np.zeros((3, 4)), np.array([0, 1, 4]), "labels"),
        (np.zeros((3, 4)), np.array([0, -1, 2]), "labels"),
        (np.zeros((3, 4)), np.array([0, 1]), "labels"),
        (np.zeros((3, 4)), np.array([0.0, 1.0, 2.0]), "labels"),
        (np.zeros((3, 4)), np.array([[0, 1, 2]]), "labels"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), np.array([0, 1]), "logits"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), np.array([0, 1]), "logits"),
        (np.zeros((0, 4)), np.zeros(0, dtype=int), "logits"),
        (np.zeros((3, 1)), np.array([0, 0, 0]), "logits"),
        (np.zeros(4), np.array([0]), "logits"),
        (np.zeros((2, 3, 4, 5)), np.array([0, 0, 0]), "logits"),
    ],
)
def test_bad_input_names_the_argument(logits, labels, match):
    for fn in (cross_entropy_loss, confidence, scaled_logit):
        with pytest.raises(ValueError, match=match):
            fn(logits=logits, labels=labels)


def test_bad_aggregate():
    with pytest.raises(ValueError, match="aggregate"):
        scaled_logit(logits=np.zeros((2, 3)), labels=np.array([0, 1]), aggregate="median")
