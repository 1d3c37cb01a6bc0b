"""Datasets: the reference digits split, leak-free preprocessing, recorded splits, local-only CIFAR."""

from __future__ import annotations

import dataclasses
import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privaudit.training._data import Dataset, load_dataset

SMALL = {"synthetic_samples": 300, "synthetic_features": 12, "synthetic_classes": 3}


def _check_split_invariants(ds: Dataset) -> None:
    everything = np.concatenate([ds.train_indices, ds.test_indices, ds.dropped_indices])
    assert np.array_equal(np.sort(everything), np.arange(ds.num_examples))
    assert ds.x_train.shape == (ds.n_train, *ds.input_shape)
    assert ds.x_test.shape == (ds.n_test, *ds.input_shape)
    assert ds.y_train.dtype == ds.y_test.dtype == np.int64
    assert ds.train_indices.dtype == ds.test_indices.dtype == np.int64
    assert set(np.unique(np.concatenate([ds.y_train, ds.y_test]))) <= set(range(ds.num_classes))
    json.dumps(ds.describe(), allow_nan=False)
    record = ds.split_record()
    json.dumps(record, allow_nan=False)
    assert record["train_indices"] == ds.train_indices.tolist()
    assert record["test_indices"] == ds.test_indices.tolist()


# ---------------------------------------------------------------------------- builtin sets


def test_digits_matches_the_reference_split():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    # Prepare: the split REFERENCES.md describes.
    bunch = load_digits()
    x_ref_train, x_ref_test, y_ref_train, y_ref_test = train_test_split(
        bunch.data / 16, bunch.target, test_size=0.2, stratify=bunch.target, random_state=0
    )
    # Execute
    ds = load_dataset("digits")
    # Assert: same rows in the same order, and indices that point back at them.
    assert (ds.n_train, ds.n_test) == (1437, 360)
    assert ds.x_train.dtype == np.float32 and ds.input_shape == (64,) and ds.kind == "tabular"
    np.testing.assert_array_equal(ds.x_train, x_ref_train.astype(np.float32))
    np.testing.assert_array_equal(ds.x_test, x_ref_test.astype(np.float32))
    np.testing.assert_array_equal(ds.y_train, y_ref_train)
    np.testing.assert_array_equal(ds.y_test, y_ref_test)
    np.testing.assert_array_equal(ds.x_train, (bunch.data[ds.train_indices] / 16).astype(np.float32))
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    assert (ds.split_seed, ds.test_fraction, ds.num_classes) == (0, 0.2, 10)
    _check_split_invariants(ds)


def test_digits_as_images_holds_the_same_pixels():
    flat = load_dataset("digits")
    images = load_dataset("digits", image_shape=True)
    assert images.kind == "image" and images.input_shape == (1, 8, 8)
    np.testing.assert_array_equal(images.x_train.reshape(-1, 64), flat.x_train)
    np.testing.assert_array_equal(images.train_indices, flat.train_indices)


@pytest.mark.parametrize(
    "spec", ["digits", "breast-cancer", "synthetic", "synthetic-tokens"]
)
def test_split_is_deterministic_stratified_and_seed_dependent(spec):
    kwargs = SMALL if spec.startswith("synthetic") else {}
    a = load_dataset(spec, seed=5, **kwargs)
    b = load_dataset(spec, seed=5, **kwargs)
    c = load_dataset(spec, seed=6, **kwargs)
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(np.sort(a.train_indices), np.sort(c.train_indices))
    _check_split_invariants(a)
    # Stratified: each class is split in the same proportion, up to rounding.
    for label in range(a.num_classes):
        n_in_test = int((a.y_test == label).sum())
        n_total = n_in_test + int((a.y_train == label).sum())
        assert abs(n_in_test - 0.2 * n_total) <= 1.0


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), test_fraction=st.floats(0.1, 0.9))
def test_any_seed_and_fraction_give_a_disjoint_covering_split(seed, test_fraction):
    ds = load_dataset("breast-cancer", seed=seed, test_fraction=test_fraction)
    _check_split_invariants(ds)
    assert abs(ds.n_test - test_fraction * ds.num_examples) <= 2


def test_breast_cancer_is_standardised_with_train_statistics_only():
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer().data
    ds = load_dataset("breast-cancer", seed=3)
    train_raw = raw[ds.train_indices]
    mean, std = train_raw.mean(axis=0), train_raw.std(axis=0)
    np.testing.assert_allclose(ds.x_test, (raw[ds.test_indices] - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=0), 1.0, atol=1e-4)
    # The test part was not used: its own mean is not exactly zero.
    assert np.abs(ds.x_test.mean(axis=0)).max() > 1e-3
    assert ds.label_names == ("malignant", "benign")


