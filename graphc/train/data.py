"""Data sets for training: scikit-learn's digits, generated toy problems, the user's files.

Every loader returns a `Dataset` of NumPy arrays split into train, validation
and test parts with a fixed seed, so a run is reproducible from its command
line. The toy problems follow TensorFlow Playground (XOR, spirals, circles,
moons: two features in [-6, 6]-ish, two classes); the sequence problems are
the classic RNN tests (batch first, [N, T, F]).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from graphc.errors import GraphError, closest

Split = tuple[np.ndarray, np.ndarray]


@dataclass
class Dataset:
    name: str
    train: Split
    val: Split | None
    test: Split | None
    task: str  # "classification" (int64 labels) or "regression" (float targets)
    num_classes: int | None = None
    doc: str = ""

    def describe(self) -> str:
        parts = [f"{self.name}: train {len(self.train[0])}"]
        if self.val is not None:
            parts.append(f"validation {len(self.val[0])}")
        if self.test is not None:
            parts.append(f"test {len(self.test[0])}")
        shape = "x".join(map(str, self.train[0].shape[1:]))
        kind = f"{self.num_classes} classes" if self.task == "classification" else "regression"
        return ", ".join(parts) + f" ({shape} features, {kind})"


def split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[Split, Split]:
    """(rest, held out): a shuffled split; classes stay balanced when labels are integers."""
    rng = np.random.default_rng(seed)
    n = len(x)
    if y.dtype.kind in "iu" and y.ndim == 1:
        held = []
        for c in np.unique(y):
            idx = np.flatnonzero(y == c)
            rng.shuffle(idx)
            held.append(idx[: round(len(idx) * fraction)])
        held_idx = np.sort(np.concatenate(held))
    else:
        held_idx = np.sort(rng.permutation(n)[: round(n * fraction)])
    mask = np.ones(n, bool)
    mask[held_idx] = False
    return (x[mask], y[mask]), (x[held_idx], y[held_idx])


def _finish(name, x, y, task, *, val_split, test_split, seed, doc="") -> Dataset:
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.int64 if task == "classification" else np.float32)
    test = val = None
    rest = (x, y)
    if test_split > 0:
        rest, test = split(x, y, test_split, seed)
    if val_split > 0:
        rest, val = split(rest[0], rest[1], val_split, seed + 1)
    k = int(y.max()) + 1 if task == "classification" else None
    return Dataset(name, rest, val, test, task, k, doc)


# ------------------------------------------------------------------ loaders
def digits(seed: int = 0, val_split: float = 0.1, test_split: float = 0.2) -> Dataset:
    """scikit-learn's 8x8 handwritten digits, scaled to [0, 1], flattened to 64 features."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise GraphError(
            "the digits data set needs scikit-learn", hint="pip install scikit-learn"
        ) from None
    d = load_digits()
    return _finish(
        "digits",
        d.data / 16.0,
        d.target,
        "classification",
        val_split=val_split,
        test_split=test_split,
        seed=seed,
        doc="1,797 8x8 digit images, 10 classes",
    )


