"""A privaudit run as an attack target, and its shadow models (trained once, cached in the run).

Population: the whole dataset of the run, its train split (the target's
members) followed by its held-out split (non-members). Each shadow model
trains on a random half of that population with the target's own settings
(model, epochs, batch size, learning rate, momentum and, for a DP target,
C, sigma and the clipping mode); the target is then attacked on every
population point, with membership = "in the train split".

A federated run (`privaudit train --federated`, `[resolved].federated = true`)
is attacked the same way, with members = the training rows of all clients (the
union of federation.json's `client_examples`, which must equal the split's
members) and non-members = the held-out split. Its shadow models would have to
replay the federation (partition, client sampling, local training, DP-FedAvg):
that is not supported, and `shadows_for_run` refuses (`RunTarget.federated`).

Note that the population's features are those the run trained on: for data
standardised with the train split's statistics (breast-cancer, CSV/Parquet),
the attacker is handed the target's preprocessing, as in the usual LiRA setup.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..training._fed_settings import FederatedSettings
from ..training._job import TrainSettings, _device, _load_data, build_for
from ..training._rundir import RunDir
from ._model_signals import resolve_augment, stacked_model_logits
from ._shadow_cache import ShadowCache, ShadowSet, ShadowSpec, fingerprint, shard_models
from ._shadows import ShadowConfig, assign_membership, shadow_seeds, train_shadows

__all__ = ["RunTarget", "load_run", "shadow_config_for", "shadows_for_run"]


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class RunTarget:
    """What an attack needs from a run directory.

    Attributes:
        run: the opened run directory.
        settings: the run's training settings (`FederatedSettings` for a federated run).
        config: the run's whole config.toml.
        inputs, labels: the population (train split, then held-out split).
        membership: bool (n,), True for the train split (the target's members).
        dataset_indices: (n,) each population row's index in the original dataset.
        model: the trained target model (eval mode).
        model_fn: `model_fn(seed)` builds a fresh model of the run's architecture.
        shadow_config: the target's training settings, for the shadows (None for a federated run:
            its shadows are not supported).
        device: where models run.
    """

    run: RunDir
    settings: TrainSettings | FederatedSettings
    config: dict[str, Any]
    inputs: torch.Tensor
    labels: torch.Tensor
    membership: np.ndarray
    dataset_indices: np.ndarray
    model: nn.Module
    model_fn: Callable[[int], nn.Module]
    shadow_config: ShadowConfig | None
    device: torch.device

    @property
    def federated(self) -> bool:
        return isinstance(self.settings, FederatedSettings)

    @property
    def private(self) -> bool:
        if isinstance(self.settings, FederatedSettings):
            return self.settings.dp != "none"
        return not self.settings.no_dp


def _settings(rd: RunDir) -> tuple[dict[str, Any], TrainSettings]:
    config = rd.read_config()
    stored = config.get("settings")
    if not isinstance(stored, dict):
        raise ValueError(f"{str(rd.config_path)!r} has no [settings] table: not a privaudit training run.")
    return config, TrainSettings.from_mapping(stored)


def shadow_config_for(settings: TrainSettings, n_train: int, *, expected_batch_size: int | None = None,
                      noise_multiplier: float | None = None, max_grad_norm: float | None = None) -> ShadowConfig:
    """How shadow models train to follow a target trained with `settings` on `n_train` examples.

    Without a fixed `batch_size`, every shadow model keeps the target's sampling rate q (the run's
    resolved `expected_batch_size` / n_train, else the recipe's), and so its step count. DP runs pass
    the target's resolved `noise_multiplier` and the clipping norm C the shadows use.
    """
    batch, rate = settings.batch_size, None
    if batch is None:
        batch = int(expected_batch_size or settings.expected_batch_size(n_train))
        rate = batch / n_train
    return ShadowConfig(
        epochs=settings.epochs, batch_size=batch, sampling_rate=rate, optimizer=settings.optimizer,
        lr=settings.lr, momentum=settings.momentum, no_dp=settings.no_dp,
        max_grad_norm=None if settings.no_dp else max_grad_norm, noise_multiplier=noise_multiplier,
        clipping=settings.clipping)


def load_run(run_dir: str | Path, *, device: str = "auto") -> RunTarget:
    """Opens a finished training run as an attack target.

    Raises:
        ValueError: not a run directory, no config / split / weights, or a split that
            no longer matches the dataset the settings load.
    """
    rd = RunDir.open(run_dir)
    config = rd.read_config()
    if (config.get("resolved") or {}).get("federated"):
        return _load_federated(rd, config, device)
    config, settings = _settings(rd)
    if not rd.split_path.is_file():
        raise ValueError(f"Run directory {str(rd.path)!r} has no split.json: the members are unknown.")
    split = rd.read_split()
    if not rd.model_path.is_file():
        raise ValueError(f"Run directory {str(rd.path)!r} has no model.safetensors: train it first.")
    ds = _load_data(settings)
    if (list(split.get("members", [])) != ds.train_indices.tolist()
            or list(split.get("non_members", [])) != ds.test_indices.tolist()):
        raise ValueError(f"{str(rd.split_path)!r} does not match the split that the run's settings load "
                         f"(data {settings.data!r}, split_seed {settings.split_seed}).")
    dev = _device(device)
    model = build_for(settings, ds)
    model.load_state_dict(rd.load_weights())
    model.to(dev).eval()
    inputs = torch.from_numpy(np.ascontiguousarray(np.concatenate([ds.x_train, ds.x_test])))
    labels = torch.from_numpy(np.concatenate([ds.y_train, ds.y_test]).astype(np.int64))
    membership = np.concatenate([np.ones(ds.n_train, bool), np.zeros(ds.n_test, bool)])
    if settings.no_dp:
        noise = None
    else:
        dp = (config.get("resolved") or {}).get("dp") or {}
        if "noise_multiplier" not in dp:
            raise ValueError(f"{str(rd.config_path)!r} lacks [resolved.dp].noise_multiplier for a DP run.")
        noise = float(dp["noise_multiplier"])
    resolved = config.get("resolved") or {}
    clip = None if settings.no_dp else settings.max_grad_norm
    if settings.adaptive_clip and not settings.no_dp:
        # The shadows clip at a fixed norm: the one the target's adaptive clipping ended with (the
        # stored update noise multiplier is the target's). An approximation of the target's
        # trajectory of norms, which the shadows do not replay.
        final = rd.read_summary().get("final_clipping_norm") if rd.summary_path.is_file() else None
        if final is None:
            raise ValueError(f"{str(rd.path)!r} used adaptive clipping but its summary.json has no "
                             "final_clipping_norm: finish the run first.")
        clip = float(final)
    shadow_config = shadow_config_for(settings, ds.n_train, expected_batch_size=resolved.get("expected_batch_size"),
                                      noise_multiplier=noise, max_grad_norm=clip)

    def model_fn(seed: int) -> nn.Module:
        return build_for(dataclasses.replace(settings, seed=int(seed)), ds)

    return RunTarget(run=rd, settings=settings, config=config, inputs=inputs, labels=labels,
                     membership=membership, dataset_indices=np.concatenate([ds.train_indices, ds.test_indices]),
                     model=model, model_fn=model_fn, shadow_config=shadow_config, device=dev)


def _load_federated(rd: RunDir, config: dict[str, Any], device: str) -> RunTarget:
    """`load_run` for a federated run: members = every client's training rows, non-members = held-out."""
    from ..training._fed_build import build_federated_model, load_federation

    stored = config.get("settings")
    if not isinstance(stored, dict):
        raise ValueError(f"{str(rd.config_path)!r} has no [settings] table: not a privaudit training run.")
    settings = FederatedSettings.from_mapping(stored)
    for path, what in ((rd.split_path, "split.json: the members are unknown"),
                       (rd.path / "federation.json", "federation.json: the clients' examples are unknown"),
                       (rd.model_path, "model.safetensors: train it first")):
        if not path.is_file():
            raise ValueError(f"Federated run directory {str(rd.path)!r} has no {what}.")
    split = rd.read_split()
    ds = load_federation(settings).ds
    if (list(split.get("members", [])) != ds.train_indices.tolist()
            or list(split.get("non_members", [])) != ds.test_indices.tolist()):
        raise ValueError(f"{str(rd.split_path)!r} does not match the split that the run's settings load "
                         f"(data {settings.data!r}, split_seed {settings.split_seed}).")
    federation = json.loads((rd.path / "federation.json").read_text(encoding="utf-8"))
    examples = (federation.get("partition") or {}).get("client_examples")
    if not isinstance(examples, list):
        raise ValueError(f"{str(rd.path / 'federation.json')!r} lacks partition.client_examples.")
    held = sorted(int(i) for client in examples for i in client)
    if held != sorted(ds.train_indices.tolist()):
        raise ValueError(f"{str(rd.path / 'federation.json')!r}: the clients' examples are not the split's "
                         "members.")
    dev = _device(device)

    def model_fn(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            return build_federated_model(dataclasses.replace(settings, seed=int(seed)), ds)

    model = model_fn(settings.seed)
    model.load_state_dict(rd.load_weights())
    model.to(dev).eval()
    inputs = torch.from_numpy(np.ascontiguousarray(np.concatenate([ds.x_train, ds.x_test])))
    labels = torch.from_numpy(np.concatenate([ds.y_train, ds.y_test]).astype(np.int64))
    membership = np.concatenate([np.ones(ds.n_train, bool), np.zeros(ds.n_test, bool)])
    return RunTarget(run=rd, settings=settings, config=config, inputs=inputs, labels=labels,
                     membership=membership, dataset_indices=np.concatenate([ds.train_indices, ds.test_indices]),
                     model=model, model_fn=model_fn, shadow_config=None, device=dev)


def federated_shadows_error(attacks: list[str] | tuple[str, ...]) -> ValueError:
    """The refusal of shadow-model attacks on a federated run."""
    return ValueError(f"Attack(s) {', '.join(attacks)} need shadow models: shadow training for federated runs "
                      "is not supported; use --attack loss.")


def shadow_spec(target: RunTarget, *, num_models: int, seed: int) -> ShadowSpec:
    if target.shadow_config is None:
        raise federated_shadows_error(["lira", "rmia"])
    with torch.random.fork_rng(devices=[]):
        template = target.model_fn(0)
    architecture = {
        "model": target.settings.model,
        "class": type(template).__name__,
        "parameters": {n: list(p.shape) for n, p in template.named_parameters()},
    }
    return ShadowSpec(num_models=num_models, seed=seed,
                      training={**target.shadow_config.training_dict(), "loss": "cross_entropy"},
                      architecture=architecture,
                      population=fingerprint(target.inputs.numpy(), target.labels.numpy()))


def _train(target: RunTarget, spec: ShadowSpec, models: list[int], augment: str,
           on_step: Callable[[int, int], None] | None) -> ShadowSet:
    assert target.shadow_config is not None
    n = int(target.labels.shape[0])
    membership = assign_membership(num_models=spec.num_models, num_examples=n, seed=spec.seed)
    seeds = shadow_seeds(num_models=spec.num_models, seed=spec.seed)
    t0 = time.perf_counter()
    template, params = train_shadows(model_fn=target.model_fn, inputs=target.inputs, targets=target.labels,
                                     membership=membership, seeds=seeds, config=target.shadow_config,
                                     models=models, device=target.device, on_step=on_step)
    seconds = time.perf_counter() - t0
    logits = stacked_model_logits(template, params, target.inputs, augment=augment, device=target.device)
    return ShadowSet(spec=spec, membership=membership, seeds=tuple(seeds), models=tuple(models),
                     params=params, logits={augment: logits}, seconds=seconds)


def _with_logits(cache: ShadowCache, target: RunTarget, shadows: ShadowSet, augment: str) -> ShadowSet:
    if augment in shadows.logits:
        return shadows
    with torch.random.fork_rng(devices=[]):
        template = target.model_fn(0)
    logits = stacked_model_logits(template, shadows.params, target.inputs, augment=augment, device=target.device)
    cache.add_logits(shadows, augment, logits)
    return dataclasses.replace(shadows, logits={**shadows.logits, augment: logits})


def shadows_for_run(
    target: RunTarget,
    *,
    num_models: int,
    seed: int,
    shard: tuple[int, int] | None = None,
    merge: bool = False,
    augment: str = "auto",
    on_step: Callable[[int, int], None] | None = None,
) -> ShadowSet:
    """The run's shadow models: from `runs/<name>/shadows/` when cached, else trained and cached.

    Without `shard`: the full cached set if there is one; else a complete set of
    shards on disk is merged (`merge=True` insists on it and fails when shards are
    missing); else all K models are trained. With `shard=(i, n)`: only that
    shard's models are trained (or loaded) and saved under `shards/i-of-n/`.
    """
    if target.shadow_config is None:
        raise federated_shadows_error(["lira", "rmia"])
    augment = resolve_augment(augment, input_ndim=target.inputs.dim())
    cache = ShadowCache(target.run.path / "shadows")
    spec = shadow_spec(target, num_models=num_models, seed=seed)
    if shard is not None:
        models = shard_models(num_models, shard)
        part = cache.load(spec, shard=shard)
        if part is None:
            part = _train(target, spec, models, augment, on_step)
            cache.save(part, shard=shard)
        return part
    full = cache.load(spec)
    if full is None:
        count = cache.complete_shard_count(spec)
        if count is not None:
            full = cache.merge(spec, count)
        elif merge:
            present = sorted({n for _, n in cache.shards(spec)})
            if not present:
                raise ValueError(f"--merge: no shards of {spec.key()} in {str(cache.root)!r}; "
                                 "train each with --shard i/n first.")
            cache.merge(spec, present[-1])  # raises, naming the missing shards
    if full is None:
        full = _train(target, spec, list(range(num_models)), augment, on_step)
        cache.save(full)
        return full
    return _with_logits(cache, target, full, augment)
