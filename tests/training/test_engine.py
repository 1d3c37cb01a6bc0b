"""The DP-SGD loop: noise scale, Poisson sampling, ledger, resume, budget, arguments."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from privaudit.accounting import PrivacyLedger, epsilon_for
from privaudit.training import (
    DPConfig,
    ModuleValidationError,
    PrivacyBudgetExhaustedError,
    build_model,
    make_private,
)
from privaudit.training._sampler import PoissonSampler, ShuffleSampler, physical_batches


def _data(n=60, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, k, (n,), generator=g)


def _trainer(model=None, *, data=None, lr=0.1, momentum=0.9, **kw):
    torch.manual_seed(0)
    model = model or nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    args = dict(module=model, optimizer=opt, data=data or _data(), loss_fn=nn.CrossEntropyLoss(), epochs=2,
                expected_batch_size=12, max_grad_norm=1.0, noise_multiplier=1.0, seed=0)
    args.update(kw)
    return make_private(**args)


class ZeroGradient(nn.Module):
    """A loss with zero gradient: the whole update is noise."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(50, 40)

    def forward(self, x):
        return self.lin(x)


def test_noise_on_a_zero_gradient_step_has_std_sigma_c():
    # Prepare: SGD with lr=1 and no momentum turns the update into -noise / (q N).
    sigma, c, n, b = 1.7, 0.3, 40, 10
    model = ZeroGradient()
    x, y = torch.randn(n, 50), torch.zeros(n, dtype=torch.long)
    trainer = make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                           data=(x, y), loss_fn=lambda out, t: 0.0 * out.sum(1), epochs=2,
                           expected_batch_size=b, max_grad_norm=c, noise_multiplier=sigma, seed=1)
    # Execute
    samples = []
    for _ in range(3):
        before = [p.detach().clone() for p in model.parameters()]
        trainer.step()
        after = list(model.parameters())
        samples += [((b0 - a.detach()) * b).flatten() for b0, a in zip(before, after)]
    z = torch.cat(samples).double().numpy()
    # Assert: KS accepts sigma*C and rejects 0.67x and 1.5x
    assert z.size > 6000
    assert stats.kstest(z, "norm", args=(0, sigma * c)).pvalue > 1e-3
    assert stats.kstest(z, "norm", args=(0, 0.67 * sigma * c)).pvalue < 1e-6
    assert stats.kstest(z, "norm", args=(0, 1.5 * sigma * c)).pvalue < 1e-6


def test_poisson_batch_sizes_have_mean_qn():
    n, q, draws = 500, 0.05, 400
    sampler = PoissonSampler(num_examples=n, sampling_rate=q, generator=torch.Generator().manual_seed(0))
    sizes = [int(sampler.sample().numel()) for _ in range(draws)]
    # The total over all draws is Binomial(n * draws, q).
    assert stats.binomtest(sum(sizes), n * draws, q).pvalue > 1e-3
    assert np.var(sizes) == pytest.approx(n * q * (1 - q), rel=0.3)


def test_poisson_membership_is_independent_of_index():
    n, q, draws = 50, 0.3, 2000
    sampler = PoissonSampler(num_examples=n, sampling_rate=q, generator=torch.Generator().manual_seed(1))
    counts = torch.zeros(n)
    for _ in range(draws):
        counts[sampler.sample()] += 1
    assert stats.chisquare(counts.numpy()).pvalue > 1e-3
    assert stats.binomtest(int(counts.sum()), n * draws, q).pvalue > 1e-3


def test_physical_batches_have_one_shape_and_mask_padding():
    idx = torch.arange(23)
    batches = list(physical_batches(idx, physical_batch_size=8))
    assert [b.indices.shape for b in batches] == [torch.Size([8])] * 3
    assert [int(b.mask.sum()) for b in batches] == [8, 8, 7]
    assert torch.equal(torch.cat([b.indices[b.mask] for b in batches]), idx)
    assert list(physical_batches(idx[:0], physical_batch_size=8)) == []


def test_shuffle_sampler_covers_each_example_once_per_epoch():
    s = ShuffleSampler(num_examples=10, batch_size=4, generator=torch.Generator().manual_seed(0))
    epoch = torch.cat([s.sample() for _ in range(3)])
    assert sorted(epoch.tolist()) == list(range(10))


def test_shuffle_sampler_sample_from_maps_the_same_batches_through_values():
    def sampler() -> ShuffleSampler:
        return ShuffleSampler(num_examples=10, batch_size=4, generator=torch.Generator().manual_seed(3))

    values = torch.arange(100, 110) * 7
    plain, mapped = sampler(), sampler()
    for step in range(8):  # several epochs, each ending in a short batch
        if step == 5:  # a restored state must not reuse the mapping of the permutation it replaced
            state = plain.state_dict()
            mapped.load_state_dict(state)
        assert torch.equal(mapped.sample_from(values), values[plain.sample()])


