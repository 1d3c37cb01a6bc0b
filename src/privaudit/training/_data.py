"""Datasets for DP training and membership inference, with their splits on record.

Every loader returns a `Dataset` whose `train_indices` (the members) and
`test_indices` (the non-members) index the *original* dataset: row numbers of a
CSV/Parquet file, positions in scikit-learn's bundled arrays, or CIFAR-10's
official order (the five training batches, then the test batch). An audit can
therefore name exactly which records the model saw.

Splits are stratified by label and seeded (`seed`), so the same arguments give
the same split on every machine. Anything fitted on data (standardisation
statistics, one-hot categories) is fitted on the training part only, so the
test part leaks nothing into preprocessing.

privaudit never downloads data: scikit-learn's datasets ship with scikit-learn,
CIFAR-10 is read from a local folder, and the synthetic sets are generated.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .. import _validate

__all__ = ["DATASET_NAMES", "Dataset", "load_dataset"]

DATASET_NAMES = ("digits", "breast-cancer", "synthetic", "synthetic-tokens", "cifar10")
_ACCEPTED = (
    "'digits', 'breast-cancer', 'synthetic', 'synthetic-tokens', 'cifar10', "
    "'cifar10:/path/to/folder', 'PATH.csv' or 'PATH.parquet'"
)
_MAX_SEED = 2**32 - 1  # scikit-learn's random_state range
_MAX_CATEGORIES = 1000  # per one-hot encoded column
_MISSING = frozenset({"", "na", "n/a", "nan", "null", "none"})

Kind = Literal["tabular", "image", "tokens"]


def _no_indices() -> np.ndarray:
    return np.zeros(0, dtype=np.int64)


@dataclasses.dataclass(frozen=True, kw_only=True, eq=False)
class Dataset:
    """A dataset split into members (train) and non-members (test).

    Attributes:
        name: short name (`"digits"`, a file's stem, ...).
        kind: `"tabular"` (x of shape (n, d)), `"image"` (n, C, H, W) or
            `"tokens"` (n, L) int64 token ids below `vocab_size`.
        x_train, y_train, x_test, y_test: features (float32, or int64 tokens)
            and int64 labels in [0, num_classes).
        train_indices, test_indices: int64 positions of those rows in the
            original dataset, row for row.
        num_classes: number of labels.
        input_shape: shape of one example, `x_train.shape[1:]`.
        split_seed: the seed of the stratified split; None for a fixed
            (official) split such as CIFAR-10's.
        test_fraction: the fraction of kept examples in the test part.
        source: the file or folder read, or `"sklearn:load_digits"` and the like.
        preprocessing: one line saying what was done to the raw data.
        num_examples: rows in the original dataset, dropped ones included.
        label_names: `label_names[i]` is the original value of label i.
        feature_names: one name per feature column (tabular data only).
        vocab_size: vocabulary size for token data, else None.
        owner_column, owner_train, owner_test: the column naming each row's
            owner (for federated partitioning) and its values as strings.
        dropped_indices: original rows left out (missing values).
        split_method: `"stratified"` or `"official"`.

    Train, test and dropped indices are disjoint and together cover
    `range(num_examples)`; `__post_init__` checks this and every shape. The
    arrays are ordinary (writable) numpy arrays shared with the caller: treat
    them as read-only.
    """

    name: str
    kind: Kind
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    train_indices: np.ndarray
    test_indices: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]
    split_seed: int | None
    test_fraction: float
    source: str
    preprocessing: str
    num_examples: int
    label_names: tuple[str, ...] = ()
    feature_names: tuple[str, ...] = ()
    vocab_size: int | None = None
    owner_column: str | None = None
    owner_train: np.ndarray | None = None
    owner_test: np.ndarray | None = None
    dropped_indices: np.ndarray = dataclasses.field(default_factory=_no_indices)
    split_method: Literal["stratified", "official"] = "stratified"

    def __post_init__(self) -> None:
        problems = _dataset_problems(self)
        if problems:
            raise ValueError(f"Inconsistent Dataset {self.name!r}: " + "; ".join(problems) + ".")

    @property
    def n_train(self) -> int:
        return int(self.y_train.shape[0])

    @property
    def n_test(self) -> int:
        return int(self.y_test.shape[0])

    def describe(self) -> dict[str, Any]:
        """JSON-able facts about the dataset, without the arrays (for run records)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "source": self.source,
            "preprocessing": self.preprocessing,
            "num_classes": self.num_classes,
            "input_shape": list(self.input_shape),
            "x_dtype": str(self.x_train.dtype),
            "n_train": self.n_train,
            "n_test": self.n_test,
            "num_examples": self.num_examples,
            "dropped_rows": int(self.dropped_indices.shape[0]),
            "split_method": self.split_method,
            "split_seed": self.split_seed,
            "test_fraction": self.test_fraction,
            "label_names": list(self.label_names),
            "feature_names": list(self.feature_names),
            "vocab_size": self.vocab_size,
            "owner_column": self.owner_column,
        }

    def split_record(self) -> dict[str, Any]:
        """The split as JSON-able lists (members = train, non-members = test), for split.json."""
        record: dict[str, Any] = {
            "dataset": self.name,
            "source": self.source,
            "split_method": self.split_method,
            "split_seed": self.split_seed,
            "test_fraction": self.test_fraction,
            "num_examples": self.num_examples,
            "train_indices": self.train_indices.tolist(),
            "test_indices": self.test_indices.tolist(),
            "dropped_indices": self.dropped_indices.tolist(),
        }
        if self.owner_column is not None:
            assert self.owner_train is not None and self.owner_test is not None
            record["owner_column"] = self.owner_column
            record["owner_train"] = self.owner_train.tolist()
            record["owner_test"] = self.owner_test.tolist()
        return record