def _playground(kind: str, n: int, noise: float, rng) -> Split:
    if kind == "xor":
        x = rng.uniform(-6, 6, (n, 2))
        pad = 0.3  # keep points off the axes, as the Playground does
        x += np.where(x > 0, pad, -pad)
        y = (x[:, 0] * x[:, 1] < 0).astype(np.int64)
    elif kind == "circles":
        r_in = rng.uniform(0, 2.5, n // 2)
        r_out = rng.uniform(3.5, 5.0, n - n // 2)
        r = np.concatenate([r_in, r_out])
        a = rng.uniform(0, 2 * np.pi, n)
        x = np.stack([r * np.cos(a), r * np.sin(a)], 1)
        y = np.concatenate([np.zeros(n // 2), np.ones(n - n // 2)]).astype(np.int64)
    elif kind == "spirals":
        k = n // 2
        t = np.sqrt(rng.uniform(0, 1, k)) * 3 * np.pi
        arm = np.stack([t * np.cos(t), t * np.sin(t)], 1) / (3 * np.pi) * 5
        x = np.concatenate([arm, -arm])
        y = np.concatenate([np.zeros(k), np.ones(k)]).astype(np.int64)
        n = 2 * k
    elif kind == "moons":
        k = n // 2
        a = rng.uniform(0, np.pi, k)
        b = rng.uniform(0, np.pi, n - k)
        upper = np.stack([np.cos(a), np.sin(a)], 1)
        lower = np.stack([1 - np.cos(b), 0.5 - np.sin(b)], 1)
        x = (np.concatenate([upper, lower]) - [0.5, 0.25]) * 3
        y = np.concatenate([np.zeros(k), np.ones(n - k)]).astype(np.int64)
    else:  # pragma: no cover - guarded by DATASETS
        raise ValueError(kind)
    x = x + rng.normal(0, noise, x.shape) if noise else x
    return x, y


def playground(
    kind: str,
    n: int = 1000,
    noise: float = 0.0,
    seed: int = 0,
    val_split: float = 0.1,
    test_split: float = 0.2,
) -> Dataset:
    """TensorFlow Playground's two-feature classification problems."""
    x, y = _playground(kind, n, noise, np.random.default_rng(seed))
    return _finish(
        kind,
        x,
        y,
        "classification",
        val_split=val_split,
        test_split=test_split,
        seed=seed,
        doc=f"{kind} in the plane, 2 classes",
    )


def parity(
    n: int = 2000, length: int = 8, seed: int = 0, val_split: float = 0.1, test_split: float = 0.2
) -> Dataset:
    """Bit strings [N, T, 1]; the label is 1 when the number of ones is odd."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (n, length))
    return _finish(
        "parity",
        bits[..., None],
        bits.sum(1) % 2,
        "classification",
        val_split=val_split,
        test_split=test_split,
        seed=seed,
        doc=f"parity of {length} bits, 2 classes",
    )


def adding(
    n: int = 2000, length: int = 10, seed: int = 0, val_split: float = 0.1, test_split: float = 0.2
) -> Dataset:
    """Hochreiter's adding problem [N, T, 2]: values and a marker channel with two 1s.

    The target is the sum of the two marked values (shape [N, 1], regression);
    always answering the mean (1.0) gives a mean squared error near 0.167.
    """
    rng = np.random.default_rng(seed)
    vals = rng.uniform(0, 1, (n, length))
    marks = np.zeros((n, length))
    for i in range(n):
        a, b = rng.choice(length, 2, replace=False)
        marks[i, [a, b]] = 1
    x = np.stack([vals, marks], -1)
    y = (vals * marks).sum(1, keepdims=True)
    return _finish(
        "adding",
        x,
        y,
        "regression",
        val_split=val_split,
        test_split=test_split,
        seed=seed,
        doc=f"adding problem over {length} steps",
    )


def from_file(path: str, seed: int = 0, val_split: float = 0.1, test_split: float = 0.2) -> Dataset:
    """A user's .npz (arrays x and y, optionally x_test/y_test, x_val/y_val) or .csv.

    A .csv has one row per example, the label in the last column and an
    optional header row. Integer-valued labels make a classification task.
    """
    if not os.path.exists(path):
        raise GraphError(f"no such data file: '{path}'", hint="check the path")
    name = os.path.basename(path)
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            arrays = {k.lower(): f[k] for k in f.files}
        x = arrays.get("x", arrays.get("x_train"))
        y = arrays.get("y", arrays.get("y_train"))
        if x is None or y is None:
            raise GraphError(
                f"'{path}' holds arrays {', '.join(arrays) or 'none'}",
                hint="save the inputs as x and the labels as y (np.savez(path, x=..., y=...))",
            )
        extra = {
            k: (arrays[f"x_{k}"], arrays[f"y_{k}"])
            for k in ("val", "test")
            if f"x_{k}" in arrays and f"y_{k}" in arrays
        }
    elif path.endswith(".csv"):
        x, y = _read_csv(path)
        extra = {}
    else:
        raise GraphError(f"cannot read '{path}' as data", hint="use a .npz or .csv file")
    if len(x) != len(y):
        raise GraphError(f"'{path}': {len(x)} inputs but {len(y)} labels")
    task = "classification" if _integral(y) and np.ndim(y) == 1 else "regression"
    ds = _finish(
        name,
        x,
        y,
        task,
        val_split=0.0 if "val" in extra else val_split,
        test_split=0.0 if "test" in extra else test_split,
        seed=seed,
    )
    for k, (xs, ys) in extra.items():
        setattr(
            ds,
            k,
            (
                np.asarray(xs, np.float32),
                np.asarray(ys, np.int64 if task == "classification" else np.float32),
            ),
        )
    if task == "classification":
        parts = [s[1] for s in (ds.train, ds.val, ds.test) if s is not None and len(s[1])]
        ds.num_classes = int(max(int(p.max()) for p in parts)) + 1
    return ds


def _integral(y) -> bool:
    y = np.asarray(y)
    if y.dtype.kind in "iub":
        return True
    return y.dtype.kind == "f" and bool(np.all(np.mod(y, 1) == 0)) and y.min() >= 0


def _read_csv(path: str) -> Split:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.reader(f) if r]
    if rows and not _numeric(rows[0]):
        rows = rows[1:]
    try:
        table = np.asarray(rows, dtype=np.float64)
    except ValueError as err:
        raise GraphError(
            f"'{path}' has a non-numeric cell: {err}", hint="a .csv must hold numbers, label last"
        ) from None
    if table.ndim != 2 or table.shape[1] < 2:
        raise GraphError(f"'{path}' needs at least two columns (features, then the label)")
    return table[:, :-1], table[:, -1]


def _numeric(row) -> bool:
    try:
        [float(c) for c in row]
        return True
    except ValueError:
        return False


DATASETS = {
    "digits": digits,
    "xor": lambda **kw: playground("xor", **kw),
    "circles": lambda **kw: playground("circles", **kw),
    "spirals": lambda **kw: playground("spirals", **kw),
    "moons": lambda **kw: playground("moons", **kw),
    "parity": parity,
    "adding": adding,
}


def load(
    name: str,
    seed: int = 0,
    val_split: float = 0.1,
    test_split: float = 0.2,
    input_shape: tuple | None = None,
) -> Dataset:
    """A named data set or a .npz/.csv file.

    `input_shape` (the model input's declared shape) sets the sequence length
    of the sequence tasks, so `--data parity` fits an RNN over any fixed T.
    """
    if name.endswith((".npz", ".csv")) or os.sep in name:
        return from_file(name, seed=seed, val_split=val_split, test_split=test_split)
    if name not in DATASETS:
        near = closest(name, DATASETS)
        raise GraphError(
            f"unknown data set '{name}'",
            hint=(f"did you mean '{near}'? " if near else "")
            + "use one of "
            + ", ".join(DATASETS)
            + ", or a .npz/.csv file",
        )
    kw = {}
    if (
        name in ("parity", "adding")
        and input_shape is not None
        and len(input_shape) == 3
        and isinstance(input_shape[1], int)
    ):
        kw["length"] = input_shape[1]
    return DATASETS[name](seed=seed, val_split=val_split, test_split=test_split, **kw)
