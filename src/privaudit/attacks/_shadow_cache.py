"""Shadow models on disk: one folder per training specification, reused across attacks, and shards.

```
runs/<name>/shadows/
    k16-seed0-1a2b3c4d5e6f/              the cache key: K, seed, hash of the spec
        shadows.json                     spec, per-model seeds, IN/OUT mask, models held
        weights.safetensors              stacked parameters {name: (K, ...)}
        logits-none.safetensors          {"logits": (K, A, n, C)} on the population, per augmentation
        shards/2-of-4/{shadows.json, weights.safetensors, logits-none.safetensors}
```

The key hashes everything that determines the trained models (K, seed, the
training settings, the architecture, a SHA-256 fingerprint of the population's
inputs and labels), so the same request finds the same folder and any change
goes to a new one. Files are written atomically and `shadows.json` last: a
folder with it is complete. Nothing is pickled.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _io
from ..training._rundir import _read_json, _read_safetensors, _safetensors_bytes

__all__ = ["ShadowCache", "ShadowSet", "ShadowSpec", "fingerprint", "shard_models"]

SHADOW_FORMAT = "privaudit.shadows/1"
_META = "shadows.json"
_WEIGHTS = "weights.safetensors"


def fingerprint(*arrays: np.ndarray) -> str:
    """SHA-256 over the arrays' dtypes, shapes and bytes."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def shard_models(num_models: int, shard: tuple[int, int]) -> list[int]:
    """Model indices of shard i of n (1-based i): `np.array_split(range(K), n)[i - 1]`."""
    i, n = shard
    if not (isinstance(i, int) and isinstance(n, int)) or not 1 <= i <= n:
        raise ValueError(f"Expected shard=(i, n) with 1 <= i <= n, got {shard!r}.")
    if n > num_models:
        raise ValueError(f"Expected at most {num_models} shards for {num_models} shadow models, got n={n}.")
    return [int(m) for m in np.array_split(np.arange(num_models), n)[i - 1]]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ShadowSpec:
    """Everything that determines a set of trained shadow models."""

    num_models: int
    seed: int
    training: Mapping[str, Any]
    architecture: Mapping[str, Any]
    population: str

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), sort_keys=True))

    def key(self) -> str:
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()
        return f"k{self.num_models}-seed{self.seed}-{digest[:12]}"


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class ShadowSet:
    """Trained shadow models (all K, or one shard's) and their logits on the population.

    Attributes:
        spec: what was trained.
        membership: bool (K, n), the IN/OUT mask of all K models.
        seeds: the K per-model seeds.
        models: indices (into K) of the models held here.
        params: {name: (len(models), ...)} stacked parameters.
        logits: {augmentation: float32 (len(models), A, n, C)}.
        seconds: wall time of the training (summed over shards after a merge).
        from_cache: loaded from disk rather than trained by this call.
    """

    spec: ShadowSpec
    membership: np.ndarray
    seeds: tuple[int, ...]
    models: tuple[int, ...]
    params: Mapping[str, torch.Tensor]
    logits: Mapping[str, np.ndarray]
    seconds: float
    from_cache: bool = False


def _mask_strings(mask: np.ndarray) -> list[str]:
    return ["".join("1" if v else "0" for v in row) for row in mask]


def _mask_from(strings: Any, where: str) -> np.ndarray:
    if not isinstance(strings, list) or not strings or not all(isinstance(s, str) for s in strings):
        raise ValueError(f"{where}: 'membership' must be a list of 0/1 strings.")
    if len({len(s) for s in strings}) != 1 or any(set(s) - {"0", "1"} for s in strings):
        raise ValueError(f"{where}: 'membership' rows must be 0/1 strings of one length.")
    return np.array([[c == "1" for c in s] for s in strings], dtype=bool)