def _dataset_problems(d: Dataset) -> list[str]:
    problems: list[str] = []
    if d.kind not in ("tabular", "image", "tokens"):
        problems.append(f"kind={d.kind!r} is not 'tabular', 'image' or 'tokens'")
    if isinstance(d.num_classes, bool) or not isinstance(d.num_classes, int) or d.num_classes < 2:
        problems.append(f"num_classes={d.num_classes!r} must be an integer >= 2")
        return problems
    for part in ("train", "test"):
        x, y = getattr(d, f"x_{part}"), getattr(d, f"y_{part}")
        idx = getattr(d, f"{part}_indices")
        if not all(isinstance(a, np.ndarray) for a in (x, y, idx)):
            problems.append(f"x_{part}, y_{part} and {part}_indices must be numpy arrays")
            continue
        if y.dtype != np.int64 or idx.dtype != np.int64 or y.ndim != 1 or idx.ndim != 1:
            problems.append(f"y_{part} and {part}_indices must be 1-d int64 arrays")
        if not (x.shape[0] == y.shape[0] == idx.shape[0]):
            problems.append(
                f"x_{part}, y_{part}, {part}_indices have {x.shape[0]}, {y.shape[0]}, "
                f"{idx.shape[0]} rows"
            )
        if tuple(x.shape[1:]) != tuple(d.input_shape):
            problems.append(
                f"x_{part} has example shape {x.shape[1:]}, not input_shape {d.input_shape}"
            )
        if y.size and (y.min() < 0 or y.max() >= d.num_classes):
            problems.append(f"y_{part} has labels outside [0, {d.num_classes})")
        owner = getattr(d, f"owner_{part}")
        if (owner is None) != (d.owner_column is None):
            problems.append(f"owner_{part} must be given exactly when owner_column is")
        elif owner is not None and (not isinstance(owner, np.ndarray) or owner.shape != y.shape):
            problems.append(f"owner_{part} must be an array with one entry per row of y_{part}")
    if problems:
        return problems
    if d.kind == "tokens" and (d.vocab_size is None or d.x_train.dtype != np.int64):
        problems.append("token data needs int64 x and a vocab_size")
    if d.split_method not in ("stratified", "official"):
        problems.append(f"split_method={d.split_method!r} is not 'stratified' or 'official'")
    everything = np.concatenate([d.train_indices, d.test_indices, d.dropped_indices])
    if everything.size != d.num_examples or (
        everything.size
        and (everything.min() < 0 or np.bincount(everything, minlength=d.num_examples).max() > 1)
    ):
        problems.append(
            "train, test and dropped indices must be disjoint and cover "
            f"range(num_examples={d.num_examples})"
        )
    if d.y_train.size == 0 or d.y_test.size == 0:
        problems.append("both the train and the test part must be non-empty")
    return problems


# ---------------------------------------------------------------------------- entry point


