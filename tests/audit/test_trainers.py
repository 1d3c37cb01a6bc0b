"""Built-in trainers: calibrated claims, canaries clipped by each implementation's own code, the bugs as named."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pytest

from privaudit.accounting import PLDAccountant
from privaudit.audit import (
    BUILTIN_TRAINERS,
    AuditDataset,
    BuiltinTrainer,
    GradientCanaries,
    TrainerOutput,
    TrainingOptions,
    load_trainer,
)
from privaudit.audit._whitebox import canary_projections, num_trainable

N, FEATURES, CLASSES, HIDDEN = 120, 6, 3, 8
D = FEATURES * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES  # 83 trainable parameters


def _data(canaries: GradientCanaries | None = None) -> AuditDataset:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, N)
    return AuditDataset(x=x, y=y, num_classes=CLASSES, name="toy", gradient_canaries=canaries)


def _train(name: str, dataset: AuditDataset, *, epsilon: float = 2.0, **options) -> TrainerOutput:
    opts = TrainingOptions(**{"hidden": HIDDEN, "epochs": 1.0, "sampling_rate": 1.0, **options})
    return BuiltinTrainer(name, opts)(dataset, epsilon=epsilon, delta=1e-5, seed=7, record_updates=True)


@pytest.mark.parametrize("name", BUILTIN_TRAINERS)
def test_claim_is_calibrated_to_the_requested_epsilon(name):
    out = _train(name, _data(), epsilon=3.0, sampling_rate=0.25, epochs=2.0)
    eps = PLDAccountant().compose(out.event).get_epsilon(1e-5)
    assert 0.98 * 3.0 <= eps <= 3.0
    assert out.updates.shape == (out.info["steps"], D) == (out.info["steps"], num_trainable(out.model))
    assert np.isfinite(out.updates).all()


# Projection of the first update's canary share on u_k, for an included canary of norm 100.
# Blocks hold D // 10 = 8 coordinates, so clamping each to [-C, C] leaves norm C * sqrt(8).
EXPECTED_CANARY_SHARE = {
    "privaudit": 1.0, "opacus": 1.0, "reference": 1.0, "broken-shuffle": 1.0, "broken-no-noise": 1.0,
    "broken-noise-batch": 1.0, "broken-noise-sigma": 0.5, "broken-no-clipping": 100.0,
    "broken-clamp": math.sqrt(8),
}


@pytest.mark.parametrize("name", BUILTIN_TRAINERS)
def test_canaries_are_clipped_by_the_implementation(name):
    # Full batch, one step: with and without canaries, data and noise are the same draws, so the
    # difference of the two updates is the included canaries' clipped gradients.
    canaries = GradientCanaries(count=10, included=[0, 3, 4, 9], norm=100.0, seed=1)
    with_c = _train(name, _data(canaries))
    without = _train(name, _data())
    assert with_c.info["steps"] == without.info["steps"] == 1
    diff = with_c.updates[:1] - without.updates[:1]
    share = canary_projections(diff, canaries)[0]
    expected = np.zeros(10)
    expected[[0, 3, 4, 9]] = EXPECTED_CANARY_SHARE[name]
    # atol: broken-noise-batch scales its noise by 1/B, and B counts the 4 canaries.
    np.testing.assert_allclose(share, expected, rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("name, expected_std", [
    ("reference", lambda s, c, b: s * c),
    ("broken-noise-sigma", lambda s, c, b: s),
    ("broken-noise-batch", lambda s, c, b: s * c / b),
])
def test_noise_std_is_as_named(name, expected_std):
    # The same data part with and without noise (full batch, same seed): the difference is the noise.
    opts = {"hidden": 64, "max_grad_norm": 0.5}
    noisy, clean = _train(name, _data(), **opts), _train("broken-no-noise", _data(), **opts)
    assert noisy.info["noise_multiplier"] == clean.info["noise_multiplier"]
    noise = noisy.updates[0] - clean.updates[0]
    want = expected_std(noisy.info["noise_multiplier"], 0.5, N)
    assert noisy.info["noise_std_added"] == pytest.approx(want)
    assert np.std(noise) == pytest.approx(want, rel=0.1)  # 1027 draws: the sd of the sd is ~2%


def test_shuffle_variant_claims_poisson_but_shuffles():
    out = _train("broken-shuffle", _data(), sampling_rate=0.25, epochs=2.0)
    assert out.info["sampler"] == "shuffle" and out.info["steps"] == 8
    assert out.event.event.sampling_rate == pytest.approx(0.25)  # the claim: Poisson with q = B / N


def test_training_options_validate():
    for kwargs, name in [({"hidden": 0}, "hidden"), ({"epochs": 0}, "epochs"), ({"sampling_rate": 1.5},
                         "sampling_rate"), ({"max_grad_norm": -1.0}, "max_grad_norm"), ({"lr": 0}, "lr")]:
        with pytest.raises(ValueError, match=name):
            TrainingOptions(**kwargs)
    with pytest.raises(ValueError, match="trainer"):
        BuiltinTrainer("broken-everything")


def test_load_trainer_by_name_module_and_callable(tmp_path, monkeypatch):
    (tmp_path / "my_audit_trainers.py").write_text(textwrap.dedent("""
        def train(dataset, *, epsilon, delta, seed, record_updates):
            raise NotImplementedError
        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    name, fn = load_trainer("my_audit_trainers:train")
    assert name == "my_audit_trainers:train" and callable(fn)
    assert load_trainer("opacus")[1] == BuiltinTrainer("opacus")
    assert load_trainer(fn)[1] is fn
    for bad, match in [("nosuchmodule_xyz:train", "Cannot import"), ("my_audit_trainers:nope", "no attribute"),
                       ("my_audit_trainers:NOT_CALLABLE", "callable"), ("broken-everything", "trainer="),
                       ("", "trainer")]:
        with pytest.raises(ValueError, match=match):
            load_trainer(bad)
    with pytest.raises(ValueError, match="built-in"):
        load_trainer("my_audit_trainers:train", options=TrainingOptions())
