"""The run directory: exact round trips, atomic writes, crash-safe checkpoints, no pickle."""

from __future__ import annotations

import json
import pickle
import random
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

import privaudit._io as io_mod
from privaudit.accounting import GaussianEvent, PoissonSampledEvent, PrivacyLedger
from privaudit.training import _rundir
from privaudit.training._data import load_dataset
from privaudit.training._rundir import RunDir, flatten_state, unflatten_state

SEEDS = {"training_seed": 1, "noise_seed": None, "secure_rng": True, "sampler_seed": 4,
         "generator": "torch.Generator(cpu, mt19937)"}


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.rglob("*") if ".tmp" in p.name)


def _bits(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


# ---------------------------------------------------------------------------- opening


def test_create_and_open(tmp_path):
    run = RunDir.create(tmp_path / "runs", "first")
    assert run.path == tmp_path / "runs" / "first" and run.name == "first"
    assert {p.name for p in (run.config_path, run.model_path, run.ledger_path, run.split_path,
                             run.metrics_path, run.summary_path, run.checkpoint_dir)} == {
        "config.toml", "model.safetensors", "ledger.json", "split.json", "metrics.jsonl",
        "summary.json", "checkpoint"}
    assert RunDir.open(run.path).path == run.path
    with pytest.raises(ValueError, match="already exists"):
        RunDir.create(tmp_path / "runs", "first")
    assert RunDir.create(tmp_path / "runs", "first", exist_ok=True).path == run.path


@pytest.mark.parametrize("name", ["", "..", "a/b", ".", 3])
def test_create_refuses_names_that_are_not_plain_folders(tmp_path, name):
    with pytest.raises(ValueError, match="name"):
        RunDir.create(tmp_path, name)


def test_open_names_the_path_when_it_is_not_a_run_directory(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hi")
    for path in (tmp_path / "plain", tmp_path / "absent"):
        with pytest.raises(ValueError, match=str(path)):
            RunDir.open(path)
    with pytest.raises(ValueError, match="not empty"):
        RunDir.create(tmp_path, "plain", exist_ok=True)


def test_missing_artefacts_are_named_when_read(tmp_path):
    run = RunDir.open(RunDir.create(tmp_path, "r").path)
    with pytest.raises(ValueError, match="split.json"):
        run.read_split()
    for read, name in ((run.read_config, "config.toml"), (run.load_weights, "model.safetensors"),
                       (run.read_summary, "summary.json"), (run.read_ledger, "ledger.json"),
                       (run.load_weights_metadata, "model.safetensors")):
        with pytest.raises(ValueError, match=name):
            read()
    assert run.read_metrics() == [] and run.load_checkpoint() is None


# ---------------------------------------------------------------------------- artefacts


def test_config_round_trips_nested_toml_without_nones(tmp_path):
    run = RunDir.create(tmp_path, "r")
    config = {
        "name": "digits-dp",
        "seed": 0,
        "out": Path("runs"),
        "resume": None,
        "dp": {"noise_multiplier": 1.1, "max_grad_norm": 0.1, "target_epsilon": None,
               "accountant": {"kind": "pld", "discretisation": 1e-4}},
        "model": {"hidden": [256, 128], "dropout": 0.0, "tags": ("a", "b")},
        "flags": [True, False],
    }
    run.write_config(config)
    assert run.read_config() == {
        "name": "digits-dp", "seed": 0, "out": "runs",
        "dp": {"noise_multiplier": 1.1, "max_grad_norm": 0.1,
               "accountant": {"kind": "pld", "discretisation": 1e-4}},
        "model": {"hidden": [256, 128], "dropout": 0.0, "tags": ["a", "b"]},
        "flags": [True, False],
    }
    assert tomllib.loads(run.config_path.read_text())["dp"]["accountant"]["kind"] == "pld"
    with pytest.raises(ValueError, match=r"config\.model\.act"):
        run.write_config({"model": {"act": torch.nn.ReLU()}})
    run.config_path.write_text("x = = 1")
    with pytest.raises(ValueError, match="config.toml"):
        run.read_config()


def test_weights_round_trip_bit_exactly(tmp_path):
    run = RunDir.create(tmp_path, "r")
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 4, generator=g)
    weights = {
        "f32": base,
        "transposed": base.t(),  # not contiguous
        "tied": base,  # shares storage with f32
        "row": base[2],  # a view into the same storage
        "f64": torch.randn(3, generator=g, dtype=torch.float64),
        "f16": torch.randn(5, generator=g).half(),
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "i64": torch.arange(-3, 3),
        "u8": torch.arange(7, dtype=torch.uint8),
        "flag": torch.tensor([True, False]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
        "grad": torch.ones(2, requires_grad=True) * 3,
    }
    run.save_weights(weights, {"arch": "mlp", "epsilon": "1.0"})
    loaded = run.load_weights()
    assert set(loaded) == set(weights)
    for key, tensor in weights.items():
        assert loaded[key].dtype == tensor.dtype and loaded[key].shape == tensor.shape, key
        assert _bits(loaded[key]) == _bits(tensor.detach()), key
    assert run.load_weights_metadata() == {"arch": "mlp", "epsilon": "1.0"}
    with pytest.raises(ValueError, match="metadata"):
        run.save_weights({"a": torch.ones(1)}, {"epsilon": 1.0})
    with pytest.raises(ValueError, match="state_dict"):
        run.save_weights({"a": np.ones(1)})


def test_model_state_dict_loads_back_into_the_model(tmp_path):
    run = RunDir.create(tmp_path, "r")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    run.save_weights(model.state_dict())
    fresh = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 3))
    fresh.load_state_dict(run.load_weights(), strict=True)
    x = torch.randn(5, 8)
    assert torch.equal(fresh(x), model(x))


