"""Task metrics from scikit-learn / scipy: MSE, Pearson, Spearman; accuracy, F1."""

from __future__ import annotations

import numpy as np

from ..errors import DataError


def regression_metrics(pred: object, target: object) -> dict[str, float]:
    """MSE, Pearson and Spearman (NaN correlations for a constant prediction or target)."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import mean_squared_error

    pred, target = np.asarray(pred, dtype=np.float64).ravel(), np.asarray(target, dtype=np.float64).ravel()
    if not np.isfinite(pred).all():
        raise DataError("predictions contain NaN or inf")
    const = np.ptp(pred) == 0 or np.ptp(target) == 0
    return {"mse": float(mean_squared_error(target, pred)),
            "pearson": float("nan") if const else float(pearsonr(pred, target)[0]),
            "spearman": float("nan") if const else float(spearmanr(pred, target)[0])}


def classification_metrics(pred_labels: object, target: object, num_classes: int = 2) -> dict[str, float]:
    """Accuracy and F1 (binary for two classes, macro otherwise)."""
    from sklearn.metrics import accuracy_score, f1_score

    avg = "binary" if num_classes == 2 else "macro"
    return {"accuracy": float(accuracy_score(target, pred_labels)),
            "f1": float(f1_score(target, pred_labels, average=avg, zero_division=0))}


def task_metrics(task_type: str, pred: object, target: object, num_classes: int = 2) -> dict[str, float]:
    """Metrics for predictions: scores for regression, class indices or logits for classification."""
    if task_type == "regression":
        return regression_metrics(pred, target)
    pred = np.asarray(pred)
    if pred.ndim == 2:
        pred = pred.argmax(-1)
    elif pred.dtype.kind == "f":  # one logit for a binary task
        pred = (pred > 0).astype(np.int64)
    return classification_metrics(pred, target, num_classes)