def load_dataset(
    spec: str,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    target: str | None = None,
    owner_column: str | None = None,
    synthetic_samples: int = 10_000,
    synthetic_features: int = 20,
    synthetic_classes: int = 2,
    synthetic_seed: int = 0,
    vocab_size: int = 16,
    image_shape: bool = False,
) -> Dataset:
    """Loads a dataset and splits it into members (train) and non-members (test).

    Args:
        spec: `"digits"`, `"breast-cancer"`, `"synthetic"`, `"synthetic-tokens"`,
            `"cifar10"` (folder from `$PRIVAUDIT_DATA`), `"cifar10:/folder"`,
            or a path ending in `.csv` or `.parquet`.
        seed: seed of the stratified split (ignored by cifar10, which keeps
            the official split).
        test_fraction: fraction of examples held out as non-members, in (0, 1).
        target: label column of a CSV/Parquet file (required there, refused
            elsewhere).
        owner_column: optional column of a CSV/Parquet file naming each row's
            owner; kept as `owner_train`/`owner_test`, not used as a feature.
        synthetic_samples: number of examples of `"synthetic"` and
            `"synthetic-tokens"`.
        synthetic_features: features of `"synthetic"`; sequence length of
            `"synthetic-tokens"`.
        synthetic_classes: classes of both synthetic sets.
        synthetic_seed: seed that generates the synthetic data. It is kept
            apart from `seed` so that different splits (shadow models) draw
            from one fixed population.
        vocab_size: vocabulary of `"synthetic-tokens"`.
        image_shape: `"digits"` only: return (1, 8, 8) images instead of 64
            flat features.

    Returns:
        The `Dataset`, with its split and preprocessing on record.

    Raises:
        ValueError: an unknown spec, an argument out of range, or a file or
            folder that cannot be read (the message names it).

    >>> ds = load_dataset("digits")
    >>> (ds.n_train, ds.n_test, ds.input_shape)
    (1437, 360, (64,))
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(
            f"Expected spec to be a non-empty string, one of {_ACCEPTED}; got {spec!r}."
        )
    spec = spec.strip()
    _validate.integer(minimum=0, seed=seed)
    _validate.in_range(0, _MAX_SEED, seed=seed)
    _validate.in_range(0, 1, lo_open=True, hi_open=True, test_fraction=test_fraction)
    seed = int(seed)
    if not isinstance(image_shape, bool):
        raise ValueError(f"Expected image_shape to be True or False, got {image_shape!r}.")
    lowered = spec.lower()
    is_file = lowered.endswith((".csv", ".parquet"))
    if not is_file:
        for arg_name, value in (("target", target), ("owner_column", owner_column)):
            if value is not None:
                raise ValueError(
                    f"{arg_name}={value!r} applies only to CSV/Parquet files, not to spec={spec!r}."
                )
    if image_shape and lowered != "digits":
        raise ValueError(f"image_shape=True applies only to 'digits', not to spec={spec!r}.")

    if is_file:
        return _load_table(
            Path(spec), seed=seed, test_fraction=float(test_fraction),
            target=target, owner_column=owner_column,
        )
    if lowered == "digits":
        return _load_digits(seed=seed, test_fraction=float(test_fraction), image_shape=image_shape)
    if lowered == "breast-cancer":
        return _load_breast_cancer(seed=seed, test_fraction=float(test_fraction))
    if lowered in ("synthetic", "synthetic-tokens"):
        _validate.integer(minimum=1, synthetic_samples=synthetic_samples,
                          synthetic_features=synthetic_features)
        _validate.integer(minimum=2, synthetic_classes=synthetic_classes)
        _validate.integer(minimum=0, synthetic_seed=synthetic_seed)
        _validate.in_range(0, _MAX_SEED, synthetic_seed=synthetic_seed)
        if lowered == "synthetic":
            return _load_synthetic(
                seed=seed, test_fraction=float(test_fraction), n_samples=int(synthetic_samples),
                n_features=int(synthetic_features), n_classes=int(synthetic_classes),
                data_seed=int(synthetic_seed),
            )
        return _load_synthetic_tokens(
            seed=seed, test_fraction=float(test_fraction), n_samples=int(synthetic_samples),
            length=int(synthetic_features), n_classes=int(synthetic_classes),
            vocab_size=vocab_size, data_seed=int(synthetic_seed),
        )
    if lowered == "cifar10" or lowered.startswith("cifar10:"):
        folder = spec.split(":", 1)[1] if ":" in spec else None
        return _load_cifar10(folder, seed=seed, test_fraction=float(test_fraction))
    raise ValueError(f"Unknown dataset spec={spec!r}; expected one of {_ACCEPTED}.")


# ---------------------------------------------------------------------------- helpers


def _stratified_split(
    y: np.ndarray, *, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split of `range(len(y))`, in scikit-learn's order.

    Splitting the positions gives the very permutation that
    `train_test_split(X, y, test_size=test_fraction, stratify=y, random_state=seed)`
    applies to X, so `x[train]` equals that call's X_train row for row.
    """
    from sklearn.model_selection import train_test_split

    positions = np.arange(y.shape[0], dtype=np.int64)
    try:
        train, test = train_test_split(
            positions, test_size=test_fraction, stratify=y, random_state=seed
        )
    except ValueError as exc:
        counts = dict(zip(*(a.tolist() for a in np.unique(y, return_counts=True))))
        raise ValueError(
            f"Cannot split {y.shape[0]} examples with test_fraction={test_fraction} "
            f"stratified by label (examples per label: {counts}): {exc}"
        ) from None
    return np.asarray(train, dtype=np.int64), np.asarray(test, dtype=np.int64)