def test_split_records_members_non_members_and_seeds(tmp_path):
    run = RunDir.create(tmp_path, "r")
    ds = load_dataset("breast-cancer", seed=3)
    run.write_split(ds.split_record(), SEEDS)
    split = run.read_split()
    assert split["members"] == ds.train_indices.tolist()
    assert split["non_members"] == ds.test_indices.tolist()
    assert split["seeds"] == {**SEEDS, "split_seed": 3}
    assert split["dataset"]["dataset"] == "breast-cancer" and split["dataset"]["split_seed"] == 3
    assert "train_indices" not in split["dataset"]
    with pytest.raises(ValueError, match="noise_seed"):
        run.write_split(ds.split_record(), {"training_seed": 1, "secure_rng": False})
    with pytest.raises(ValueError, match="secure_rng"):
        run.write_split(ds.split_record(), {**SEEDS, "secure_rng": 1})
    with pytest.raises(ValueError, match="training_seed"):
        run.write_split(ds.split_record(), {**SEEDS, "training_seed": "7"})
    overlapping = {**ds.split_record(), "test_indices": ds.train_indices[:3].tolist()}
    with pytest.raises(ValueError, match="disjoint"):
        run.write_split(overlapping, SEEDS)
    assert run.read_split() == split  # the failed writes left the file alone


def test_metrics_append_and_read_back(tmp_path):
    run = RunDir.create(tmp_path, "r")
    for step in range(5):
        run.append_metrics({"step": step, "loss": 1.0 / (step + 1), "eps": np.float32(0.5),
                            "acc": torch.tensor(0.25)})
    run.append_metrics({"step": 5, "loss": float("nan")})
    records = run.read_metrics()
    assert [r["step"] for r in records] == list(range(6))
    assert records[2] == {"step": 2, "loss": 1 / 3, "eps": 0.5, "acc": 0.25}
    assert records[5]["loss"] is None  # non-finite floats are stored as null
    assert all(json.loads(line) for line in run.metrics_path.read_text().splitlines())


