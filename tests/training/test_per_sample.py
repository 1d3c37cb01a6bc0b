"""Per-example gradients, norms and clipped sums against a micro-batch oracle."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from privaudit.training import _per_sample, build_model
from privaudit.training._clipping import GradCapture, clip_and_accumulate, find_units, plan_chunks

CE = nn.CrossEntropyLoss(reduction="none")


def oracle_grads(model, x, y):
    """The loop the engine avoids: one backward pass per example (batch of one)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        loss = CE(model(x[i : i + 1]), y[i : i + 1]).sum()
        gs = torch.autograd.grad(loss, params, allow_unused=True)
        rows.append([torch.zeros_like(p) if g is None else g for p, g in zip(params, gs)])
    return [torch.stack(col) for col in zip(*rows)]


def engine_grads(model, x, y, mode="auto"):
    """Per-example gradients read back from the kernels: weighted_sums(e_i) is example i's gradient."""
    cap = GradCapture(model, mode=mode)
    try:
        with cap.capture(x.device):
            loss = CE(model(x), y).sum()
        cap.backward(loss)
        grads = cap.unit_grads()
        b = x.shape[0]
        index = {id(p): j for j, p in enumerate(p for p in model.parameters() if p.requires_grad)}
        out = [None] * len(index)
        sq = torch.zeros(b)
        for ug in grads:
            for v in ug.sq_norms().values():
                sq += v
            for i in range(b):
                e = torch.zeros(b)
                e[i] = 1.0
                for n, g in ug.weighted_sums({n: e for n in ug.params}).items():
                    j = index[id(ug.params[n])]
                    if out[j] is None:
                        out[j] = torch.zeros(b, *g.shape)
                    out[j][i] = g
        return out, sq.sqrt()
    finally:
        cap.remove()


class TwiceLinear(nn.Module):
    """Embedding with padding, a linear layer applied twice, LayerNorm over a sequence."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8, padding_idx=0)
        self.lin = nn.Linear(8, 8)
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 3)

    def forward(self, t):
        h = self.ln(torch.relu(self.lin(self.emb(t))))
        return self.head(self.lin(h).mean(1))


class OwnParameter(nn.Module):
    """A module with a bare parameter: goes to the torch.func fallback."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 3))
        self.inner = nn.Linear(6, 6)

    def forward(self, x):
        return torch.tanh(self.inner(x)) @ self.w


class Attention(nn.Module):
    def __init__(self, *, need_weights, cross, dropout=0.0):
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True, dropout=dropout)
        self.need_weights, self.cross = need_weights, cross
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        kpm = torch.zeros(x.shape[0], x.shape[1], dtype=torch.bool)
        kpm[:, -1] = True
        causal = torch.triu(torch.ones(x.shape[1], x.shape[1], dtype=torch.bool), 1)
        key = x.flip(1) if self.cross else x
        o, w = self.mha(x, key, x, key_padding_mask=kpm, attn_mask=None if self.cross else causal,
                        need_weights=self.need_weights)
        out = self.head(o.mean(1))
        return out + w.sum((1, 2))[:, None] if self.need_weights else out


def _ints(*shape, high):
    return torch.randint(0, high, shape)


CASES = {
    "linear": lambda: (nn.Sequential(nn.Linear(5, 7), nn.ReLU(inplace=True), nn.Linear(7, 3)),
                       torch.randn(6, 5)),
    "conv2d_groupnorm": lambda: (nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, groups=2, padding=1, padding_mode="reflect"),
        nn.Flatten(), nn.Linear(36, 3)), torch.randn(6, 2, 5, 5)),
    "conv2d_same_nobias": lambda: (nn.Sequential(
        nn.Conv2d(3, 4, 3, padding="same", bias=False, dilation=2), nn.Tanh(), nn.Flatten(),
        nn.Linear(4 * 16, 3)), torch.randn(6, 3, 4, 4)),
    "conv1d": lambda: (nn.Sequential(nn.Conv1d(2, 4, 3, padding="same"), nn.ReLU(), nn.Conv1d(4, 2, 2, dilation=2),
                                     nn.Flatten(), nn.Linear(10, 3)), torch.randn(6, 2, 7)),
    "embedding_layernorm_twice": lambda: (TwiceLinear(), _ints(6, 5, high=11)),
    "layernorm_2d_groupnorm_flat": lambda: (nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Unflatten(1, (6, 1)),
                                                          nn.GroupNorm(3, 6), nn.Flatten(), nn.Linear(6, 3)),
                                            torch.randn(6, 4)),
    "fallback_parameter": lambda: (OwnParameter(), torch.randn(6, 6)),
    "mha_self_masked": lambda: (Attention(need_weights=False, cross=False), torch.randn(6, 4, 8)),
    "mha_cross_weights": lambda: (Attention(need_weights=True, cross=True), torch.randn(6, 4, 8)),
    "transformer": lambda: (build_model("transformer", input_shape=(5,), num_classes=3, vocab_size=9, d_model=8,
                                        nhead=2, num_layers=2), _ints(6, 5, high=9)),
}
if hasattr(nn, "RMSNorm"):
    CASES["rmsnorm"] = lambda: (nn.Sequential(nn.Linear(4, 6), nn.RMSNorm(6), nn.Linear(6, 3)), torch.randn(6, 4))