def test_ledger_steps_equal_optimizer_steps():
    trainer = _trainer()
    calls = []
    trainer.optimizer.register_step_post_hook(lambda *a: calls.append(1))
    trainer.run(steps=7)
    assert trainer.steps_taken == len(calls) == trainer.ledger.total_count() == 7
    assert all(e.event == trainer.config.step_event() for e in trainer.ledger.entries)


def test_empty_batches_still_add_noise_and_count():
    # q * N = 1 with N = 200: P(empty) = (1 - 1/200)^200 ~ 0.37 per step.
    model = nn.Linear(5, 3)
    trainer = _trainer(model, data=_data(n=200), expected_batch_size=1, epochs=0.05, momentum=0.0)
    empties = 0
    for _ in range(trainer.planned_steps):
        before = model.weight.detach().clone()
        s = trainer.step()
        if s.batch_size == 0:
            empties += 1
            assert math.isnan(s.loss) and s.physical_batches == 0
            assert not torch.equal(before, model.weight)  # noise moved the weights
    assert empties > 0
    assert trainer.ledger.total_count() == trainer.steps_taken == 10


def test_refuses_steps_past_the_plan():
    trainer = _trainer(epochs=1, expected_batch_size=20)
    assert trainer.planned_steps == 3
    trainer.run()
    with pytest.raises(PrivacyBudgetExhaustedError, match="planned"):
        trainer.step()
    assert trainer.ledger.total_count() == 3


def test_target_epsilon_is_met_and_matches_the_config_event():
    trainer = _trainer(noise_multiplier=None, target_epsilon=2.0, target_delta=1e-5, accountant="pld")
    trainer.run()
    eps = trainer.epsilon()
    assert eps <= 2.0 + 1e-6
    assert eps > 1.9
    cfg = trainer.config
    via_config = epsilon_for(cfg.noise_multiplier, sampling_rate=cfg.sampling_rate, steps=cfg.steps, delta=1e-5)
    assert eps == pytest.approx(via_config, rel=1e-9)


def test_resume_from_state_dict_is_bit_identical():
    uninterrupted = _trainer()
    uninterrupted.run(steps=6)

    first = _trainer()
    first.run(steps=3)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    first.run(steps=2)  # the snapshot must not follow later steps
    buffer.seek(0)
    resumed = _trainer()  # fresh model, optimizer, ledger
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    resumed.run(steps=3)

    for a, b in zip(uninterrupted.module.parameters(), resumed.module.parameters()):
        assert torch.equal(a, b)
    assert resumed.steps_taken == 6 == resumed.ledger.total_count()


def test_resume_refuses_a_different_configuration():
    state = _trainer().state_dict()
    other = _trainer(noise_multiplier=2.0)
    with pytest.raises(ValueError, match="noise_multiplier"):
        other.load_state_dict(state)


def test_no_dp_refuses_adaptive_clipping_instead_of_ignoring_it():
    from privaudit.training import AdaptiveClipping

    with pytest.raises(ValueError, match="adaptive_clipping=None"):
        _trainer(no_dp=True, noise_multiplier=None, max_grad_norm=None, adaptive_clipping=AdaptiveClipping())


def test_gradient_canaries_refuse_a_trainer_with_adaptive_clipping():
    # Canaries would enter the clipped sum but not the noisy unclipped count: not canaries as batch rows.
    from privaudit.audit._whitebox import CanaryInjector
    from privaudit.training import AdaptiveClipping

    trainer = _trainer(adaptive_clipping=AdaptiveClipping(count_noise_std=5.0))
    with pytest.raises(ValueError, match="fixed clipping norm"):
        CanaryInjector(trainer=trainer, canaries=None, generator=torch.Generator().manual_seed(0), record=False)


