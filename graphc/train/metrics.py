"""Classification metrics in NumPy: accuracy, macro F1, ROC AUC, confusion matrix.

Computed from whole-split predictions after each epoch (not per batch), so
macro F1 and AUC are exact rather than averages of batch values.
"""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j]: examples of class i predicted as class j."""
    m = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(m, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return m


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred))) if len(y_true) else 0.0


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in y_true or y_pred."""
    m = confusion_matrix(y_true, y_pred, num_classes)
    tp = np.diag(m).astype(np.float64)
    fp = m.sum(0) - tp
    fn = m.sum(1) - tp
    present = (m.sum(0) + m.sum(1)) > 0
    denom = 2 * tp + fp + fn
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return float(f1[present].mean()) if present.any() else 0.0


def _binary_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half (Mann-Whitney)."""
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    s = scores[order]
    ranks = np.empty(len(s), dtype=np.float64)
    # average ranks over runs of tied scores
    edges = np.flatnonzero(np.diff(s)) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [len(s)]])
    for a, b in zip(starts, ends):
        ranks[a:b] = (a + b + 1) / 2.0
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Binary AUC from [N] or [N, 2] scores; one-vs-rest macro average for [N, C], C > 2.

    Classes absent from y_true are skipped in the average (their AUC is undefined).
    """
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim == 1:
        return _binary_auc(y_true == 1, scores)
    if scores.shape[1] == 2:
        return _binary_auc(y_true == 1, scores[:, 1])
    aucs = [_binary_auc(y_true == c, scores[:, c]) for c in range(scores.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def classification_report(y_true: np.ndarray, logits: np.ndarray) -> dict:
    """accuracy, macro F1, ROC AUC and the confusion matrix from logits [N, C]."""
    k = logits.shape[1]
    pred = logits.argmax(axis=1)
    probs = softmax(logits.astype(np.float64))
    auc = roc_auc(y_true, probs)
    return {
        "accuracy": accuracy(y_true, pred),
        "macro_f1": macro_f1(y_true, pred, k),
        "roc_auc": None if np.isnan(auc) else auc,
        "confusion_matrix": confusion_matrix(y_true, pred, k).tolist(),
    }