#: Cases with a sequence (or spatial) dimension, where ghost norms and materialised
#: per-sample gradients are genuinely different code paths.
SEQUENCE_CASES = ["conv1d", "conv2d_groupnorm", "embedding_layernorm_twice", "mha_self_masked", "transformer"]
MODES = [(case, "auto") for case in sorted(CASES)] + [
    (case, mode) for case in SEQUENCE_CASES for mode in ("ghost", "materialize")]


@pytest.mark.parametrize(("case", "mode"), MODES)
def test_per_sample_gradients_match_micro_batch_oracle(case, mode):
    # Prepare
    torch.manual_seed(0)
    model, x = CASES[case]()
    y = torch.randint(0, 3, (x.shape[0],))
    # Execute
    expected = oracle_grads(model, x, y)
    got, norms = engine_grads(model, x, y, mode)
    # Assert: every parameter's per-example gradient, and the flat norms
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    expected_norms = torch.sqrt(sum(e.flatten(1).pow(2).sum(1) for e in expected))
    torch.testing.assert_close(norms, expected_norms, rtol=1e-4, atol=1e-5)


def test_units_cover_every_trainable_parameter_once():
    model = build_model("transformer", input_shape=(5,), num_classes=3, vocab_size=9, d_model=8, nhead=2)
    units = find_units(model)
    covered = [id(p) for u in units for p in u.params.values()]
    assert sorted(covered) == sorted(id(p) for p in model.parameters())
    kinds = {u.kind for u in units}
    assert {"Embedding", "Linear", "LayerNorm", "MultiheadAttention"} <= kinds
    assert not any(k.startswith("fallback") for k in kinds)


def _clipped_per_example(model, x, y, *, c, clipping):
    """Runs clip_and_accumulate with a one-hot mask, once per example: each sum is one clipped gradient."""
    b = x.shape[0]
    cap = GradCapture(model)
    params = [p for p in model.parameters() if p.requires_grad]
    out_rows = []
    try:
        for i in range(b):
            mask = torch.zeros(b, dtype=torch.bool)
            mask[i] = True
            acc = {p: torch.zeros_like(p) for p in params}
            with cap.capture(x.device):
                loss = (CE(model(x), y) * mask).sum()
            cap.backward(loss)
            clip_and_accumulate(cap.unit_grads(), max_grad_norm=c, clipping=clipping,
                                num_layers=len(cap.units), mask=mask, out=acc)
            cap.release()
            out_rows.append(torch.cat([a.flatten() for a in acc.values()]))
    finally:
        cap.remove()
    return torch.stack(out_rows)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), c=st.floats(1e-3, 10.0), scale=st.floats(0.01, 100.0),
       clipping=st.sampled_from(["flat", "per_layer"]))
def test_every_clipped_per_example_gradient_has_norm_at_most_c(seed, c, scale, clipping):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    x = torch.randn(3, 1, 4, 4) * scale
    y = torch.randint(0, 3, (3,))
    rows = _clipped_per_example(model, x, y, c=c, clipping=clipping)
    assert torch.all(rows.norm(dim=1) <= c * (1 + 1e-5))