def test_no_dp_equals_plain_minibatch_sgd():
    # Prepare: record the batches the engine draws, then replay them with plain SGD.
    x, y = _data(n=50)
    trainer = _trainer(data=(x, y), no_dp=True, noise_multiplier=None, max_grad_norm=None, expected_batch_size=16)
    drawn = []
    sample = trainer._sampler.sample
    trainer._sampler.sample = lambda: drawn.append(sample()) or drawn[-1]
    reference = copy.deepcopy(trainer.module)
    opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    # Execute
    trainer.run()
    for idx in drawn:
        opt.zero_grad()
        nn.CrossEntropyLoss()(reference(x[idx]), y[idx]).backward()
        opt.step()
    # Assert
    assert len(drawn) == trainer.planned_steps == 8  # 2 epochs of ceil(50 / 16) batches
    assert [len(i) for i in drawn[:4]] == [16, 16, 16, 2]
    for a, b in zip(trainer.module.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert len(trainer.ledger) == 0 and trainer.epsilon() == math.inf


def test_physical_batch_size_does_not_change_the_update():
    a = _trainer(physical_batch_size=5)
    b = _trainer(physical_batch_size=64)
    sa, sb = a.run(steps=4), b.run(steps=4)
    assert [s.batch_size for s in sa] == [s.batch_size for s in sb]
    assert max(s.physical_batches for s in sa) > 1
    for p, q in zip(a.module.parameters(), b.module.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_same_seed_same_run_and_secure_rng_withholds_the_seed():
    a, b = _trainer(seed=7), _trainer(seed=7)
    a.run(steps=2)
    b.run(steps=2)
    assert all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))
    s1, s2 = _trainer(seed=None, secure_rng=True), _trainer(seed=None, secure_rng=True)
    assert s1.rng_record.secure_rng and s1.rng_record.seed is None and s1.rng_record.seed_source == "csprng"
    assert s1.ledger.metadata["training"]["rng"]["seed"] is None
    s1.run(steps=1)
    s2.run(steps=1)
    assert not torch.equal(s1.module[0].weight, s2.module[0].weight)


def test_per_layer_clipping_and_a_transformer_train():
    x = torch.randint(0, 7, (40, 6))
    y = (x[:, 0] > 3).long()
    model = build_model("transformer", input_shape=(6,), num_classes=2, vocab_size=7, d_model=8, nhead=2,
                        num_layers=1)
    trainer = _trainer(model, data=(x, y), clipping="per_layer", expected_batch_size=10)
    out = trainer.run()
    assert len(out) == trainer.planned_steps and all(math.isfinite(s.loss) for s in out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_dpconfig_event_is_what_the_ledger_records():
    cfg = DPConfig(noise_multiplier=1.1, max_grad_norm=1.0, sampling_rate=0.01, dataset_size=1000, steps=50,
                   physical_batch_size=16)
    ledger = PrivacyLedger()
    ledger.record(cfg.step_event(), 50)
    from privaudit.accounting import flatten_event

    assert flatten_event(ledger.to_event()) == flatten_event(cfg.dp_event())
    assert cfg.expected_batch_size == pytest.approx(10.0)
    assert cfg.noise_std == pytest.approx(1.1)


def test_batchnorm_is_rejected_with_its_path():
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    with pytest.raises(ModuleValidationError, match=r"1 \(BatchNorm1d\)"):
        _trainer(model)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"expected_batch_size": 0}, "expected_batch_size"),
        ({"expected_batch_size": 61}, "expected_batch_size"),
        ({"epochs": -1}, "epochs"),
        ({"max_grad_norm": 0.0}, "max_grad_norm"),
        ({"max_grad_norm": None}, "max_grad_norm"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"noise_multiplier": None}, "noise_multiplier"),
        ({"target_epsilon": 1.0}, "target_epsilon"),
        ({"noise_multiplier": None, "target_epsilon": 0.0}, "target_epsilon"),
        ({"target_delta": 1.5}, "target_delta"),
        ({"clipping": "per_sample"}, "clipping"),
        ({"accountant": "moments"}, "accountant"),
        ({"physical_batch_size": 0}, "physical_batch_size"),
        ({"seed": -3}, "seed"),
        ({"seed": 1, "secure_rng": True}, "seed"),
        ({"data": (torch.zeros(5, 5), torch.zeros(4))}, "data"),
        ({"data": [torch.zeros(5, 5)]}, "data"),
        ({"loss_fn": "ce"}, "loss_fn"),
        ({"ledger": {}}, "ledger"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, name):
    with pytest.raises(ValueError, match=name):
        _trainer(**kwargs)


def test_a_loss_without_one_value_per_example_is_refused():
    trainer = _trainer(loss_fn=lambda out, y: nn.functional.cross_entropy(out, y))
    with pytest.raises(ValueError, match="one loss per example"):
        trainer.step()


def test_public_names_are_sorted_and_complete():
    import privaudit.training as training

    exported = list(training.__all__)
    assert exported == sorted(exported)
    assert all(hasattr(training, n) for n in exported)
    public = {n for n, v in vars(training).items() if not n.startswith("_") and not isinstance(v, type(training))}
    assert public <= set(exported) | {"annotations"}, public - set(exported)