def _standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres and scales columns with the TRAIN mean and std (std 0 -> 1)."""
    mean = train.mean(axis=0, dtype=np.float64)
    std = train.std(axis=0, dtype=np.float64)
    std[std == 0] = 1.0
    return (
        ((train - mean) / std).astype(np.float32),
        ((test - mean) / std).astype(np.float32),
    )


def _make(
    *, name: str, kind: Kind, x: np.ndarray, y: np.ndarray, seed: int, test_fraction: float,
    source: str, preprocessing: str, num_classes: int, label_names: Sequence[str] = (),
    feature_names: Sequence[str] = (), vocab_size: int | None = None,
    transform: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Dataset:
    """Splits an in-memory dataset (rows 0..n-1) and fits `transform` on the train part."""
    train, test = _stratified_split(y, test_fraction=test_fraction, seed=seed)
    x_train, x_test = x[train], x[test]
    if transform is not None:
        x_train, x_test = transform(x_train, x_test)
    return Dataset(
        name=name, kind=kind, x_train=x_train, y_train=y[train], x_test=x_test, y_test=y[test],
        train_indices=train, test_indices=test, num_classes=num_classes,
        input_shape=tuple(int(s) for s in x.shape[1:]), split_seed=seed,
        test_fraction=test_fraction, source=source, preprocessing=preprocessing,
        num_examples=int(y.shape[0]), label_names=tuple(label_names),
        feature_names=tuple(feature_names), vocab_size=vocab_size,
    )


# ---------------------------------------------------------------------------- builtin sets


def _load_digits(*, seed: int, test_fraction: float, image_shape: bool) -> Dataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).astype(np.float32)
    if image_shape:
        x = x.reshape(-1, 1, 8, 8)
    shape_note = "reshaped to (1, 8, 8)" if image_shape else "64 flat features"
    return _make(
        name="digits", kind="image" if image_shape else "tabular", x=x,
        y=np.asarray(bunch.target, dtype=np.int64), seed=seed, test_fraction=test_fraction,
        source="sklearn:load_digits",
        preprocessing=f"pixels / 16 -> [0, 1], {shape_note}; stratified split",
        num_classes=10, label_names=[str(i) for i in range(10)],
        feature_names=() if image_shape else [str(f) for f in bunch.feature_names],
    )


def _load_breast_cancer(*, seed: int, test_fraction: float) -> Dataset:
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return _make(
        name="breast-cancer", kind="tabular", x=np.asarray(bunch.data, dtype=np.float64),
        y=np.asarray(bunch.target, dtype=np.int64), seed=seed, test_fraction=test_fraction,
        source="sklearn:load_breast_cancer",
        preprocessing="standardised with train mean/std; stratified split",
        num_classes=2, label_names=[str(n) for n in bunch.target_names],
        feature_names=[str(f) for f in bunch.feature_names], transform=_standardise,
    )


def _load_synthetic(
    *, seed: int, test_fraction: float, n_samples: int, n_features: int, n_classes: int,
    data_seed: int,
) -> Dataset:
    from sklearn.datasets import make_classification

    # make_classification puts each class on a hypercube vertex in the informative
    # subspace, so it needs 2**n_informative >= n_classes (one cluster per class).
    min_informative = max(1, math.ceil(math.log2(n_classes)))
    if n_features < min_informative:
        raise ValueError(
            f"Expected synthetic_features={n_features} >= {min_informative} for "
            f"synthetic_classes={n_classes} (2**features must reach the class count)."
        )
    n_informative = min(n_features, max(min_informative, 2, n_features // 2))
    n_redundant = min(n_features - n_informative, n_features // 4)
    x, y = make_classification(
        n_samples=n_samples, n_features=n_features, n_informative=n_informative,
        n_redundant=n_redundant, n_repeated=0, n_classes=n_classes, n_clusters_per_class=1,
        random_state=data_seed,
    )
    return _make(
        name="synthetic", kind="tabular", x=np.asarray(x, dtype=np.float64),
        y=np.asarray(y, dtype=np.int64), seed=seed, test_fraction=test_fraction,
        source="sklearn:make_classification",
        preprocessing=(
            f"make_classification(n_samples={n_samples}, n_features={n_features}, "
            f"n_informative={n_informative}, n_redundant={n_redundant}, n_classes={n_classes}, "
            f"n_clusters_per_class=1, random_state={data_seed}); standardised with train "
            "mean/std; stratified split"
        ),
        num_classes=n_classes, label_names=[str(i) for i in range(n_classes)],
        feature_names=[f"x{i}" for i in range(n_features)], transform=_standardise,
    )


def _token_sequences(
    *, n: int, length: int, n_classes: int, vocab_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences whose label is the marker token (0..k-1) that occurs most often.

    Tokens k..vocab_size-1 are filler. For each sequence a label y is drawn
    uniformly, every other marker gets 0..m copies (m = length // (2k)) and
    marker y one or two more than the most frequent of them, so the maximum is
    unique; the markers are scattered over random positions.
    """
    y = rng.integers(0, n_classes, size=n)
    m = length // (2 * n_classes)
    counts = rng.integers(0, m + 1, size=(n, n_classes))
    counts[np.arange(n), y] = 0
    counts[np.arange(n), y] = counts.max(axis=1) + 1 + rng.integers(0, 2, size=n)
    ends = np.cumsum(counts, axis=1)  # marker j fills ranks [ends[j-1], ends[j])
    by_rank = rng.integers(n_classes, vocab_size, size=(n, length))
    ranks = np.arange(length)[None, :]
    starts = ends - counts
    for j in range(n_classes):
        fill = (ranks >= starts[:, j : j + 1]) & (ranks < ends[:, j : j + 1])
        by_rank[fill] = j
    x = rng.permuted(by_rank, axis=1)  # each row shuffled on its own
    return x.astype(np.int64), y.astype(np.int64)


