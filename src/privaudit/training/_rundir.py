"""The run directory `runs/<name>/`: everything a training run leaves behind.

```
runs/<name>/
    run.json             marker: format and name (written by RunDir.create)
    config.toml          the configuration the run was started with
    split.json           members (train indices), non-members (test indices), seeds
    ledger.json          the privacy ledger (PrivacyLedger.save)
    metrics.jsonl        one JSON record per line, appended as training goes
    model.safetensors    final weights
    summary.json         final results
    checkpoint/LATEST    name of the newest complete checkpoint folder
    checkpoint/ckpt-000007-1a2b3c4d/{tensors.safetensors,state.json}
```

Every file is written atomically (temporary file, fsync, rename), so a crash
leaves the previous version, never half a file. Tensors go to safetensors and
everything else to JSON or TOML: nothing here is ever pickled, so opening a
run directory from someone else cannot run their code.

Checkpoints are versioned folders under `checkpoint/` plus the pointer file
`checkpoint/LATEST`. A new checkpoint is written and fsynced in full before
`LATEST` is atomically replaced to name it, and only then are older folders
deleted; at every instant `LATEST` names a complete checkpoint (or does not
exist yet).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import math
import numbers
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import _io
from ..accounting import PrivacyLedger

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = ["RunDir", "flatten_state", "unflatten_state"]

RUN_FORMAT = "privaudit.run/1"
SPLIT_FORMAT = "privaudit.split/1"
CHECKPOINT_FORMAT = "privaudit.checkpoint/1"
REQUIRED_SEEDS = ("training_seed", "noise_seed", "secure_rng")

_MARKER = "run.json"
_CKPT_NAME = re.compile(r"^ckpt-(\d{6,})-[0-9a-f]{8}$")
_CKPT_TENSORS = "tensors.safetensors"
_CKPT_STATE = "state.json"
_LATEST = "LATEST"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _json_value(value: Any, where: str) -> Any:
    """A JSON-able copy of `value`: numpy/torch scalars and arrays become Python
    numbers and lists, tuples become lists, non-finite floats become None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        x = float(value)
        return x if math.isfinite(x) else None
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return _json_value(value.tolist(), where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"Expected string keys in {where}, got {key!r}.")
            out[key] = _json_value(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_json_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise ValueError(f"Cannot store {where}={value!r} ({type(value).__name__}) as JSON.")


def _toml_value(value: Any, where: str) -> Any:
    """A copy that tomli_w can write: None values dropped from tables, Paths as strings."""
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"Expected string keys in {where}, got {key!r}.")
            if item is not None:
                out[key] = _toml_value(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        if any(item is None for item in value):
            raise ValueError(f"Cannot store None inside the list {where} in TOML.")
        return [_toml_value(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bool, str, int, float, _dt.date, _dt.time)):
        return value
    raise ValueError(f"Cannot store {where}={value!r} ({type(value).__name__}) in TOML.")


def _tensors_for_saving(tensors: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """CPU, contiguous, detached tensors; any that share storage with an earlier
    one are cloned (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[str, int]] = set()
    for key, tensor in tensors.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"Expected non-empty string keys in {where}, got {key!r}.")
        if not isinstance(tensor, torch.Tensor):
            raise ValueError(
                f"Expected {where}[{key!r}] to be a torch.Tensor, got {type(tensor).__name__}."
            )
        if tensor.layout != torch.strided:
            raise ValueError(
                f"Expected {where}[{key!r}] to be a dense tensor, got layout {tensor.layout}."
            )
        t = tensor.detach().to("cpu").contiguous()
        storage = (t.device.type, t.untyped_storage().data_ptr())
        if storage in seen and t.numel() > 0:
            t = t.clone()
        seen.add((t.device.type, t.untyped_storage().data_ptr()))
        out[key] = t
    return out


def _safetensors_bytes(
    tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None, where: str
) -> bytes:
    from safetensors.torch import save

    if metadata is not None:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ValueError(f"Expected metadata of str to str, got {key!r}: {value!r}.")
    return save(_tensors_for_saving(tensors, where), metadata=dict(metadata) if metadata else None)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"No such file {str(path)!r}.") from None
    except OSError as exc:
        raise ValueError(f"Cannot read {str(path)!r}: {exc.strerror or exc}.") from None
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise ValueError(f"{str(path)!r} is not a valid safetensors file: {exc}.") from None


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ValueError(f"No such file {str(path)!r}.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"Cannot read {str(path)!r}: {exc}.") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{str(path)!r} is not valid JSON: {exc}.") from None


class RunDir:
    """One run's folder. Make one with `RunDir.create`, reopen it with `RunDir.open`."""

    def __init__(self, path: Path) -> None:
        # Use create() or open(); this does no checking.
        self._path = path

    # -- opening --------------------------------------------------------------------
    @classmethod
    def create(cls, out: str | os.PathLike[str], name: str, *, exist_ok: bool = False) -> RunDir:
        """Creates `out/name/` and its `run.json` marker.

        Raises:
            ValueError: `name` is not a plain folder name; the folder exists and
                `exist_ok` is False; or it exists, is not a run directory and is
                not empty.
        """
        if (
            not isinstance(name, str)
            or not name.strip()
            or name in (".", "..")
            or "/" in name
            or "\\" in name
            or "\0" in name
        ):
            raise ValueError(f"Expected name to be a plain folder name, got {name!r}.")
        path = Path(out) / name
        if path.exists():
            if not exist_ok:
                raise ValueError(
                    f"Run directory {str(path)!r} already exists (pass exist_ok=True)."
                )
            if not path.is_dir():
                raise ValueError(f"{str(path)!r} exists and is not a folder.")
            if (path / _MARKER).is_file():
                return cls.open(path)
            if any(path.iterdir()):
                raise ValueError(
                    f"{str(path)!r} exists, is not empty and is not a run directory (no {_MARKER})."
                )
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            message = exc.strerror or exc
            raise ValueError(f"Cannot create run directory {str(path)!r}: {message}.") from None
        created = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        marker = {"format": RUN_FORMAT, "name": name, "created": created}
        _io.atomic_write_json(path / _MARKER, marker)
        return cls(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> RunDir:
        """Opens an existing run directory (one with a `run.json` marker)."""
        p = Path(path)
        if not p.is_dir():
            raise ValueError(f"{str(p)!r} is not a run directory: no such folder.")
        marker = p / _MARKER
        if not marker.is_file():
            raise ValueError(f"{str(p)!r} is not a run directory: it has no {_MARKER}.")
        data = _read_json(marker)
        if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
            raise ValueError(f"{str(marker)!r} is not a privaudit run marker ({RUN_FORMAT}).")
        return cls(p)

    def __repr__(self) -> str:
        return f"RunDir({str(self._path)!r})"

    # -- standard paths -------------------------------------------------------------
    @property
    def path(self) -> Path:
        return self._path

    @property
    def name(self) -> str:
        return self._path.name

    @property
    def config_path(self) -> Path:
        return self._path / "config.toml"

    @property
    def model_path(self) -> Path:
        return self._path / "model.safetensors"

    @property
    def ledger_path(self) -> Path:
        return self._path / "ledger.json"

    @property
    def split_path(self) -> Path:
        return self._path / "split.json"

    @property
    def metrics_path(self) -> Path:
        return self._path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self._path / "summary.json"

    @property
    def checkpoint_dir(self) -> Path:
        return self._path / "checkpoint"

    # -- config ---------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        """Writes `config.toml`; None values are left out (TOML has no null)."""
        import tomli_w

        if not isinstance(config, Mapping):
            raise ValueError(f"Expected config to be a mapping, got {type(config).__name__}.")
        _io.atomic_write_text(self.config_path, tomli_w.dumps(_toml_value(config, "config")))

    def read_config(self) -> dict[str, Any]:
        try:
            text = self.config_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"No such file {str(self.config_path)!r}.") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"Cannot read {str(self.config_path)!r}: {exc}.") from None
        try:
            return tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{str(self.config_path)!r} is not valid TOML: {exc}.") from None

    # -- weights --------------------------------------------------------------------
    def save_weights(
        self, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
    ) -> None:
        """Writes `model.safetensors` (tensors moved to CPU, made contiguous, shared
        storage cloned); `metadata` is stored in the file's header."""
        payload = _safetensors_bytes(state_dict, metadata, "state_dict")
        _io.atomic_write_bytes(self.model_path, payload)

    def load_weights(self) -> dict[str, torch.Tensor]:
        """The tensors of `model.safetensors`, on CPU."""
        return _read_safetensors(self.model_path)

    def load_weights_metadata(self) -> dict[str, str]:
        """The metadata stored by `save_weights` (empty if none)."""
        from safetensors import safe_open

        if not self.model_path.is_file():
            raise ValueError(f"No such file {str(self.model_path)!r}.")
        try:
            with safe_open(str(self.model_path), framework="pt") as fh:
                return dict(fh.metadata() or {})
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise ValueError(
                f"{str(self.model_path)!r} is not a valid safetensors file: {exc}."
            ) from None

    # -- ledger ---------------------------------------------------------------------
    def write_ledger(self, ledger: PrivacyLedger) -> None:
        ledger.save(self.ledger_path)

    def read_ledger(self) -> PrivacyLedger:
        return PrivacyLedger.load(self.ledger_path)

    # -- split ----------------------------------------------------------------------
    def write_split(
        self, dataset_split_record: Mapping[str, Any], seeds: Mapping[str, Any]
    ) -> None:
        """Writes `split.json`: members (train indices), non-members (test indices), seeds.

        Args:
            dataset_split_record: `Dataset.split_record()`.
            seeds: at least `training_seed` and `noise_seed` (int, or None
                when withheld, as under `secure_rng`) and `secure_rng` (bool);
                `split_seed` is taken from the record when absent. Other
                JSON-able entries (`sampler_seed`, `RngRecord.to_dict()`'s
                `generator`, ...) are kept as they are.
        """
        record = dict(dataset_split_record)
        try:
            members = [int(i) for i in record.pop("train_indices")]
            non_members = [int(i) for i in record.pop("test_indices")]
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                "Expected dataset_split_record with integer lists 'train_indices' and "
                "'test_indices' (Dataset.split_record())."
            ) from None
        if len(set(members) | set(non_members)) != len(members) + len(non_members):
            raise ValueError(
                "Expected dataset_split_record's train and test indices to be disjoint."
            )
        seeds = dict(seeds)
        seeds.setdefault("split_seed", record.get("split_seed"))
        missing = [k for k in REQUIRED_SEEDS if k not in seeds]
        if missing:
            raise ValueError(
                f"Expected seeds to include {list(REQUIRED_SEEDS)}; missing {missing}."
            )
        if not isinstance(seeds["secure_rng"], bool):
            raise ValueError(
                f"Expected seeds['secure_rng'] to be True or False, got {seeds['secure_rng']!r}."
            )
        for key in ("split_seed", "training_seed", "noise_seed"):
            value = seeds[key]
            is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if value is not None and not is_int:
                raise ValueError(
                    f"Expected seeds[{key!r}] to be an integer or None, got {value!r}."
                )
        _io.atomic_write_json(
            self.split_path,
            {
                "format": SPLIT_FORMAT,
                "dataset": _json_value(record, "dataset_split_record"),
                "seeds": _json_value(seeds, "seeds"),
                "members": members,
                "non_members": non_members,
            },
        )

    def read_split(self) -> dict[str, Any]:
        """`split.json` as a dict with keys format, dataset, seeds, members, non_members."""
        data = _read_json(self.split_path)
        if not isinstance(data, dict) or data.get("format") != SPLIT_FORMAT:
            raise ValueError(f"{str(self.split_path)!r} is not a privaudit split ({SPLIT_FORMAT}).")
        return data

    # -- metrics --------------------------------------------------------------------
    def append_metrics(self, record: Mapping[str, Any]) -> None:
        """Appends one JSON line to `metrics.jsonl` and fsyncs it.

        A partial last line left by a crash is cut off first, so it never fuses
        with the new record. Non-finite floats are stored as null.
        """
        if not isinstance(record, Mapping):
            raise ValueError(f"Expected record to be a mapping, got {type(record).__name__}.")
        line = json.dumps(_json_value(record, "record"), allow_nan=False) + "\n"
        path = self.metrics_path
        created = not path.exists()
        with open(path, "a+b") as fh:
            _truncate_partial_line(fh)
            fh.write(line.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        if created:
            _fsync_dir(self._path)

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of `metrics.jsonl` (none if it does not exist yet). An
        unfinished last line (a crash mid-append) is skipped; a bad line elsewhere
        raises ValueError naming the file and line."""
        try:
            text = self.metrics_path.read_bytes().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return []
        except OSError as exc:
            message = exc.strerror or exc
            raise ValueError(f"Cannot read {str(self.metrics_path)!r}: {message}.") from None
        lines = text.split("\n")
        tail = lines.pop()  # "" when the file ends with a newline
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(
                    f"{str(self.metrics_path)!r} line {number} is not JSON: {exc}."
                ) from None
        if tail.strip():
            try:
                records.append(json.loads(tail))
            except json.JSONDecodeError:
                pass  # the unfinished line of an interrupted append
        return records

    # -- summary --------------------------------------------------------------------
    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Writes `summary.json` (non-finite floats stored as null)."""
        if not isinstance(summary, Mapping):
            raise ValueError(f"Expected summary to be a mapping, got {type(summary).__name__}.")
        _io.atomic_write_json(self.summary_path, _json_value(summary, "summary"))

    def read_summary(self) -> dict[str, Any]:
        data = _read_json(self.summary_path)
        if not isinstance(data, dict):
            raise ValueError(f"{str(self.summary_path)!r} does not hold a JSON object.")
        return data

    # -- checkpoints ----------------------------------------------------------------
    def save_checkpoint(
        self, *, tensors: Mapping[str, torch.Tensor], state: Mapping[str, Any]
    ) -> None:
        """Writes a complete checkpoint, then makes it the latest, then prunes older ones.

        Args:
            tensors: named tensors (model weights, optimizer tensors from
                `flatten_state`, RNG state tensors, ...).
            state: JSON-able state (step, epoch, ledger dict, `flatten_state`
                skeletons, ...). Floats round-trip exactly, NaN and infinities
                included; tuples come back as lists.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"Expected state to be a mapping, got {type(state).__name__}.")
        try:
            state_text = json.dumps(
                {"format": CHECKPOINT_FORMAT, "state": state}, allow_nan=True, indent=1
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Expected state to be JSON-serialisable: {exc}.") from None
        payload = _safetensors_bytes(tensors, None, "tensors")
        folder = self.checkpoint_dir
        folder.mkdir(exist_ok=True)
        latest = self._latest_name()
        match = _CKPT_NAME.match(latest) if latest else None
        number = int(match.group(1)) + 1 if match else 1
        name = f"ckpt-{number:06d}-{secrets.token_hex(4)}"
        staging = folder / f".tmp-{name}"
        try:
            staging.mkdir()
            files = ((_CKPT_TENSORS, payload), (_CKPT_STATE, state_text.encode("utf-8")))
            for filename, data in files:
                with open(staging / filename, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
            _fsync_dir(staging)
            os.replace(staging, folder / name)
            _fsync_dir(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _io.atomic_write_text(folder / _LATEST, name + "\n")  # the commit point
        for entry in folder.iterdir():
            if entry.name not in (name, _LATEST) and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            elif entry.name.startswith(f".{_LATEST}.") and entry.name.endswith(".tmp"):
                entry.unlink(missing_ok=True)

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(tensors, state) of the latest complete checkpoint, or None if there is none."""
        name = self._latest_name()
        if name is None:
            return None
        folder = self.checkpoint_dir / name
        if not folder.is_dir():
            raise ValueError(
                f"{str(self.checkpoint_dir / _LATEST)!r} names {name!r}, which does not exist."
            )
        tensors = _read_safetensors(folder / _CKPT_TENSORS)
        data = _read_json(folder / _CKPT_STATE)
        if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{str(folder / _CKPT_STATE)!r} is not a privaudit checkpoint state.")
        return tensors, data["state"]

    def _latest_name(self) -> str | None:
        pointer = self.checkpoint_dir / _LATEST
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"Cannot read {str(pointer)!r}: {exc}.") from None
        if not _CKPT_NAME.match(name):
            raise ValueError(f"{str(pointer)!r} does not name a checkpoint folder: {name!r}.")
        return name


