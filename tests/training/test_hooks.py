"""The trainer's public hooks (used by white-box audits): before the noise, and on release."""

from __future__ import annotations

import torch
from torch import nn

from privaudit.training import build_model, make_private


def _trainer(noise_multiplier: float):
    torch.manual_seed(0)
    x, y = torch.randn(60, 4), torch.randint(0, 2, (60,))
    model = build_model("logreg", input_shape=(4,), num_classes=2)
    return make_private(module=model, optimizer=torch.optim.SGD(model.parameters(), lr=1.0), data=(x, y),
                        loss_fn=nn.CrossEntropyLoss(), epochs=1, expected_batch_size=20, max_grad_norm=1.0,
                        noise_multiplier=noise_multiplier, seed=1)


def test_sum_hook_adds_before_the_noise_and_release_hook_sees_the_noisy_sum():
    # Prepare: two identical trainers; one gets +5 on every coordinate of the clipped sum.
    plain, hooked = _trainer(1.0), _trainer(1.0)
    seen_plain, seen_hooked, norms = [], [], []
    plain.add_release_hook(lambda t: seen_plain.append(torch.cat([v.flatten() for v in t]).clone()))

    def inject(tensors, clipping_norm):
        norms.append(clipping_norm)
        for t in tensors:
            t.add_(5.0)

    remove = hooked.add_sum_hook(inject)
    hooked.add_release_hook(lambda t: seen_hooked.append(torch.cat([v.flatten() for v in t]).clone()))
    # Execute
    plain.step()
    hooked.step()
    # Assert: the same noise (same seed), shifted by exactly what the hook added; C passed along.
    torch.testing.assert_close(seen_hooked[0] - seen_plain[0], torch.full_like(seen_plain[0], 5.0))
    assert norms == [1.0]
    # A removed hook no longer runs.
    remove()
    hooked.step()
    assert len(norms) == 1 and len(seen_hooked) == 2


def test_public_views_of_parameters_and_clipping_units():
    tr = _trainer(1.0)
    assert [p.shape for p in tr.parameters] == [p.shape for p in tr.module.parameters()]
    owned = {id(p) for unit in tr.clipping_units for p in unit.params.values()}
    assert owned == {id(p) for p in tr.parameters}