def test_small_gradients_are_not_scaled():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 2))
    x, y = torch.randn(3, 3), torch.randint(0, 2, (3,))
    rows = _clipped_per_example(model, x, y, c=1e6, clipping="flat")
    expected = torch.cat([g.flatten(1) for g in oracle_grads(model, x, y)], 1)
    torch.testing.assert_close(rows, expected, rtol=1e-5, atol=1e-7)


def test_padded_rows_contribute_nothing():
    # Prepare: 5 real rows, and the same 5 rows padded with 3 garbage rows masked out
    torch.manual_seed(2)
    model = build_model("cnn", input_shape=(1, 8, 8), num_classes=3, channels=(4, 4))
    x, y = torch.randn(5, 1, 8, 8), torch.randint(0, 3, (5,))
    xp = torch.cat([x, 1e3 * torch.randn(3, 1, 8, 8)])
    yp = torch.cat([y, torch.tensor([0, 1, 2])])
    mask = torch.tensor([True] * 5 + [False] * 3)
    params = list(model.parameters())
    sums = []
    for xb, yb, mb in ((x, y, torch.ones(5, dtype=torch.bool)), (xp, yp, mask)):
        cap = GradCapture(model)
        acc = {p: torch.zeros_like(p) for p in params}
        with cap.capture(xb.device):
            loss = (CE(model(xb), yb) * mb).sum()
        cap.backward(loss)
        res = clip_and_accumulate(cap.unit_grads(), max_grad_norm=0.5, clipping="flat",
                                  num_layers=len(cap.units), mask=mb, out=acc)
        cap.remove()
        sums.append([a.clone() for a in acc.values()])
        if mb.numel() == 8:
            assert torch.all(res.factors[5:] == 0)
    for a, b in zip(*sums):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fallback_with_dropout_still_clips_each_example():
    torch.manual_seed(3)
    model = Attention(need_weights=False, cross=True, dropout=0.5)
    x, y = torch.randn(4, 4, 8), torch.randint(0, 3, (4,))
    units = find_units(model)
    assert any(u.kind == "fallback:MultiheadAttention" for u in units)
    rows = _clipped_per_example(model, x, y, c=1e-3, clipping="flat")
    assert torch.all(rows.norm(dim=1) <= 1e-3 * (1 + 1e-5))
    assert torch.all(rows.norm(dim=1) > 0)


def test_clipped_sum_matches_opacus_grad_sample_module():
    opacus = pytest.importorskip("opacus")
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 6 * 6, 5))
    x, y = torch.randn(8, 3, 6, 6), torch.randint(0, 5, (8,))
    c = 0.3
    # Opacus: materialised per-sample gradients, clipped and summed by hand.
    import copy

    ref_model = copy.deepcopy(model)
    gsm = opacus.GradSampleModule(ref_model, loss_reduction="sum")
    CE(gsm(x), y).sum().backward()
    per = [p.grad_sample for p in ref_model.parameters()]
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per))
    factor = torch.clamp(c / (norms + 1e-6), max=1.0)
    expected = [torch.einsum("b,b...->...", factor, g) for g in per]
    gsm._close()
    # privaudit
    cap = GradCapture(model)
    acc = {p: torch.zeros_like(p) for p in model.parameters()}
    with cap.capture(x.device):
        loss = CE(model(x), y).sum()
    cap.backward(loss)
    res = clip_and_accumulate(cap.unit_grads(), max_grad_norm=c, clipping="flat", num_layers=len(cap.units),
                              mask=torch.ones(8, dtype=torch.bool), out=acc)
    torch.testing.assert_close(res.norms, norms, rtol=1e-4, atol=1e-6)
    for e, g in zip(expected, acc.values()):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)


def test_per_layer_clipping_bounds_each_layer_by_c_over_sqrt_layers():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3))
    x, y = 100 * torch.randn(3, 4), torch.randint(0, 3, (3,))
    rows = _clipped_per_example(model, x, y, c=1.0, clipping="per_layer")
    first = rows[:, : 4 * 5 + 5].norm(dim=1)
    second = rows[:, 4 * 5 + 5 :].norm(dim=1)
    assert torch.all(first <= 1 / math.sqrt(2) * (1 + 1e-5))
    assert torch.all(second <= 1 / math.sqrt(2) * (1 + 1e-5))


