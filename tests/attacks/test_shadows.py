"""Shadow models trained side by side: equal to K separate trainings, balanced, shardable."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from privaudit.attacks._model_signals import model_logits, stack_models, stacked_model_logits
from privaudit.attacks._shadow_grads import StackedGrads, mlp_layers
from privaudit.attacks._shadows import ShadowConfig, assign_membership, shadow_seeds, train_shadows
from privaudit.training import build_model, make_private

N, D, CLASSES, K = 60, 5, 3, 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(size=(N, D)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, N))
    return x, y


def _mlp(seed: int) -> nn.Module:
    return build_model("mlp", input_shape=(D,), num_classes=CLASSES, hidden=8)


def _sequential(cfg: ShadowConfig, x, y, membership, seeds, model_fn=_mlp):
    """The oracle: each model trained on its own by the engine (`make_private`), as `train_job` would."""
    out = []
    for k, seed in enumerate(seeds):
        torch.manual_seed(seed)
        model = model_fn(seed)
        rows = np.flatnonzero(membership[k])
        optimizer = (torch.optim.Adam(model.parameters(), lr=cfg.lr) if cfg.optimizer == "adam"
                     else torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum))
        batch = (max(1, min(len(rows), round(cfg.sampling_rate * len(rows)))) if cfg.sampling_rate is not None
                 else min(cfg.batch_size, len(rows)))
        trainer = make_private(
            module=model, optimizer=optimizer,
            data=(x[rows], y[rows]), loss_fn=nn.CrossEntropyLoss(), epochs=cfg.epochs,
            expected_batch_size=batch, max_grad_norm=None if cfg.no_dp else cfg.max_grad_norm,
            noise_multiplier=cfg.noise_multiplier, clipping=cfg.clipping, seed=seed, no_dp=cfg.no_dp)
        trainer.run()
        trainer.close()
        out.append({n: p.detach().clone() for n, p in model.named_parameters()})
    return out


CONFIGS = {
    "no_dp": ShadowConfig(epochs=3, batch_size=8, lr=0.1, no_dp=True),
    "dp_ghost": ShadowConfig(epochs=3, batch_size=8, lr=0.5, max_grad_norm=0.5, noise_multiplier=1.0,
                             per_example="ghost"),
    "dp_materialize": ShadowConfig(epochs=3, batch_size=8, lr=0.5, max_grad_norm=0.5, noise_multiplier=1.0,
                                   per_example="materialize", chunk_size=5),
    "dp_per_layer": ShadowConfig(epochs=3, batch_size=8, lr=0.5, max_grad_norm=0.5, noise_multiplier=1.0,
                                 clipping="per_layer"),
    # The default recipe's optimizer and batch rule: Adam, batch = round(q * N_k) per model.
    "dp_adam_rate": ShadowConfig(epochs=3, batch_size=8, sampling_rate=1 / 6, optimizer="adam", lr=0.02,
                                 max_grad_norm=0.5, noise_multiplier=1.0),
    "no_dp_adam": ShadowConfig(epochs=3, batch_size=8, optimizer="adam", lr=0.02, no_dp=True),
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_vectorised_training_equals_a_loop_of_engine_trainings(data, name):
    # Prepare
    x, y = data
    cfg = CONFIGS[name]
    membership = assign_membership(num_models=K, num_examples=N, seed=1)
    seeds = shadow_seeds(num_models=K, seed=1)
    # Execute
    _, stacked = train_shadows(model_fn=_mlp, inputs=x, targets=y, membership=membership, seeds=seeds, config=cfg)
    oracle = _sequential(cfg, x, y, membership, seeds)
    # Assert: the same parameters, model by model (models take different numbers of steps here).
    for k in range(K):
        for n, p in oracle[k].items():
            torch.testing.assert_close(stacked[n][k], p, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(stacked["1.weight"][0], stacked["1.weight"][1])


def _tanh_mlp(seed: int) -> nn.Module:
    # The default recipe's model shape: two hidden layers here, to exercise the backward recursion.
    return build_model("mlp", input_shape=(D,), num_classes=CLASSES, hidden=[8, 6], activation="tanh")


@pytest.mark.parametrize("name", ["no_dp_adam", "dp_adam_rate", "dp_per_layer"])
@pytest.mark.parametrize("backend", ["bmm", "vmap"])
def test_both_backends_equal_a_loop_of_engine_trainings_for_tanh_mlps(data, name, backend):
    # The bmm backend (hand-written backward pass) and the vmap one (autograd) both follow the engine.
    x, y = data
    cfg = dataclasses.replace(CONFIGS[name], backend=backend)
    membership = assign_membership(num_models=K, num_examples=N, seed=4)
    seeds = shadow_seeds(num_models=K, seed=4)
    _, stacked = train_shadows(model_fn=_tanh_mlp, inputs=x, targets=y, membership=membership, seeds=seeds,
                               config=cfg)
    oracle = _sequential(cfg, x, y, membership, seeds, model_fn=_tanh_mlp)
    for k in range(K):
        for n, p in oracle[k].items():
            torch.testing.assert_close(stacked[n][k], p, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["no_dp_adam", "dp_adam_rate"])
def test_bmm_backend_in_groups_of_models_equals_all_models_at_once(data, name, monkeypatch):
    from privaudit.attacks import _shadow_grads

    x, y = data
    membership = assign_membership(num_models=5, num_examples=N, seed=5)
    seeds = shadow_seeds(num_models=5, seed=5)

    def train():
        return train_shadows(model_fn=_tanh_mlp, inputs=x, targets=y, membership=membership, seeds=seeds,
                             config=dataclasses.replace(CONFIGS[name], backend="bmm"))[1]

    whole = train()
    monkeypatch.setattr(_shadow_grads, "GROUP_BYTES", 2 * 8 * 4 * 20)  # groups of 1-2 models
    grouped = train()
    for n in whole:
        torch.testing.assert_close(grouped[n], whole[n], atol=1e-6, rtol=1e-6)


def test_fused_adam_equals_the_per_tensor_update_even_for_strided_gradients():
    # step_all (torch's fused Adam kernel) must give what step (torch.optim.Adam's single-tensor update, op for
    # op) gives; the kernel misreads strided memory, so a transposed gradient is the case that once failed.
    from privaudit.attacks._shadows import _Adam

    gen = torch.Generator().manual_seed(0)
    shapes = {"w": (3, 5, 4), "b": (3, 5)}
    start = {n: torch.randn(s, generator=gen) for n, s in shapes.items()}
    cfg = ShadowConfig(epochs=1, batch_size=4, lr=0.05, optimizer="adam", no_dp=True)
    fused_p, plain_p = ({n: v.clone() for n, v in start.items()} for _ in range(2))
    fused, plain = _Adam(cfg, fused_p), _Adam(cfg, plain_p)
    for t in range(1, 6):
        g = {"w": torch.randn(3, 4, 5, generator=gen).transpose(1, 2), "b": torch.randn(3, 5, generator=gen)}
        assert not g["w"].is_contiguous()
        if not fused.step_all(fused_p, g, t):
            pytest.skip("this torch build has no fused Adam kernel for the device")
        for n in shapes:
            plain.step(n, plain_p[n], g[n], t)
    for n in shapes:
        torch.testing.assert_close(fused_p[n], plain_p[n], atol=1e-6, rtol=1e-5)
        assert not torch.equal(fused_p[n], start[n])


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_step_of_some_models_leaves_the_others_and_their_state_untouched(optimizer):
    # Tail steps update only the models still training: the same as stepping those models as a stack of their own.
    from privaudit.attacks._shadows import _Adam, _SGD

    gen = torch.Generator().manual_seed(1)
    cfg = ShadowConfig(epochs=1, batch_size=4, lr=0.05, optimizer=optimizer, no_dp=True)
    make = _Adam if optimizer == "adam" else _SGD
    params = {"w": torch.randn(4, 3, 2, generator=gen), "b": torch.randn(4, 3, generator=gen)}
    opt = make(cfg, params)
    opt.apply(params, {n: torch.randn(v.shape, generator=gen) for n, v in params.items()}, 1)  # non-zero state
    live = torch.tensor([0, 2])
    alone_params = {n: v[live].clone() for n, v in params.items()}
    alone = make(cfg, alone_params)
    for s_alone, s in zip(alone.state, opt.state):
        for n in s:
            s_alone[n].copy_(s[n][live])
    before = {n: v.clone() for n, v in params.items()}
    state_before = [{n: v.clone() for n, v in s.items()} for s in opt.state]
    g = {n: torch.randn(v.shape, generator=gen) for n, v in alone_params.items()}
    opt.apply(params, g, 2, models=live)
    alone.apply(alone_params, g, 2)
    for n in params:
        torch.testing.assert_close(params[n][live], alone_params[n])
        assert torch.equal(params[n][[1, 3]], before[n][[1, 3]])
        assert not torch.equal(params[n][live], before[n][live])
    for s, s0, s_alone in zip(opt.state, state_before, alone.state):
        for n in s:
            torch.testing.assert_close(s[n][live], s_alone[n])
            assert torch.equal(s[n][[1, 3]], s0[n][[1, 3]])


def test_bmm_backend_is_chosen_for_plain_mlps_only():
    sequence_model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, 2))
    assert mlp_layers(_tanh_mlp(0)) == (True, [("1.weight", "1.bias", "tanh"), ("3.weight", "3.bias", "tanh"),
                                               ("5.weight", "5.bias", None)])
    assert mlp_layers(build_model("logreg", input_shape=(D,), num_classes=CLASSES)) == (
        True, [("1.weight", "1.bias", None)])
    assert mlp_layers(sequence_model) is None
    assert mlp_layers(build_model("mlp", input_shape=(D,), num_classes=CLASSES, activation="gelu")) is None
    assert mlp_layers(nn.Sequential(nn.Linear(4, 5), nn.ReLU())) is None  # ends in an activation

    def grads(model, **kw):
        return StackedGrads(model, buffers={}, max_grad_norm=1.0, clipping="flat", **kw)

    assert grads(_tanh_mlp(0)).bmm is not None and grads(_tanh_mlp(0), backend="vmap").bmm is None
    assert grads(_tanh_mlp(0), mode="materialize").bmm is None  # DP with materialised per-example gradients
    assert grads(_tanh_mlp(0), mode="materialize", private=False).bmm is not None
    assert grads(sequence_model).bmm is None
    with pytest.raises(ValueError, match="backend='bmm' needs a plain MLP"):
        grads(sequence_model, backend="bmm")


def test_ghost_clipping_equals_materialised_per_example_gradients_on_sequences():
    # A Linear applied to (rows, positions, features): the Gram-matrix form of the ghost norm.
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.normal(size=(40, 3, 4)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 2, 40))

    def model_fn(seed: int) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Flatten(), nn.Linear(15, 2))

    membership = assign_membership(num_models=2, num_examples=40, seed=0)
    seeds = shadow_seeds(num_models=2, seed=0)
    common = dict(epochs=2, batch_size=8, lr=0.5, max_grad_norm=0.3, noise_multiplier=0.5)
    runs = {mode: train_shadows(model_fn=model_fn, inputs=x, targets=y, membership=membership, seeds=seeds,
                                config=ShadowConfig(**common, per_example=mode))[1]
            for mode in ("ghost", "materialize")}
    for n in runs["ghost"]:
        torch.testing.assert_close(runs["ghost"][n], runs["materialize"][n], atol=1e-5, rtol=1e-5)
    oracle = _sequential(ShadowConfig(**common), x, y, membership, seeds, model_fn=model_fn)
    for k in range(2):
        for n, p in oracle[k].items():
            torch.testing.assert_close(runs["ghost"][n][k], p, atol=1e-5, rtol=1e-5)


def test_a_subset_of_models_trains_exactly_as_in_the_full_set(data):
    x, y = data
    cfg = CONFIGS["dp_ghost"]
    membership = assign_membership(num_models=4, num_examples=N, seed=2)
    seeds = shadow_seeds(num_models=4, seed=2)
    _, full = train_shadows(model_fn=_mlp, inputs=x, targets=y, membership=membership, seeds=seeds, config=cfg)
    _, part = train_shadows(model_fn=_mlp, inputs=x, targets=y, membership=membership, seeds=seeds, config=cfg,
                            models=[3, 1])
    for n in full:
        torch.testing.assert_close(part[n], full[n][[3, 1]], atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("k", [2, 5, 16])
def test_membership_is_balanced(k):
    n = 101
    m = assign_membership(num_models=k, num_examples=n, seed=7)
    assert m.shape == (k, n) and m.dtype == bool
    per_example = m.sum(axis=0)
    assert set(per_example.tolist()) <= {k // 2, (k + 1) // 2}
    if k % 2 == 0:
        assert (per_example == k // 2).all()
    assert np.abs(m.sum(axis=1) - n / 2).max() < 0.25 * n
    np.testing.assert_array_equal(m, assign_membership(num_models=k, num_examples=n, seed=7))
    assert not np.array_equal(m, assign_membership(num_models=k, num_examples=n, seed=8))


def test_model_seeds_do_not_depend_on_k():
    assert shadow_seeds(num_models=5, seed=3)[:3] == shadow_seeds(num_models=3, seed=3)
    assert len(set(shadow_seeds(num_models=64, seed=0))) == 64


def test_stacked_logits_equal_each_models_logits(data):
    x, _ = data
    models = [_mlp(0) for _ in range(3)]
    stacked = stacked_model_logits(models[0], stack_models(models), x, batch_size=7)
    assert stacked.shape == (3, 1, N, CLASSES)
    for k, m in enumerate(models):
        np.testing.assert_allclose(stacked[k], model_logits(m, x, batch_size=11), rtol=1e-5, atol=1e-6)


def test_hflip_queries_two_views_of_images():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    x = torch.randn(4, 1, 3, 4)
    logits = model_logits(model, x, augment="auto")
    assert logits.shape == (2, 4, 2)
    np.testing.assert_allclose(logits[1], model(torch.flip(x, dims=(-1,))).detach().numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="augment='hflip' needs image inputs"):
        model_logits(nn.Linear(3, 2), torch.zeros(2, 3), augment="hflip")


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(epochs=0, batch_size=8, lr=0.1, no_dp=True), "epochs"),
    (dict(epochs=1, batch_size=0, lr=0.1, no_dp=True), "batch_size"),
    (dict(epochs=1, batch_size=8, lr=0.1), "max_grad_norm and noise_multiplier"),
    (dict(epochs=1, batch_size=8, lr=0.1, no_dp=True, noise_multiplier=1.0), "noise_multiplier=None"),
    (dict(epochs=1, batch_size=8, lr=0.1, no_dp=True, clipping="adaptive"), "clipping"),
    (dict(epochs=1, batch_size=8, lr=0.1, no_dp=True, per_example="fast"), "per_example"),
    (dict(epochs=1, batch_size=8, lr=0.1, no_dp=True, backend="jit"), "backend"),
])
def test_config_rejects_bad_values_by_name(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ShadowConfig(**kwargs)


def test_train_shadows_rejects_mismatched_inputs(data):
    x, y = data
    membership = assign_membership(num_models=2, num_examples=N, seed=0)
    cfg = CONFIGS["no_dp"]
    with pytest.raises(ValueError, match="one seed per model"):
        train_shadows(model_fn=_mlp, inputs=x, targets=y, membership=membership, seeds=[1], config=cfg)
    with pytest.raises(ValueError, match="n=60"):
        train_shadows(model_fn=_mlp, inputs=x[:10], targets=y[:10], membership=membership, seeds=[1, 2], config=cfg)
    with pytest.raises(ValueError, match="distinct indices"):
        train_shadows(model_fn=_mlp, inputs=x, targets=y, membership=membership, seeds=[1, 2], config=cfg,
                      models=[0, 2])