class ShadowCache:
    """The `shadows/` folder of a run (or any folder)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def folder(self, spec: ShadowSpec) -> Path:
        return self.root / spec.key()

    def shard_folder(self, spec: ShadowSpec, shard: tuple[int, int]) -> Path:
        return self.folder(spec) / "shards" / f"{shard[0]}-of-{shard[1]}"

    # -- writing ------------------------------------------------------------------
    def save(self, shadows: ShadowSet, *, shard: tuple[int, int] | None = None) -> Path:
        """Writes a full set (or, with `shard`, one shard's models); returns the folder."""
        folder = self.folder(shadows.spec) if shard is None else self.shard_folder(shadows.spec, shard)
        if shard is None and list(shadows.models) != list(range(shadows.spec.num_models)):
            raise ValueError("Expected all K models to save a full shadow set (use shard= for a part).")
        _io.atomic_write_bytes(folder / _WEIGHTS, _safetensors_bytes(shadows.params, None, "params"))
        for augment, logits in shadows.logits.items():
            self._save_logits(folder, augment, logits)
        self._write_meta(folder, shadows, shard)
        return folder

    def add_logits(self, shadows: ShadowSet, augment: str, logits: np.ndarray) -> None:
        """Stores the full set's logits under another augmentation."""
        self._save_logits(self.folder(shadows.spec), augment, logits)

    @staticmethod
    def _save_logits(folder: Path, augment: str, logits: np.ndarray) -> None:
        tensor = torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))
        _io.atomic_write_bytes(folder / f"logits-{augment}.safetensors",
                               _safetensors_bytes({"logits": tensor}, None, "logits"))

    @staticmethod
    def _write_meta(folder: Path, shadows: ShadowSet, shard: tuple[int, int] | None) -> None:
        _io.atomic_write_json(folder / _META, {
            "format": SHADOW_FORMAT,
            "key": shadows.spec.key(),
            "spec": shadows.spec.to_dict(),
            "shard": None if shard is None else list(shard),
            "models": list(shadows.models),
            "seeds": list(shadows.seeds),
            "membership": _mask_strings(shadows.membership),
            "training_seconds": shadows.seconds,
            "written": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })

    # -- reading ------------------------------------------------------------------
    def load(self, spec: ShadowSpec, *, shard: tuple[int, int] | None = None) -> ShadowSet | None:
        """The cached set (or shard) for `spec`, or None when there is none."""
        folder = self.folder(spec) if shard is None else self.shard_folder(spec, shard)
        return _load_folder(folder, spec)

    def shards(self, spec: ShadowSpec) -> dict[tuple[int, int], Path]:
        """Complete shard folders of `spec`, keyed (i, n)."""
        base = self.folder(spec) / "shards"
        out = {}
        if base.is_dir():
            for p in sorted(base.iterdir()):
                parts = p.name.split("-of-")
                if len(parts) == 2 and all(s.isdigit() for s in parts) and (p / _META).is_file():
                    out[(int(parts[0]), int(parts[1]))] = p
        return out

    def missing_shards(self, spec: ShadowSpec, num_shards: int) -> list[int]:
        have = self.shards(spec)
        return [i for i in range(1, num_shards + 1) if (i, num_shards) not in have]

    def complete_shard_count(self, spec: ShadowSpec) -> int | None:
        """The n of a complete set of shards i/n on disk (the largest such n), or None."""
        counts = sorted({n for _, n in self.shards(spec)}, reverse=True)
        for n in counts:
            if not self.missing_shards(spec, n):
                return n
        return None

    def merge(self, spec: ShadowSpec, num_shards: int) -> ShadowSet:
        """Combines shards 1..n of `spec` into the full set, saves it and returns it."""
        missing = self.missing_shards(spec, num_shards)
        if missing:
            names = ", ".join(f"{i}/{num_shards}" for i in missing)
            raise ValueError(f"Cannot merge: shard(s) {names} of {spec.key()} have not been trained.")
        parts = [self.load(spec, shard=(i, num_shards)) for i in range(1, num_shards + 1)]
        assert all(p is not None for p in parts)
        sets: list[ShadowSet] = [p for p in parts if p is not None]
        models = [m for s in sets for m in s.models]
        if models != list(range(spec.num_models)):
            raise ValueError(f"Cannot merge: the shards hold models {models}, not 0..{spec.num_models - 1}.")
        first = sets[0]
        for s in sets[1:]:
            if s.seeds != first.seeds or not np.array_equal(s.membership, first.membership):
                raise ValueError("Cannot merge: the shards disagree on the seeds or the IN/OUT mask.")
        augments = set.intersection(*(set(s.logits) for s in sets))
        merged = ShadowSet(
            spec=spec, membership=first.membership, seeds=first.seeds, models=tuple(models),
            params={k: torch.cat([s.params[k] for s in sets]) for k in first.params},
            logits={a: np.concatenate([s.logits[a] for s in sets]) for a in sorted(augments)},
            seconds=float(sum(s.seconds for s in sets)), from_cache=True)
        self.save(merged)
        return merged


def _load_folder(folder: Path, spec: ShadowSpec) -> ShadowSet | None:
    meta_path = folder / _META
    if not meta_path.is_file():
        return None
    meta = _read_json(meta_path)
    where = str(meta_path)
    if not isinstance(meta, dict) or meta.get("format") != SHADOW_FORMAT:
        raise ValueError(f"{where!r} is not a privaudit shadow record ({SHADOW_FORMAT}).")
    if meta.get("spec") != spec.to_dict():
        raise ValueError(f"{where!r} was written for another specification than its key says; delete the folder.")
    membership = _mask_from(meta.get("membership"), where)
    seeds, models = meta.get("seeds"), meta.get("models")
    if (not isinstance(seeds, list) or len(seeds) != spec.num_models or membership.shape[0] != spec.num_models
            or not isinstance(models, list)):
        raise ValueError(f"{where!r}: seeds, membership and models do not match K={spec.num_models}.")
    params = _read_safetensors(folder / _WEIGHTS)
    logits = {}
    for p in sorted(folder.glob("logits-*.safetensors")):
        tensors = _read_safetensors(p)
        if "logits" not in tensors:
            raise ValueError(f"{str(p)!r} has no 'logits' tensor.")
        logits[p.name[len("logits-"):-len(".safetensors")]] = tensors["logits"].numpy()
    for name, t in [*params.items(), *(("logits", v) for v in logits.values())]:
        if t.shape[0] != len(models):
            raise ValueError(f"{where!r}: {name} holds {t.shape[0]} models, the record lists {len(models)}.")
    return ShadowSet(spec=spec, membership=membership, seeds=tuple(int(s) for s in seeds),
                     models=tuple(int(m) for m in models), params=params, logits=logits,
                     seconds=float(meta.get("training_seconds", 0.0)), from_cache=True)