def test_in_place_change_of_a_stored_input_is_refused():
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x):
            h = x * 1.0
            out = self.a(h)
            h.mul_(2.0)
            return out

    model = Bad()
    cap = GradCapture(model)
    with cap.capture(torch.device("cpu")):
        loss = CE(model(torch.randn(2, 3)), torch.tensor([0, 1])).sum()
    cap.backward(loss)
    with pytest.raises(RuntimeError, match="modified in place"):
        cap.unit_grads()


# -- the chunked path of clip_and_accumulate (norms and clipped sums from the same chunk) --------


def _oracle_clipped_sum(expected, c, clipping, num_layers, unit_slices):
    """sum_i c_i * grad_i from the oracle's per-example gradients (flat or per-layer factors)."""
    flat = torch.cat([e.flatten(1) for e in expected], 1)
    if clipping == "flat":
        f = torch.clamp(c / (flat.norm(dim=1) + 1e-6), max=1.0)
        return flat.t() @ f
    out = torch.zeros(flat.shape[1])
    c_l = c / math.sqrt(num_layers)
    for sl in unit_slices:
        part = flat[:, sl]
        f = torch.clamp(c_l / (part.norm(dim=1) + 1e-6), max=1.0)
        out[sl] = part.t() @ f
    return out


def _engine_clipped_sum(model, x, y, *, c, clipping, mode):
    cap = GradCapture(model, mode=mode)
    params = [p for p in model.parameters() if p.requires_grad]
    acc = {p: torch.zeros_like(p) for p in params}
    try:
        with cap.capture(x.device):
            loss = CE(model(x), y).sum()
        cap.backward(loss)
        grads = cap.unit_grads()
        res = clip_and_accumulate(grads, max_grad_norm=c, clipping=clipping, num_layers=len(cap.units),
                                  mask=torch.ones(x.shape[0], dtype=torch.bool), out=acc)
        order = {id(p): j for j, p in enumerate(params)}
        offsets = [0]
        for p in params:
            offsets.append(offsets[-1] + p.numel())
        # Slices of the flat parameter vector that belong to each unit (per-layer clipping).
        slices = []
        for u in cap.units:
            idx = sorted(order[id(p)] for p in u.params.values())
            slices.append(torch.cat([torch.arange(offsets[j], offsets[j + 1]) for j in idx]))
        methods = [(type(g).__name__, g.chunked()) for g in grads]
    finally:
        cap.remove()
    return torch.cat([a.flatten() for a in acc.values()]), res, slices, methods


@pytest.mark.parametrize("budget", ["default", "tiny", "demote"])
@pytest.mark.parametrize(("case", "mode"), MODES)
def test_chunked_clipped_sum_matches_oracle(case, mode, budget, monkeypatch):
    # Prepare: 'tiny' forces one example per chunk, 'demote' a budget under MIN_CHUNK examples
    # (mode 'auto' then moves materialised layers to ghost norms)
    if budget == "tiny":
        monkeypatch.setattr(_per_sample, "CHUNK_FRACTION", 1e-9)
        monkeypatch.setattr(_per_sample, "MIN_BUDGET_ELEMENTS", 1)
        monkeypatch.setattr(_per_sample, "MIN_CHUNK", 1)
    elif budget == "demote":
        monkeypatch.setattr(_per_sample, "CHUNK_FRACTION", 1e-9)
        monkeypatch.setattr(_per_sample, "MIN_BUDGET_ELEMENTS", 1)
        monkeypatch.setattr(_per_sample, "MIN_CHUNK", 6)
    torch.manual_seed(0)
    model, x = CASES[case]()
    y = torch.randint(0, 3, (x.shape[0],))
    expected = oracle_grads(model, x, y)
    norms = torch.sqrt(sum(e.flatten(1).pow(2).sum(1) for e in expected))
    c = float(norms.median())  # about half of the examples are clipped
    for clipping in ("flat", "per_layer"):
        # Execute
        got, res, slices, methods = _engine_clipped_sum(model, x, y, c=c, clipping=clipping, mode=mode)
        want = _oracle_clipped_sum(expected, c, clipping, len(slices), slices)
        # Assert
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(res.norms, norms, rtol=1e-4, atol=1e-5)
        if budget == "demote" and mode == "auto":
            assert not any(ch for _, ch in methods), methods