def _load_synthetic_tokens(
    *, seed: int, test_fraction: float, n_samples: int, length: int, n_classes: int,
    vocab_size: int, data_seed: int,
) -> Dataset:
    _validate.integer(minimum=n_classes + 1, vocab_size=vocab_size)
    min_length = 2 * n_classes + 2
    if length < min_length:
        raise ValueError(
            f"Expected synthetic_features={length} (the sequence length) >= {min_length} "
            f"for synthetic_classes={n_classes}."
        )
    rng = np.random.default_rng(data_seed)
    x, y = _token_sequences(
        n=n_samples, length=length, n_classes=n_classes, vocab_size=int(vocab_size), rng=rng
    )
    return _make(
        name="synthetic-tokens", kind="tokens", x=x, y=y, seed=seed, test_fraction=test_fraction,
        source="privaudit:synthetic-tokens",
        preprocessing=(
            f"{n_samples} sequences of {length} tokens over a vocabulary of {vocab_size} "
            f"(seed {data_seed}); label = the marker token 0..{n_classes - 1} that occurs "
            "most often (a unique maximum); stratified split"
        ),
        num_classes=n_classes, label_names=[str(i) for i in range(n_classes)],
        vocab_size=int(vocab_size),
    )


# ---------------------------------------------------------------------------- CSV / Parquet


@dataclasses.dataclass(frozen=True)
class _Column:
    """One raw column: `missing` marks absent values; exactly one of `numbers`
    (float64) and `strings` (str array) holds the values."""

    missing: np.ndarray
    numbers: np.ndarray | None
    strings: np.ndarray | None


def _column_from_strings(values: list[str]) -> _Column:
    strings = np.array([v.strip() for v in values], dtype=str)
    missing = np.array([v.lower() in _MISSING for v in strings], dtype=bool)
    try:
        numbers = np.where(missing, "nan", strings).astype(np.float64)
    except ValueError:
        return _Column(missing=missing, numbers=None, strings=strings)
    return _Column(missing=missing, numbers=numbers, strings=None)


