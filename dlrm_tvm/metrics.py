"""Evaluation metrics, exact: binary cross-entropy, accuracy and ROC AUC over every row.

``roc_auc`` is the Mann-Whitney statistic with tied scores given their average rank, which
equals the area under the ROC curve with ties drawn as diagonal steps (sklearn's
``roc_auc_score``), computed on all rows, no sampling or binning.
"""

from __future__ import annotations

import numpy as np


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve; NaN when only one class is present."""
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels {y.shape} and scores {s.shape} differ in shape")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ss = s[order]
    # average 1-based rank of each run of equal scores
    starts = np.flatnonzero(np.r_[True, ss[1:] != ss[:-1]])
    ends = np.r_[starts[1:], ss.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size, np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def bce(labels: np.ndarray, p: np.ndarray) -> float:
    """Mean binary cross-entropy with the logs clamped at -100, as torch's BCELoss."""
    y = np.asarray(labels, np.float64).ravel()
    q = np.asarray(p, np.float64).ravel()
    with np.errstate(divide="ignore"):
        lp = np.maximum(np.log(q), -100.0)
        lq = np.maximum(np.log1p(-q), -100.0)
    return float(-(y * lp + (1 - y) * lq).mean()) if y.size else float("nan")


def evaluate_predictions(labels: np.ndarray, p: np.ndarray) -> dict:
    y = np.asarray(labels).ravel()
    q = np.asarray(p).ravel()
    return {"loss": bce(y, q), "accuracy": float(((q > 0.5) == (y > 0.5)).mean()) if y.size
            else float("nan"), "auc": roc_auc(y, q), "rows": int(y.size)}