def _truncate_partial_line(fh: Any) -> None:
    """Cuts an open binary file back to just after its last newline (if it does
    not already end with one)."""
    size = fh.seek(0, os.SEEK_END)
    if size == 0:
        return
    fh.seek(size - 1)
    if fh.read(1) == b"\n":
        return
    position = size
    keep = 0
    while position > 0:
        start = max(0, position - 65536)
        fh.seek(start)
        chunk = fh.read(position - start)
        cut = chunk.rfind(b"\n")
        if cut >= 0:
            keep = start + cut + 1
            break
        position = start
    fh.truncate(keep)
    fh.seek(keep)


# ---------------------------------------------------------------------------- state trees

_TENSOR, _TUPLE, _ITEMS, _NDARRAY = "__tensor__", "__tuple__", "__items__", "__ndarray__"
_TAGS = frozenset({_TENSOR, _TUPLE, _ITEMS, _NDARRAY})


def flatten_state(state: Any, *, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Splits a nested state (say `optimizer.state_dict()`) into tensors and a JSON skeleton.

    Tensors go into the returned dict under names `prefix + path` (`"opt/state/0/exp_avg"`)
    and are replaced in the skeleton by `{"__tensor__": name}`. Tuples, dicts with
    non-string keys (the optimizer's integer parameter ids) and small numpy arrays
    are tagged so that `unflatten_state` rebuilds them exactly.

    >>> import torch
    >>> tensors, skeleton = flatten_state({"step": 3, "m": torch.zeros(2), "betas": (0.9, 0.99)})
    >>> sorted(tensors), skeleton["m"], skeleton["betas"]
    (['m'], {'__tensor__': 'm'}, {'__tuple__': [0.9, 0.99]})
    >>> unflatten_state(skeleton, tensors)["betas"]
    (0.9, 0.99)
    """
    tensors: dict[str, torch.Tensor] = {}

    def encode(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            name = prefix + path
            while name in tensors or not name:
                name += "#"
            tensors[name] = value
            return {_TENSOR: name}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                raise ValueError(f"Cannot store the object array at {path or '<root>'!r}.")
            array = np.ascontiguousarray(value)
            return {_NDARRAY: {"dtype": array.dtype.str, "shape": list(array.shape),
                               "base64": base64.b64encode(array.tobytes()).decode("ascii")}}
        join = (lambda k: f"{path}/{k}") if path else str
        if isinstance(value, Mapping):
            if all(isinstance(k, str) and k not in _TAGS for k in value):
                return {k: encode(v, join(k)) for k, v in value.items()}
            return {_ITEMS: [[encode(k, join(f"key{i}")), encode(v, join(k))]
                             for i, (k, v) in enumerate(value.items())]}
        if isinstance(value, tuple):
            return {_TUPLE: [encode(v, join(i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [encode(v, join(i)) for i, v in enumerate(value)]
        raise ValueError(
            f"Cannot store {type(value).__name__} at {path or '<root>'!r}: expected tensors, "
            "numbers, strings, None, numpy arrays, lists, tuples or dicts."
        )

    return tensors, encode(state, "")


def unflatten_state(skeleton: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`: rebuilds the nested state from its skeleton and tensors."""

    def decode(value: Any) -> Any:
        if isinstance(value, list):
            return [decode(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            (tag, inner), = value.items()
            if tag == _TENSOR:
                if inner not in tensors:
                    raise ValueError(f"The state names tensor {inner!r}, which is missing.")
                return tensors[inner]
            if tag == _TUPLE:
                return tuple(decode(v) for v in inner)
            if tag == _ITEMS:
                return {decode(k): decode(v) for k, v in inner}
            if tag == _NDARRAY:
                raw = base64.b64decode(inner["base64"])
                array = np.frombuffer(raw, dtype=np.dtype(inner["dtype"]))
                return array.reshape(inner["shape"]).copy()
        return {k: decode(v) for k, v in value.items()}

    return decode(skeleton)