def test_materialized_layers_are_chunked_and_demoted_in_auto_mode_only(monkeypatch):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.Flatten(),
                          nn.Linear(8 * 25, 3))
    x, y = torch.randn(8, 3, 5, 5), torch.randint(0, 3, (8,))
    for mode, demotable in (("auto", True), ("materialize", False)):
        cap = GradCapture(model, mode=mode)
        with cap.capture(x.device):
            loss = CE(model(x), y).sum()
        cap.backward(loss)
        grads = cap.unit_grads()
        assert [g.chunked() for g in grads] == [("weight",), ("weight",), ()]
        monkeypatch.setattr(_per_sample, "MIN_BUDGET_ELEMENTS", 1)
        monkeypatch.setattr(_per_sample, "CHUNK_FRACTION", 1e-9)
        fused, chunks = plan_chunks(grads, 8)
        if demotable:
            assert fused == [] and chunks == []
            assert [g.chunked() for g in grads] == [(), (), ()]
        else:  # forced 'materialize': one example per chunk, nothing demoted
            assert fused == [0, 1] and chunks == [(i, i + 1) for i in range(8)]
        monkeypatch.undo()
        cap.remove()


def test_norm_layers_drop_their_inputs_in_the_backward_pass():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Unflatten(1, (6, 1)), nn.GroupNorm(3, 6),
                          nn.Flatten(), nn.Linear(6, 3))
    x, y = torch.randn(5, 4), torch.randint(0, 3, (5,))
    cap = GradCapture(model)
    with cap.capture(x.device):
        loss = CE(model(x), y).sum()
    cap.backward(loss)
    norm_units = [u for u in cap.units if u.kind in ("LayerNorm", "GroupNorm")]
    assert len(norm_units) == 2
    for u in norm_units:
        (call,) = u.calls
        assert call.args == () and call.grads == () and set(call.reduced) == {"weight", "bias"}
    linear = [u for u in cap.units if u.kind == "Linear"]
    assert all(call.args for u in linear for call in u.calls)
    cap.remove()


@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_conv_per_sample_gradients_match_oracle_for_any_geometry(data):
    # Prepare: a random convolution (1d or 2d; stride, padding, dilation, groups, bias, padding mode)
    two_d = data.draw(st.booleans(), label="2d")
    groups = data.draw(st.sampled_from([1, 2]), label="groups")
    c_in = groups * data.draw(st.integers(1, 3), label="c_in/groups")
    c_out = groups * data.draw(st.integers(1, 3), label="c_out/groups")
    k = data.draw(st.integers(1, 3), label="kernel")
    stride = data.draw(st.integers(1, 2), label="stride")
    dilation = data.draw(st.integers(1, 2), label="dilation")
    pad_mode = data.draw(st.sampled_from(["zeros", "reflect", "circular"]), label="padding_mode")
    padding = data.draw(st.sampled_from([0, 1, "same"] if stride == 1 else [0, 1]), label="padding")
    if pad_mode != "zeros" and padding == 0:
        pad_mode = "zeros"
    bias = data.draw(st.booleans(), label="bias")
    size = data.draw(st.integers(k * dilation + 1, 7), label="size")
    mode = data.draw(st.sampled_from(["auto", "ghost", "materialize"]), label="mode")
    batch = data.draw(st.integers(1, 5), label="batch")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    torch.manual_seed(seed)
    conv_cls = nn.Conv2d if two_d else nn.Conv1d
    conv = conv_cls(c_in, c_out, k, stride=stride, padding=padding, dilation=dilation, groups=groups, bias=bias,
                    padding_mode=pad_mode)
    shape = (batch, c_in, size, size) if two_d else (batch, c_in, size)
    x = torch.randn(*shape)
    with torch.no_grad():
        n_out = conv(x).flatten(1).shape[1]
    model = nn.Sequential(conv, nn.Tanh(), nn.Flatten(), nn.Linear(n_out, 3))
    y = torch.randint(0, 3, (batch,))
    # Execute
    expected = oracle_grads(model, x, y)
    got, norms = engine_grads(model, x, y, mode)
    c = float(norms.median())
    summed, res, slices, _ = _engine_clipped_sum(model, x, y, c=c, clipping="flat", mode=mode)
    # Assert: per-example gradients, norms, and the chunked clipped sum
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.norms, norms, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(summed, _oracle_clipped_sum(expected, c, "flat", len(slices), slices),
                               rtol=1e-4, atol=1e-5)