def test_metrics_tolerate_a_partial_last_line_and_repair_it(tmp_path):
    run = RunDir.create(tmp_path, "r")
    run.append_metrics({"step": 0})
    run.append_metrics({"step": 1})
    with open(run.metrics_path, "ab") as fh:  # a crash in the middle of an append
        fh.write(b'{"step": 2, "lo')
    assert [r["step"] for r in run.read_metrics()] == [0, 1]
    run.append_metrics({"step": 2})
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2]
    assert run.metrics_path.read_text().count("\n") == 3
    # Only a file with nothing but an unfinished line.
    other = RunDir.create(tmp_path, "s")
    other.metrics_path.write_bytes(b'{"st')
    assert other.read_metrics() == []
    other.append_metrics({"step": 0})
    assert other.read_metrics() == [{"step": 0}]


def test_metrics_corruption_before_the_last_line_is_reported(tmp_path):
    run = RunDir.create(tmp_path, "r")
    run.metrics_path.write_text('{"step": 0}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="line 2"):
        run.read_metrics()


def test_summary_and_ledger_round_trip(tmp_path):
    run = RunDir.create(tmp_path, "r")
    summary = {"epsilon": 1.83, "delta": 1e-5, "test_accuracy": np.float64(0.9),
               "per_class": [0.5, 1.0], "nested": {"steps": np.int64(1000)}, "inf": float("inf")}
    run.write_summary(summary)
    assert run.read_summary() == {"epsilon": 1.83, "delta": 1e-5, "test_accuracy": 0.9,
                                  "per_class": [0.5, 1.0], "nested": {"steps": 1000},
                                  "inf": None}
    ledger = PrivacyLedger(metadata={"seed": 0})
    ledger.record(PoissonSampledEvent(0.01, GaussianEvent(1.1)), 300)
    run.write_ledger(ledger)
    assert run.read_ledger() == ledger


# ---------------------------------------------------------------------------- atomicity


def test_failed_writes_keep_every_previous_artefact(tmp_path, monkeypatch):
    # Prepare: a run with every single-file artefact written once.
    run = RunDir.create(tmp_path, "r")
    ds = load_dataset("breast-cancer")
    run.write_config({"a": 1})
    run.save_weights({"w": torch.ones(3)})
    run.write_split(ds.split_record(), SEEDS)
    run.write_summary({"eps": 1.0})
    before = {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()}

    # Execute: every rename fails, as if the process died just before it.
    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    monkeypatch.setattr(io_mod.os, "replace", crash)
    attempts = [
        lambda: run.write_config({"a": 2}),
        lambda: run.save_weights({"w": torch.zeros(3)}),
        lambda: run.write_split(load_dataset("breast-cancer", seed=1).split_record(), SEEDS),
        lambda: run.write_summary({"eps": 2.0}),
    ]
    for attempt in attempts:
        with pytest.raises(OSError, match="simulated crash"):
            attempt()
    monkeypatch.undo()

    # Assert: old contents intact and readable, no temporary files left.
    assert {p.name: p.read_bytes() for p in run.path.iterdir() if p.is_file()} == before
    assert _leftovers(run.path) == []
    assert run.read_config() == {"a": 1} and run.read_summary() == {"eps": 1.0}
    assert torch.equal(run.load_weights()["w"], torch.ones(3))
    assert run.read_split()["members"] == ds.train_indices.tolist()


def _state_tensors(value: float) -> dict[str, torch.Tensor]:
    return {"model/w": torch.full((2, 3), value), "rng": torch.get_rng_state()}


def test_checkpoints_round_trip_and_replace_each_other(tmp_path):
    run = RunDir.create(tmp_path, "r")
    assert run.load_checkpoint() is None
    run.save_checkpoint(tensors=_state_tensors(1.0), state={"step": 10, "lr": 0.1,
                                                            "nan": float("nan")})
    run.save_checkpoint(tensors=_state_tensors(2.0), state={"step": 20, "lr": 1 / 3,
                                                            "ledger": {"entries": []}})
    tensors, state = run.load_checkpoint()
    assert state == {"step": 20, "lr": 1 / 3, "ledger": {"entries": []}}
    assert torch.equal(tensors["model/w"], torch.full((2, 3), 2.0))
    assert torch.equal(tensors["rng"], torch.get_rng_state())
    folders = [p for p in run.checkpoint_dir.iterdir() if p.is_dir()]
    assert len(folders) == 1  # older checkpoints are pruned
    assert (run.checkpoint_dir / "LATEST").read_text().strip() == folders[0].name
    with pytest.raises(ValueError, match="JSON"):
        run.save_checkpoint(tensors={}, state={"opt": object()})


@pytest.mark.parametrize("where", ["tensors", "state", "rename", "pointer"])
def test_a_crash_while_checkpointing_leaves_the_previous_checkpoint(tmp_path, monkeypatch, where):
    run = RunDir.create(tmp_path, "r")
    run.save_checkpoint(tensors=_state_tensors(1.0), state={"step": 1})

    def crash(*args, **kwargs):
        raise OSError("simulated crash")

    if where == "tensors":
        monkeypatch.setattr(_rundir, "_safetensors_bytes", crash)
    elif where == "state":  # the tensors file is written, then the state file fails
        real_fsync, calls = _rundir.os.fsync, []

        def fsync_then_crash(fd):
            calls.append(fd)
            if len(calls) == 2:
                raise OSError("simulated crash")
            return real_fsync(fd)

        monkeypatch.setattr(_rundir.os, "fsync", fsync_then_crash)
    elif where == "rename":
        monkeypatch.setattr(_rundir.os, "replace", crash)
    else:  # the new folder is complete but LATEST was never switched to it
        monkeypatch.setattr(_rundir._io, "atomic_write_text", crash)
    with pytest.raises(OSError, match="simulated crash"):
        run.save_checkpoint(tensors=_state_tensors(2.0), state={"step": 2})
    monkeypatch.undo()

    tensors, state = run.load_checkpoint()
    assert state == {"step": 1} and torch.equal(tensors["model/w"], torch.full((2, 3), 1.0))
    assert not [p for p in run.checkpoint_dir.iterdir() if p.name.startswith(".tmp-")]
    # The next save succeeds and cleans up whatever the crash left.
    run.save_checkpoint(tensors=_state_tensors(3.0), state={"step": 3})
    assert run.load_checkpoint()[1] == {"step": 3}
    assert len([p for p in run.checkpoint_dir.iterdir() if p.is_dir()]) == 1


def test_a_killed_process_leaves_a_staging_folder_that_is_ignored(tmp_path):
    run = RunDir.create(tmp_path, "r")
    run.save_checkpoint(tensors=_state_tensors(1.0), state={"step": 1})
    stale = run.checkpoint_dir / ".tmp-ckpt-000002-deadbeef"
    stale.mkdir()
    (stale / "tensors.safetensors").write_bytes(b"\x00\x01half")
    assert run.load_checkpoint()[1] == {"step": 1}
    run.save_checkpoint(tensors=_state_tensors(2.0), state={"step": 2})
    assert not stale.exists()


# ---------------------------------------------------------------------------- state trees


def _train(model, optimizer, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g)
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


def _assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and _bits(a) == _bits(b)
    elif isinstance(a, np.ndarray):
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert a.tobytes() == b.tobytes()
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for k in a:
            _assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b))


