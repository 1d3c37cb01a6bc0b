"""One-shot empirical privacy ESTIMATION for DP-FedAvg (Andrew et al. 2023, arXiv 2302.03098).

During one ordinary federated training run, k canary clients take part like
every other client (sampled the same way); a canary's model update is a fixed
isotropic random unit vector u_i of the parameter space scaled to the clipping
norm S, so clipping leaves it as it is. After training, the cosine between each
u_i and the final model delta (final minus initial parameters) is the canary's
statistic. k' "unobserved" directions, drawn the same way but never inserted,
have cosines ~ N(0, 1/d) in dimension d (the null); they are reported as a
check of that null but play no part in the estimate.

The estimate fits N(mu_c, sigma_c^2) to the k inserted canaries' cosines and
takes the epsilon, at the run's delta, of the pair of Gaussians N(0, 1/d) and
N(mu_c, sigma_c^2). With equal variances that is mu-Gaussian DP with
mu = mu_c * sqrt(d) (also reported, `epsilon_gdp`).

This is an ESTIMATE of the privacy an adversary who sees only the final model
could demonstrate, not a rigorous lower or upper bound: it has no confidence
level, assumes the cosines are Gaussian, and says nothing about the worst case.

The same run also gives a rigorous bound: the k canaries are drawn from a pool of
m candidates, each joining independently with probability 1/2, so the cosines of
all m candidates and their random inclusion are a one-run audit (Steinke, Nasr &
Jagielski 2023) whose lower bound, at confidence 1 - alpha, decides PASS/FAIL.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.special

from privaudit import _io, _validate
from privaudit.accounting._gdp_math import gdp_epsilon

from ._auditor import one_run_two_sided

__all__ = ["FedOneShotEstimate", "fed_oneshot_estimate", "gaussian_pair_epsilon", "write_fed_oneshot"]

FORMAT = "privaudit.fed_oneshot/1"


def _log_mass(lo: float, hi: float) -> float:
    """log Phi(hi) - Phi(lo) for the standard normal, accurate in either tail."""
    if hi <= lo:
        return -math.inf
    if lo > 0:  # upper tail: mirror into the lower one
        lo, hi = -hi, -lo
    la, lb = float(scipy.special.log_ndtr(hi)), float(scipy.special.log_ndtr(lo))
    if lb == -math.inf:
        return la
    return la + math.log1p(-math.exp(min(lb - la, 0.0))) if lb < la else -math.inf


def _hockey_stick(eps: float, m1: float, s1: float, m0: float, s0: float) -> float:
    """E_P[(1 - e^eps q/p)_+] = P(A) - e^eps Q(A), A = {log p/q > eps}, P = N(m1, s1^2), Q = N(m0, s0^2)."""
    # log p - log q - eps = a x^2 + b x + c
    a = 0.5 / s0**2 - 0.5 / s1**2
    b = m1 / s1**2 - m0 / s0**2
    c = 0.5 * m0**2 / s0**2 - 0.5 * m1**2 / s1**2 + math.log(s0 / s1) - eps
    scale = max(abs(b), 1.0 / s0**2, 1.0 / s1**2)
    if abs(a) <= 1e-12 * scale:  # equal variances: a half-line
        if b == 0:
            intervals = [(-math.inf, math.inf)] if c > 0 else []
        elif b > 0:
            intervals = [(-c / b, math.inf)]
        else:
            intervals = [(-math.inf, -c / b)]
    else:
        disc = b * b - 4 * a * c
        if disc <= 0:
            intervals = [(-math.inf, math.inf)] if a > 0 else []
        else:
            r = math.sqrt(disc)
            x1, x2 = sorted(((-b - r) / (2 * a), (-b + r) / (2 * a)))
            intervals = [(-math.inf, x1), (x2, math.inf)] if a > 0 else [(x1, x2)]
    total = 0.0
    for lo, hi in intervals:
        lp = _log_mass((lo - m1) / s1, (hi - m1) / s1)
        lq = _log_mass((lo - m0) / s0, (hi - m0) / s0)
        total += math.exp(lp) - math.exp(min(eps + lq, 700.0))
    return max(total, 0.0)


def gaussian_pair_epsilon(*, mu: float, sigma: float, sigma0: float, delta: float) -> float:
    """The smallest epsilon with which N(0, sigma0^2) and N(mu, sigma^2) are (epsilon, delta)-indistinguishable.

    delta(eps) is the larger hockey-stick divergence of the two orders; with sigma == sigma0
    this is the epsilon of mu/sigma0-Gaussian DP (`gdp_epsilon`).

    >>> round(gaussian_pair_epsilon(mu=1.0, sigma=1.0, sigma0=1.0, delta=1e-5), 4)
    4.3772
    """
    _validate.positive(sigma=sigma, sigma0=sigma0)
    _validate.in_range(0, 1, lo_open=True, hi_open=True, delta=delta)
    if not math.isfinite(mu):
        raise ValueError(f"Expected a finite mu, got {mu}.")

    def d(eps: float) -> float:
        return max(_hockey_stick(eps, mu, sigma, 0.0, sigma0), _hockey_stick(eps, 0.0, sigma0, mu, sigma))

    if d(0.0) <= delta:
        return 0.0
    hi = 1.0
    while d(hi) > delta:
        hi *= 2.0
        if hi > 1e6:
            return math.inf
    lo = 0.0
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if d(mid) <= delta else (mid, hi)
        if hi - lo <= 1e-9 * max(1.0, hi):
            break
    return hi


@dataclasses.dataclass(frozen=True, kw_only=True)
class FedOneShotEstimate:
    """A DP-FedAvg run's one-run audit: the rigorous lower bound (and verdict) from the candidate canaries, and
    the one-shot ESTIMATE of epsilon (not a bound, no confidence level) from the inserted ones' cosines.

    Attributes:
        epsilon_estimate: epsilon of N(0, 1/d) vs N(mu_c, sigma_c^2) at `delta`.
        epsilon_gdp: epsilon of mu-GDP with mu = |mu_c| sqrt(d) (equal variances).
        epsilon_claimed: what the accountant claims for the run (all m candidate canary clients counted as clients).
        canaries, inserted: the pool of m candidate canary clients, and how many of them joined
            (each independently with probability 1/2; the others are the OUT canaries of the bound).
        epsilon_lower, bound, verdict: the rigorous one-run lower bound (Steinke, Nasr & Jagielski
            2023) from the cosines of the m candidates and their random inclusion, at confidence
            1 - alpha, and FAIL if it exceeds `epsilon_claimed` (else PASS).
        dimension: d.
        mu_c, sigma_c: mean and std (ddof=1; the null's when fewer than 2 joined) of the inserted
            canaries' cosines.
        sigma_0: the null's std, 1/sqrt(d).
        null_directions, null_mean, null_std: k' unobserved directions and their cosines' mean and std
            (a check of the null; not used by the estimate).
        canary_cosines, null_cosines: the statistics themselves.
        canary_rounds: how many rounds each canary took part in.
    """

    epsilon_estimate: float
    epsilon_gdp: float
    gdp_mu: float
    epsilon_claimed: float
    delta: float
    canaries: int
    inserted: int
    epsilon_lower: float
    bound: dict[str, Any]
    verdict: str
    dimension: int
    mu_c: float
    sigma_c: float
    sigma_0: float
    null_directions: int
    null_mean: float
    null_std: float
    noise_multiplier: float
    clipping_norm: float
    clients: int
    rounds: int
    seed: int
    test_accuracy: float
    seconds: float
    settings: dict[str, Any]
    canary_cosines: np.ndarray = dataclasses.field(repr=False)
    null_cosines: np.ndarray = dataclasses.field(repr=False)
    canary_rounds: np.ndarray = dataclasses.field(repr=False)
    pool_cosines: np.ndarray = dataclasses.field(repr=False)
    pool_included: np.ndarray = dataclasses.field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"format": FORMAT, "kind": "estimate",
                               "note": "epsilon_estimate / epsilon_gdp: an empirical ESTIMATE (Andrew et al. "
                                       "2023, arXiv 2302.03098), no confidence level, Gaussian fit of canary "
                                       "cosines. epsilon_lower: a rigorous one-run lower bound (Steinke, Nasr & "
                                       "Jagielski 2023) at confidence 1 - alpha, which decides the verdict."}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = v.tolist() if isinstance(v, np.ndarray) else v
        return _finite(out)


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _unit_rows(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    u = rng.standard_normal((n, d))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def fed_oneshot_estimate(settings: Any, *, canaries: int, null_directions: int = 1000, seed: int = 0,
                         alpha: float = 0.05, progress: Callable[[str], None] | None = None) -> FedOneShotEstimate:
    """Trains one DP-FedAvg run (embedded simulator) with canary clients; estimates and lower-bounds epsilon.

    Args:
        settings: `FederatedSettings` with dp='client' (the canary clients that join are
            clients of the run, so the accountant and any calibration count them); nothing
            is written to `settings.out`.
        canaries: m >= 1 candidate canary clients, each joining with probability 1/2.
        alpha: 1 - confidence of the one-run lower bound.
        null_directions: k' >= 1 unobserved random directions (never inserted).
        seed: seeds the canary and null directions (training uses `settings.seed`).
        progress: called with a line per round.

    Raises:
        ValueError: dp != 'client', adaptive clipping, the Flower engine, k < 1 or k' < 1.
    """
    import torch

    from privaudit.accounting import make_accountant
    from privaudit.training._fed_build import build_federated_model, build_server, load_federation
    from privaudit.training._fed_partition import Partition
    from privaudit.training._fed_settings import FederatedSettings
    from privaudit.training._fed_sim import FederatedSimulation
    from privaudit.training._job import _device, evaluate

    if not isinstance(settings, FederatedSettings):
        raise ValueError(f"Expected FederatedSettings, got {type(settings).__name__}.")
    s = settings
    if isinstance(canaries, bool) or not isinstance(canaries, (int, np.integer)) or canaries < 1:
        raise ValueError(f"Expected canaries >= 1 (the number k of canary clients), got {canaries!r}.")
    _validate.integer(minimum=1, null_directions=null_directions)
    _validate.integer(minimum=0, seed=seed)
    if s.dp != "client":
        raise ValueError(f"One-shot estimation audits client-level DP (DP-FedAvg): expected dp='client', "
                         f"got dp={s.dp!r}.")
    if s.adaptive_clip:
        raise ValueError("One-shot estimation with adaptive clipping is not supported: use a fixed clip S.")
    if s.engine == "flower":
        raise ValueError("One-shot estimation runs the embedded simulator: expected engine 'vectorised' or "
                         "'sequential', got 'flower'.")
    m = int(canaries)
    _validate.in_range(0.0, 1.0, lo_open=True, hi_open=True, alpha=alpha)
    canary_rng, null_rng, include_rng = (np.random.default_rng(c)
                                         for c in np.random.SeedSequence([seed, 0x0C05]).spawn(3))
    # Each candidate joins with probability 1/2, independently of everything else (the one-run
    # audit's randomisation, Steinke et al. 2023, Sec. 3); the ones left out are its OUT canaries.
    included = include_rng.random(m) < 0.5
    k = int(included.sum())
    t0 = time.perf_counter()
    device = _device(s.device)
    fed = load_federation(s)
    n_real = fed.partition.num_clients
    # All m candidates are clients n_real + i, each holding one placeholder row (a copy of row 0) that
    # it never trains on; a candidate left out sends a zero update, which is exactly its absence from
    # the clipped sum. So the number of clients, the client sampling and the fixed denominator do not
    # depend on which candidates joined: the runs for two inclusion vectors differ in one client's
    # data only, as the accountant's claim (and the one-run audit built on it) assumes.
    rows = fed.partition.num_examples
    x = torch.cat([fed.x_train, fed.x_train[:1].expand(m, *fed.x_train.shape[1:])])
    y = torch.cat([fed.y_train, fed.y_train[:1].expand(m)])
    partition = Partition(clients=(*fed.partition.clients, *(np.array([rows + i]) for i in range(m))),
                          method=fed.partition.method, seed=fed.partition.seed, alpha=fed.partition.alpha)
    fed = dataclasses.replace(fed, partition=partition, x_train=x, y_train=y)
    model = build_federated_model(s, fed.ds).to(device)
    server = build_server(s, fed)
    aggregator = server.aggregator
    clip = float(aggregator.clipping_norm)  # type: ignore[attr-defined]
    d = sum(p.numel() for p in model.parameters())
    pool = _unit_rows(canary_rng, m, d)
    fixed = {n_real + i: torch.from_numpy(clip * pool[i] if included[i] else np.zeros(d)) for i in range(m)}
    sim = FederatedSimulation(module=model, x=x, y=y, partition=partition, local=fed.local, aggregator=aggregator,
                              sampler=server.sampler, seed=s.seed, engine=s.engine, max_clients=s.max_clients,
                              fixed_updates=fixed)
    initial = sim.global_flat.detach().double().cpu().clone()
    for r in range(1, s.rounds + 1):
        res = sim.run_round()
        if progress is not None:
            sampled = np.asarray(res.clients)
            canary = sampled >= n_real
            joined = int(included[sampled[canary] - n_real].sum())
            progress(f"round {r}/{s.rounds}: {int((~canary).sum())} clients + {joined} canaries")
    delta_w = sim.global_flat.detach().double().cpu() - initial
    norm = float(delta_w.norm())
    unit_delta = (delta_w / norm).numpy() if norm > 0 else np.zeros(d)
    cos_pool = pool @ unit_delta
    cos_c = cos_pool[included]
    cos_0 = np.concatenate([_unit_rows(null_rng, min(256, null_directions - i), d) @ unit_delta
                            for i in range(0, int(null_directions), 256)])
    sigma_0 = 1.0 / math.sqrt(d)
    if k:
        mu_c = float(np.mean(cos_c))
        sigma_c = float(np.std(cos_c, ddof=1)) if k > 1 else sigma_0
        if not sigma_c > 0:
            sigma_c = 1e-12 * sigma_0
        eps_est = gaussian_pair_epsilon(mu=mu_c, sigma=sigma_c, sigma0=sigma_0, delta=s.delta)
    else:  # no candidate joined: nothing to estimate from
        mu_c, sigma_c, eps_est = 0.0, sigma_0, 0.0
    gdp_mu = abs(mu_c) / sigma_0
    eps_gdp = gdp_epsilon(gdp_mu, s.delta)
    # Higher cosine = more likely IN; the guess uses the scores only, never the inclusion.
    bound = one_run_two_sided(cos_pool, included, delta=s.delta, alpha=alpha)
    ledger = aggregator.ledger  # type: ignore[attr-defined]
    claimed = make_accountant(s.accountant, neighboring_relation=ledger.neighboring_relation).compose(
        ledger.to_event()).get_epsilon(s.delta)
    sim.sync_module()
    acc = float(evaluate(model, fed.x_test, fed.y_test, device=device)[1])
    part = np.zeros(m, dtype=np.int64)
    for clients in sim.participation:
        for c in clients:
            if c >= n_real:
                part[c - n_real] += 1
    part = part[included]  # rounds taken part in, for the canaries that joined
    return FedOneShotEstimate(
        epsilon_estimate=float(eps_est), epsilon_gdp=float(eps_gdp), gdp_mu=float(gdp_mu),
        epsilon_claimed=float(claimed), delta=s.delta, canaries=m, inserted=k,
        epsilon_lower=float(bound.epsilon), bound=bound.to_dict(),
        verdict="FAIL" if bound.epsilon > float(claimed) else "PASS", dimension=int(d), mu_c=mu_c, sigma_c=sigma_c,
        sigma_0=sigma_0, null_directions=int(null_directions), null_mean=float(np.mean(cos_0)),
        null_std=float(np.std(cos_0, ddof=1)) if cos_0.size > 1 else math.nan,
        noise_multiplier=float(aggregator.noise_multiplier), clipping_norm=clip,  # type: ignore[attr-defined]
        clients=n_real, rounds=sim.rounds_run, seed=int(seed), test_accuracy=acc,
        seconds=time.perf_counter() - t0, settings={k_: v for k_, v in s.to_dict().items() if v is not None},
        canary_cosines=cos_c, null_cosines=cos_0, canary_rounds=part, pool_cosines=cos_pool,
        pool_included=included)


def write_fed_oneshot(result: FedOneShotEstimate, out_dir: str | Path) -> list[Path]:
    """Writes `audit.json` into `out_dir` (created if needed); returns the files written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "audit.json"
    _io.atomic_write_json(path, result.to_dict())
    return [path]