def test_synthetic_sizes_and_fixed_population():
    a = load_dataset("synthetic", synthetic_samples=1000, synthetic_features=7,
                     synthetic_classes=4, seed=1)
    b = load_dataset("synthetic", synthetic_samples=1000, synthetic_features=7,
                     synthetic_classes=4, seed=2)
    assert a.num_examples == 1000 and a.input_shape == (7,) and a.num_classes == 4
    assert set(np.unique(a.y_train)) == {0, 1, 2, 3}
    # Different split seeds split one population: labels agree on every original index.
    labels_a = np.empty(1000, np.int64)
    labels_a[a.train_indices], labels_a[a.test_indices] = a.y_train, a.y_test
    labels_b = np.empty(1000, np.int64)
    labels_b[b.train_indices], labels_b[b.test_indices] = b.y_train, b.y_test
    np.testing.assert_array_equal(labels_a, labels_b)
    other = load_dataset("synthetic", synthetic_samples=1000, synthetic_features=7,
                         synthetic_classes=4, seed=1, synthetic_seed=9)
    assert not np.array_equal(other.y_train, a.y_train)


def test_synthetic_tokens_labels_follow_marker_counts():
    ds = load_dataset("synthetic-tokens", synthetic_samples=2000, synthetic_features=24,
                      synthetic_classes=3, vocab_size=10)
    assert ds.kind == "tokens" and ds.vocab_size == 10 and ds.input_shape == (24,)
    x = np.concatenate([ds.x_train, ds.x_test])
    y = np.concatenate([ds.y_train, ds.y_test])
    assert x.dtype == np.int64 and x.min() >= 0 and x.max() < 10
    counts = np.stack([(x == k).sum(axis=1) for k in range(3)], axis=1)
    np.testing.assert_array_equal(counts.argmax(axis=1), y)
    top_two = np.sort(counts, axis=1)[:, -2:]
    assert np.all(top_two[:, 1] > top_two[:, 0])  # a unique maximum
    assert np.bincount(y).min() > 500  # classes roughly balanced