def _read_csv(path: Path) -> tuple[list[str], list[_Column]]:
    """Header and columns of a CSV file; blank lines are skipped and not counted as rows."""
    header: list[str] | None = None
    rows: list[list[str]] = []
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            for row in reader:
                if not row:
                    continue
                if header is None:
                    header = [h.strip() for h in row]
                elif len(row) != len(header):
                    raise ValueError(
                        f"CSV file {str(path)!r}: line {reader.line_num} has {len(row)} fields, "
                        f"the header has {len(header)}."
                    )
                else:
                    rows.append(row)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ValueError(f"Cannot read CSV file {str(path)!r}: {exc}.") from None
    if header is None:
        raise ValueError(f"CSV file {str(path)!r} is empty: expected a header row.")
    columns = [_column_from_strings([r[j] for r in rows]) for j in range(len(header))]
    return header, columns


def _read_parquet(path: Path) -> tuple[list[str], list[_Column]]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            f"Reading {str(path)!r} needs pyarrow: pip install privaudit[parquet]."
        ) from None
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise ValueError(f"Cannot read Parquet file {str(path)!r}: {exc}.") from None
    columns = []
    for name, chunked in zip(table.column_names, table.columns):
        col = chunked.combine_chunks() if hasattr(chunked, "combine_chunks") else chunked
        nulls = np.asarray(col.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        kind = col.type
        if pa.types.is_dictionary(kind):
            col, kind = col.cast(kind.value_type), kind.value_type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            numbers = np.asarray(
                col.cast(pa.float64()).fill_null(float("nan")).to_numpy(zero_copy_only=False),
                dtype=np.float64,
            )
            missing = nulls | np.isnan(numbers)
            columns.append(_Column(missing=missing, numbers=numbers, strings=None))
        elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
            # Parquet keeps its types: "3" in a string column is a category, not a number.
            strings = np.array(["" if v is None else v.strip() for v in col.to_pylist()], dtype=str)
            missing = nulls | np.array([v.lower() in _MISSING for v in strings], dtype=bool)
            columns.append(_Column(missing=missing, numbers=None, strings=strings))
        else:
            raise ValueError(
                f"Parquet file {str(path)!r}: column {name!r} has type {kind}, expected "
                "numbers, booleans or strings."
            )
    return list(table.column_names), columns


def _encode_labels(
    column: _Column, rows: np.ndarray, *, target: str
) -> tuple[np.ndarray, list[str]]:
    """Label-encodes the target over the kept `rows`: label i <-> sorted unique value i."""
    if column.numbers is not None:
        values = column.numbers[rows]
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise ValueError(
                f"Expected target={target!r} to hold class labels (integers or strings), "
                "found non-integer numbers: privaudit trains classifiers only."
            )
        uniques, labels = np.unique(values, return_inverse=True)
        names = [str(int(v)) for v in uniques]
    else:
        assert column.strings is not None
        uniques, labels = np.unique(column.strings[rows], return_inverse=True)
        names = [str(v) for v in uniques]
    if len(names) < 2:
        raise ValueError(
            f"Expected target={target!r} to have at least 2 distinct values, found {names}."
        )
    return labels.astype(np.int64), names


def _encode_features(
    names: list[str], columns: list[_Column], *, train: np.ndarray, test: np.ndarray, where: str
) -> tuple[np.ndarray, np.ndarray, list[str], str]:
    """Numeric columns standardised, string columns one-hot, both fitted on `train` rows."""
    train_parts, test_parts, feature_names = [], [], []
    n_numeric = n_onehot = 0
    for name, column in zip(names, columns):
        if column.numbers is not None:
            values = column.numbers
            if not np.all(np.isfinite(values[np.concatenate([train, test])])):
                raise ValueError(f"{where}: column {name!r} holds infinite values.")
            tr, te = _standardise(values[train, None], values[test, None])
            train_parts.append(tr)
            test_parts.append(te)
            feature_names.append(name)
            n_numeric += 1
            continue
        assert column.strings is not None
        categories = np.unique(column.strings[train])
        if categories.size > _MAX_CATEGORIES:
            raise ValueError(
                f"{where}: column {name!r} has {categories.size} distinct values in the train "
                f"part (at most {_MAX_CATEGORIES} are one-hot encoded); drop it or encode it."
            )
        train_parts.append((column.strings[train, None] == categories[None, :]).astype(np.float32))
        test_parts.append((column.strings[test, None] == categories[None, :]).astype(np.float32))
        feature_names.extend(f"{name}={c}" for c in categories)
        n_onehot += 1
    note = (
        f"{n_numeric} numeric columns standardised with train mean/std, {n_onehot} string "
        "columns one-hot encoded with train categories (unseen values -> all zeros)"
    )
    return (
        np.concatenate(train_parts, axis=1), np.concatenate(test_parts, axis=1),
        feature_names, note,
    )


def _owner_strings(column: _Column, rows: np.ndarray) -> np.ndarray:
    if column.strings is not None:
        return column.strings[rows]
    assert column.numbers is not None
    values = column.numbers[rows]
    return np.array(
        [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in values], dtype=str
    )


def _load_table(
    path: Path, *, seed: int, test_fraction: float, target: str | None, owner_column: str | None
) -> Dataset:
    where = f"{path.suffix[1:].upper()} file {str(path)!r}"
    if not path.is_file():
        raise ValueError(f"Cannot read {where}: no such file.")
    names, columns = _read_parquet(path) if path.suffix.lower() == ".parquet" else _read_csv(path)
    if target is None:
        raise ValueError(f"Expected target= the label column of {where}; its columns are {names}.")
    if len(set(names)) != len(names):
        raise ValueError(f"{where} has duplicate column names: {names}.")
    for arg_name, value in (("target", target), ("owner_column", owner_column)):
        if value is not None and value not in names:
            raise ValueError(f"Expected {arg_name}={value!r} to be a column of {where}: {names}.")
    if owner_column == target:
        raise ValueError(f"Expected owner_column={owner_column!r} to differ from target.")
    n_rows = int(columns[0].missing.shape[0]) if columns else 0
    # Rows with a missing value in any column are dropped and recorded (their original
    # row numbers go to dropped_indices), not imputed: imputation statistics would be
    # one more thing to fit on the train part only.
    missing_any = np.zeros(n_rows, dtype=bool)
    for column in columns:
        missing_any |= column.missing
    kept = np.flatnonzero(~missing_any).astype(np.int64)
    dropped = np.flatnonzero(missing_any).astype(np.int64)
    by_name = dict(zip(names, columns))
    y, label_names = _encode_labels(by_name[target], kept, target=target)
    feature_cols = [n for n in names if n not in (target, owner_column)]
    if not feature_cols:
        raise ValueError(f"{where} has no feature columns besides target={target!r}.")
    train_pos, test_pos = _stratified_split(y, test_fraction=test_fraction, seed=seed)
    train_rows, test_rows = kept[train_pos], kept[test_pos]
    x_train, x_test, feature_names, note = _encode_features(
        feature_cols, [by_name[n] for n in feature_cols], train=train_rows, test=test_rows,
        where=where,
    )
    owners: tuple[np.ndarray, np.ndarray] | tuple[None, None] = (None, None)
    if owner_column is not None:
        owners = (
            _owner_strings(by_name[owner_column], train_rows),
            _owner_strings(by_name[owner_column], test_rows),
        )
    return Dataset(
        name=path.stem, kind="tabular", x_train=x_train, y_train=y[train_pos], x_test=x_test,
        y_test=y[test_pos], train_indices=train_rows, test_indices=test_rows,
        num_classes=len(label_names), input_shape=(int(x_train.shape[1]),), split_seed=seed,
        test_fraction=test_fraction, source=str(path.resolve()),
        preprocessing=(
            f"{note}; target {target!r} label-encoded by sorted value; {dropped.size} rows "
            "with missing values dropped; indices are 0-based data rows of the file; "
            "stratified split"
        ),
        num_examples=n_rows, label_names=tuple(label_names), feature_names=tuple(feature_names),
        owner_column=owner_column, owner_train=owners[0], owner_test=owners[1],
        dropped_indices=dropped,
    )


# ---------------------------------------------------------------------------- CIFAR-10

CIFAR10_LABELS = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
_CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST = "test_batch"
_CIFAR_PIXELS = 3 * 32 * 32


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's python batches: dicts, lists, bytes and numpy arrays only.

    `find_class` resolves nothing but numpy's array and scalar reconstructors
    (and `_codecs.encode`, which protocol-2 pickles use for bytes), so a
    malicious file cannot reach `os.system` or any other callable.
    """

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module == "_codecs":
            import codecs

            return codecs.encode
        if module == "numpy":
            return getattr(np, name)
        # numpy 2 moved numpy.core to numpy._core; resolve both spellings to the real one.
        import importlib

        modern = "numpy._core." + module.rsplit(".", 1)[1]
        try:
            return getattr(importlib.import_module(modern), name)
        except ImportError:  # numpy 1.x
            return getattr(importlib.import_module(module.replace("._core", ".core")), name)


def _cifar_folder(folder: str | None) -> tuple[Path, bool]:
    """The batches folder and whether it is the binary version."""
    if folder is None:
        root = os.environ.get("PRIVAUDIT_DATA")
        if not root:
            raise ValueError(
                "CIFAR-10 not found: set PRIVAUDIT_DATA to a folder holding "
                "cifar-10-batches-bin/ or cifar-10-batches-py/, or pass 'cifar10:/path/to/folder'. "
                "privaudit never downloads data."
            )
        candidates = [Path(root) / "cifar-10-batches-bin", Path(root) / "cifar-10-batches-py"]
    else:
        base = Path(folder).expanduser()
        candidates = [base, base / "cifar-10-batches-bin", base / "cifar-10-batches-py"]
    for candidate in candidates:
        if (candidate / "data_batch_1.bin").is_file():
            return candidate, True
        if (candidate / "data_batch_1").is_file():
            return candidate, False
    looked = ", ".join(repr(str(c)) for c in candidates)
    raise ValueError(
        f"CIFAR-10 not found: looked for data_batch_1.bin or data_batch_1 in {looked}. "
        "privaudit never downloads data: put the binary or python version of CIFAR-10 there."
    )


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except OSError as exc:
        message = exc.strerror or exc
        raise ValueError(f"Cannot read CIFAR-10 batch {str(path)!r}: {message}.") from None
    record = 1 + _CIFAR_PIXELS
    if raw.size == 0 or raw.size % record:
        raise ValueError(
            f"CIFAR-10 batch {str(path)!r} has {raw.size} bytes, not a multiple of {record}."
        )
    rows = raw.reshape(-1, record)
    return rows[:, 1:], rows[:, 0].astype(np.int64)


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open("rb") as fh:
            batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        message = exc.strerror or exc
        raise ValueError(f"Cannot read CIFAR-10 batch {str(path)!r}: {message}.") from None
    except Exception as exc:  # any malformed pickle
        raise ValueError(f"CIFAR-10 batch {str(path)!r} is not a valid batch: {exc}.") from None
    if not isinstance(batch, dict):
        raise ValueError(f"CIFAR-10 batch {str(path)!r} is not a dict.")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise ValueError(f"CIFAR-10 batch {str(path)!r}: 'data' is not an (N, 3072) array.")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError):
        raise ValueError(f"CIFAR-10 batch {str(path)!r}: 'labels' are not integers.") from None
    if label_array.shape != (data.shape[0],):
        raise ValueError(
            f"CIFAR-10 batch {str(path)!r}: {label_array.size} labels for {data.shape[0]} images."
        )
    return np.asarray(data, dtype=np.uint8), label_array


def _read_cifar_part(
    folder: Path, names: Sequence[str], binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    paths = [folder / (n + ".bin" if binary else n) for n in names]
    parts = [(_read_cifar_bin if binary else _read_cifar_py)(p) for p in paths]
    pixels = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"CIFAR-10 folder {str(folder)!r} has labels outside 0..9.")
    images = pixels.reshape(-1, 3, 32, 32).astype(np.float32)
    images /= 255.0
    return images, labels


def _load_cifar10(folder: str | None, *, seed: int, test_fraction: float) -> Dataset:
    del seed, test_fraction  # the official split is kept, as the preprocessing note says
    path, binary = _cifar_folder(folder)
    expected = [n + ".bin" if binary else n for n in (*_CIFAR_TRAIN, _CIFAR_TEST)]
    missing = [n for n in expected if not (path / n).is_file()]
    if missing:
        raise ValueError(
            f"CIFAR-10 folder {str(path)!r} lacks {missing}. privaudit never downloads data."
        )
    x_train, y_train = _read_cifar_part(path, _CIFAR_TRAIN, binary)
    x_test, y_test = _read_cifar_part(path, (_CIFAR_TEST,), binary)
    n_train, n_test = y_train.shape[0], y_test.shape[0]
    version = "binary" if binary else "python"
    return Dataset(
        name="cifar10", kind="image", x_train=x_train, y_train=y_train, x_test=x_test,
        y_test=y_test, train_indices=np.arange(n_train, dtype=np.int64),
        test_indices=np.arange(n_train, n_train + n_test, dtype=np.int64), num_classes=10,
        input_shape=(3, 32, 32), split_seed=None,
        test_fraction=n_test / (n_train + n_test), source=str(path.resolve()),
        preprocessing=(
            f"CIFAR-10 {version} version, pixels / 255 -> [0, 1], shape (3, 32, 32); official "
            "split (data_batch_1..5 = train, test_batch = test, indices in that order); "
            "seed and test_fraction ignored"
        ),
        num_examples=n_train + n_test, label_names=CIFAR10_LABELS, split_method="official",
    )