@pytest.mark.parametrize(
    "make_optimizer",
    [
        lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
        lambda p: torch.optim.Adam(p, lr=1e-2, betas=(0.8, 0.99), amsgrad=True),
        lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    ],
    ids=["sgd-momentum", "adam", "adamw"],
)
def test_optimizer_state_round_trips_exactly_through_a_checkpoint(tmp_path, make_optimizer):
    # Prepare: a model and optimizer a few steps into training.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    optimizer = make_optimizer(model.parameters())
    _train(model, optimizer, steps=4, seed=1)

    # Execute: checkpoint, then restore into fresh objects.
    opt_tensors, opt_skeleton = flatten_state(optimizer.state_dict(), prefix="optimizer/")
    model_tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    run = RunDir.create(tmp_path, "r")
    run.save_checkpoint(tensors={**model_tensors, **opt_tensors},
                        state={"step": 4, "optimizer": opt_skeleton})
    tensors, state = run.load_checkpoint()
    torch.manual_seed(123)
    model2 = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model2.load_state_dict({k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")})
    optimizer2 = make_optimizer(model2.parameters())
    optimizer2.load_state_dict(unflatten_state(state["optimizer"], tensors))

    # Assert: identical state, and identical parameters after more training.
    _assert_same(optimizer2.state_dict(), optimizer.state_dict())
    _train(model, optimizer, steps=3, seed=2)
    _train(model2, optimizer2, steps=3, seed=2)
    for p, q in zip(model.parameters(), model2.parameters()):
        assert _bits(p.detach()) == _bits(q.detach())


def test_flatten_state_round_trips_rng_states_and_odd_keys():
    rng = np.random.default_rng(5)
    rng.random(3)
    state = {
        "python": random.getstate(),
        "numpy_legacy": np.random.get_state(),
        "numpy_generator": rng.bit_generator.state,
        "torch": torch.get_rng_state(),
        "mixed_keys": {0: "a", (1, 2): [1.5, None], "__tensor__": True},
        "floats": [float("inf"), -0.0, 1e-310],
    }
    tensors, skeleton = flatten_state(state, prefix="s/")
    text = json.dumps(skeleton)  # the skeleton is plain JSON
    restored = unflatten_state(json.loads(text), tensors)
    _assert_same(restored, state)
    rng2 = np.random.default_rng()
    rng2.bit_generator.state = restored["numpy_generator"]
    assert rng2.random() == rng.random()
    random.setstate(restored["python"])
    np.random.set_state(restored["numpy_legacy"])
    with pytest.raises(ValueError, match="object"):
        flatten_state({"f": object()})


# ---------------------------------------------------------------------------- no pickle


def test_nothing_a_run_writes_is_pickled(tmp_path, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "dump", forbidden)
    monkeypatch.setattr(pickle, "dumps", forbidden)
    monkeypatch.setattr(pickle, "Pickler", forbidden)
    monkeypatch.setattr(torch, "save", forbidden)
    run = RunDir.create(tmp_path, "r")
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(model.parameters())
    _ = model(torch.ones(1, 3)).sum().backward(), optimizer.step()
    run.write_config({"a": {"b": 1}})
    run.save_weights(model.state_dict(), {"k": "v"})
    run.write_split(load_dataset("breast-cancer").split_record(), SEEDS)
    run.append_metrics({"step": 1})
    run.write_summary({"eps": 1.0})
    ledger = PrivacyLedger()
    ledger.record(GaussianEvent(1.0), 1)
    run.write_ledger(ledger)
    opt_tensors, skeleton = flatten_state(optimizer.state_dict())
    run.save_checkpoint(tensors=opt_tensors, state={"opt": skeleton})

    files = [p for p in run.path.rglob("*") if p.is_file()]
    assert len(files) >= 10
    for path in files:
        head = path.read_bytes()[:2]
        assert not head.startswith(b"\x80"), path  # pickle protocol 2+ header
        assert head != b"PK", path  # torch.save's zip container
        if path.suffix == ".safetensors":
            header_len = int.from_bytes(path.read_bytes()[:8], "little")
            json.loads(path.read_bytes()[8 : 8 + header_len])
        elif path.suffix in (".json", ".jsonl") or path.name == "LATEST":
            path.read_text(encoding="utf-8")