@pytest.mark.parametrize(
    ("kwargs", "names"),
    [
        ({"spec": "mnist"}, ["spec", "digits", "cifar10", ".csv"]),
        ({"spec": "digits", "test_fraction": 0.0}, ["test_fraction", "(0, 1)"]),
        ({"spec": "digits", "test_fraction": 1.0}, ["test_fraction"]),
        ({"spec": "digits", "seed": -1}, ["seed"]),
        ({"spec": "digits", "seed": 1.5}, ["seed"]),
        ({"spec": "digits", "target": "y"}, ["target"]),
        ({"spec": "digits", "owner_column": "u"}, ["owner_column"]),
        ({"spec": "breast-cancer", "image_shape": True}, ["image_shape"]),
        ({"spec": "synthetic", "synthetic_samples": 0}, ["synthetic_samples"]),
        ({"spec": "synthetic", "synthetic_classes": 1}, ["synthetic_classes"]),
        ({"spec": "synthetic", "synthetic_features": 2, "synthetic_classes": 5}, ["synthetic_features"]),
        ({"spec": "synthetic-tokens", "vocab_size": 2}, ["vocab_size"]),
        ({"spec": "synthetic-tokens", "synthetic_features": 4}, ["synthetic_features"]),
        ({"spec": "synthetic", "synthetic_samples": 4, "synthetic_classes": 3}, ["test_fraction"]),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, names):
    spec = kwargs.pop("spec")
    with pytest.raises(ValueError) as info:
        load_dataset(spec, **kwargs)
    for name in names:
        assert name in str(info.value)


def test_dataset_refuses_overlapping_indices():
    ds = load_dataset("breast-cancer")
    bad_test = ds.test_indices.copy()
    bad_test[0] = ds.train_indices[0]
    with pytest.raises(ValueError, match="disjoint"):
        dataclasses.replace(ds, test_indices=bad_test)


# ---------------------------------------------------------------------------- CSV / Parquet

CSV_TEXT = """age,colour,score,owner,label
30,red,1.5,alice,yes
41,blue,2.5,bob,no
,red,0.5,carol,yes
52,green,3.5,alice,no
25,red,NA,dave,yes
33,blue,2.0,bob,no
47,red,1.0,carol,yes
39,green,2.2,alice,no
28,blue,1.1,bob,yes
60,red,3.0,dave,no
35,green,1.7,carol,yes
44,blue,2.9,alice,no
"""


def test_csv_encodes_features_labels_and_owners(tmp_path):
    path = tmp_path / "people.csv"
    path.write_text(CSV_TEXT)
    ds = load_dataset(str(path), target="label", owner_column="owner", test_fraction=0.3, seed=1)
    assert ds.name == "people" and ds.num_examples == 12
    np.testing.assert_array_equal(ds.dropped_indices, [2, 4])  # rows with missing values
    assert ds.describe()["dropped_rows"] == 2
    assert ds.label_names == ("no", "yes")
    labels = np.array(["yes", "no", "yes", "no", "yes", "no", "yes", "no", "yes", "no", "yes", "no"])
    np.testing.assert_array_equal(np.array(ds.label_names)[ds.y_train], labels[ds.train_indices])
    np.testing.assert_array_equal(np.array(ds.label_names)[ds.y_test], labels[ds.test_indices])
    owners = np.array(["alice", "bob", "carol", "alice", "dave", "bob", "carol", "alice", "bob",
                       "dave", "carol", "alice"])
    np.testing.assert_array_equal(ds.owner_train, owners[ds.train_indices])
    np.testing.assert_array_equal(ds.owner_test, owners[ds.test_indices])
    assert "owner" not in " ".join(ds.feature_names) and ds.split_record()["owner_column"] == "owner"
    # Features: age and score standardised with train statistics, colour one-hot.
    assert ds.feature_names == ("age", "colour=blue", "colour=green", "colour=red", "score")
    ages = np.array([30, 41, 0, 52, 25, 33, 47, 39, 28, 60, 35, 44], float)
    train_ages = ages[ds.train_indices]
    np.testing.assert_allclose(
        ds.x_test[:, 0], (ages[ds.test_indices] - train_ages.mean()) / train_ages.std(), rtol=1e-5
    )
    colour_cols = [i for i, n in enumerate(ds.feature_names) if n.startswith("colour=")]
    assert ds.x_train[:, colour_cols].sum(axis=1).tolist() == [1.0] * ds.n_train
    assert ds.x_train.dtype == np.float32
    _check_split_invariants(ds)


def test_csv_categories_come_from_the_train_part_only(tmp_path):
    rows = ["f,g,y"] + [f"{i},a,{i % 2}" for i in range(20)] + ["99,only_once,1", "98,b,0"]
    path = tmp_path / "t.csv"
    path.write_text("\n".join(rows) + "\n")
    for seed in range(30):
        ds = load_dataset(str(path), target="y", seed=seed, test_fraction=0.25)
        if 20 in ds.test_indices:  # the row whose category appears once landed in test
            break
    else:
        pytest.fail("no seed put row 20 in the test part")
    assert "g=only_once" not in ds.feature_names
    g_cols = [i for i, n in enumerate(ds.feature_names) if n.startswith("g=")]
    row = int(np.flatnonzero(ds.test_indices == 20)[0])
    assert ds.x_test[row, g_cols].sum() == 0.0  # an unseen category encodes as all zeros
    assert ds.label_names == ("0", "1")


@pytest.mark.parametrize(
    ("text", "kwargs", "names"),
    [
        ("a,b\n1,2\n", {}, ["target", "'a'", "'b'"]),
        ("a,b\n1,2\n", {"target": "c"}, ["target", "'c'"]),
        ("a,b\n1,2\n", {"target": "b", "owner_column": "z"}, ["owner_column"]),
        ("a,b\n1,2\n3\n", {"target": "b"}, ["line 3"]),
        ("a,b\n1,0.5\n2,1.5\n", {"target": "b"}, ["target", "integers"]),
        ("a,b\n1,1\n2,1\n", {"target": "b"}, ["target", "2 distinct"]),
        ("", {"target": "b"}, ["empty"]),
        ("b\n1\n0\n", {"target": "b"}, ["no feature columns"]),
    ],
)
def test_bad_csv_errors_name_the_problem_and_the_path(tmp_path, text, kwargs, names):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        load_dataset(str(path), **kwargs)
    for name in names:
        assert name in str(info.value)


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.csv"
    with pytest.raises(ValueError, match="nope.csv"):
        load_dataset(str(path), target="y")


def test_parquet_without_pyarrow_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    with pytest.raises(ValueError, match=r"pip install privaudit\[parquet\]"):
        load_dataset(str(path), target="y")


def test_parquet_matches_the_same_table_as_csv(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    csv_path = tmp_path / "people.csv"
    csv_path.write_text(CSV_TEXT)
    table = pa.table({
        "age": [30, 41, None, 52, 25, 33, 47, 39, 28, 60, 35, 44],
        "colour": ["red", "blue", "red", "green", "red", "blue", "red", "green", "blue", "red",
                   "green", "blue"],
        "score": [1.5, 2.5, 0.5, 3.5, None, 2.0, 1.0, 2.2, 1.1, 3.0, 1.7, 2.9],
        "owner": ["alice", "bob", "carol", "alice", "dave", "bob", "carol", "alice", "bob",
                  "dave", "carol", "alice"],
        "label": ["yes", "no", "yes", "no", "yes", "no", "yes", "no", "yes", "no", "yes", "no"],
    })
    parquet_path = tmp_path / "people.parquet"
    pq.write_table(table, parquet_path)
    a = load_dataset(str(csv_path), target="label", owner_column="owner", test_fraction=0.3)
    b = load_dataset(str(parquet_path), target="label", owner_column="owner", test_fraction=0.3)
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    np.testing.assert_array_equal(a.dropped_indices, b.dropped_indices)
    np.testing.assert_allclose(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    np.testing.assert_array_equal(a.owner_test, b.owner_test)
    assert a.feature_names == b.feature_names and a.label_names == b.label_names


# ---------------------------------------------------------------------------- CIFAR-10


def _fake_cifar(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8), rng.integers(0, 10, size=n)


def _fake_cifar_folders(root, *, protocol: int = 2):
    """The same tiny CIFAR-10 (5 train batches of 3 images, 4 test images) in both formats."""
    rng = np.random.default_rng(0)
    batches = {f"data_batch_{i}": _fake_cifar(rng, 3) for i in range(1, 6)}
    batches["test_batch"] = _fake_cifar(rng, 4)
    binary, python = root / "cifar-10-batches-bin", root / "cifar-10-batches-py"
    binary.mkdir()
    python.mkdir()
    for name, (data, labels) in batches.items():
        records = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (binary / f"{name}.bin").write_bytes(records.tobytes())
        blob = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
                b"filenames": [b"x.png"] * len(labels)}
        (python / name).write_bytes(pickle.dumps(blob, protocol=protocol))
    return batches, binary, python


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_reads_both_formats_identically(tmp_path, protocol):
    batches, binary, python = _fake_cifar_folders(tmp_path, protocol=protocol)
    a = load_dataset(f"cifar10:{binary}")
    b = load_dataset(f"cifar10:{python}", seed=7, test_fraction=0.5)  # both ignored
    for ds in (a, b):
        assert ds.kind == "image" and ds.input_shape == (3, 32, 32) and ds.num_classes == 10
        assert ds.split_method == "official" and ds.split_seed is None
        np.testing.assert_array_equal(ds.train_indices, np.arange(15))
        np.testing.assert_array_equal(ds.test_indices, np.arange(15, 19))
        assert "ignored" in ds.preprocessing
        _check_split_invariants(ds)
    train_pixels = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    np.testing.assert_array_equal(a.x_train, (train_pixels / 255).astype(np.float32).reshape(-1, 3, 32, 32))
    np.testing.assert_array_equal(a.y_test, batches["test_batch"][1])
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_train, b.y_train)


def test_cifar10_python_batches_with_legacy_numpy_names(tmp_path):
    # Pickles made by numpy 1.x (like the real CIFAR files) name numpy.core.multiarray.
    _, _, python = _fake_cifar_folders(tmp_path, protocol=2)
    for path in python.iterdir():
        blob = path.read_bytes()
        assert b"numpy._core.multiarray\n" in blob
        path.write_bytes(blob.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    ds = load_dataset(f"cifar10:{tmp_path}")  # parent folder: -bin preferred
    legacy = load_dataset(f"cifar10:{python}")
    np.testing.assert_array_equal(ds.x_test, legacy.x_test)


class _Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar10_pickles_cannot_run_code(tmp_path, monkeypatch):
    _, _, python = _fake_cifar_folders(tmp_path)
    (python / "data_batch_3").write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="data_batch_3"):
        load_dataset(f"cifar10:{python}")
    assert not (tmp_path / "pwned").exists()


def test_cifar10_default_folder_comes_from_privaudit_data(tmp_path, monkeypatch):
    _fake_cifar_folders(tmp_path)
    monkeypatch.setenv("PRIVAUDIT_DATA", str(tmp_path))
    assert load_dataset("cifar10").source == str((tmp_path / "cifar-10-batches-bin").resolve())


def test_cifar10_missing_says_where_it_looked_and_never_downloads(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVAUDIT_DATA", str(tmp_path))
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10")
    message = str(info.value)
    assert "cifar-10-batches-bin" in message and str(tmp_path) in message
    assert "never downloads" in message
    monkeypatch.delenv("PRIVAUDIT_DATA")
    with pytest.raises(ValueError, match="PRIVAUDIT_DATA"):
        load_dataset("cifar10")


def test_cifar10_incomplete_or_corrupt_batches_are_named(tmp_path):
    _, binary, _ = _fake_cifar_folders(tmp_path)
    (binary / "data_batch_4.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="data_batch_4.bin"):
        load_dataset(f"cifar10:{binary}")
    (binary / "test_batch.bin").unlink()
    with pytest.raises(ValueError, match="test_batch"):
        load_dataset(f"cifar10:{binary}")
