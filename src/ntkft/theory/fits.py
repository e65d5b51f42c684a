"""Log-log slopes with t confidence intervals, and how they compare with a predicted exponent."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from .._results import ResultModel


class SlopeFit(ResultModel):
    """log y = intercept + slope log x by least squares over all (x, y) points (every seed its own point)."""

    slope: float
    low: float
    high: float
    intercept: float
    level: float
    points: int
    x_min: float
    x_max: float
    r2: float
    predicted: float | None = None
    verdict: str = ""


def loglog_slope(x: ArrayLike, y: ArrayLike, level: float = 0.95, predicted: float | None = None,
                 x_min: float = 0.0) -> SlopeFit | None:
    """OLS slope of log y on log x for x >= x_min and y > 0, with a two-sided t interval (points - 2 dof).
    None when fewer than 3 usable points."""
    xa, ya = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = (xa >= x_min) & (ya > 0) & np.isfinite(ya)
    lx, ly = np.log(xa[keep]), np.log(ya[keep])
    m = len(lx)
    if m < 3 or np.ptp(lx) == 0:
        return None
    slope, icpt = np.polyfit(lx, ly, 1)
    resid = ly - (icpt + slope * lx)
    sxx = np.sum((lx - lx.mean()) ** 2)
    se = math.sqrt(np.sum(resid ** 2) / (m - 2) / sxx) if m > 2 else math.inf
    q = stats.t.ppf(0.5 + level / 2, m - 2)
    ss_tot = np.sum((ly - ly.mean()) ** 2)
    fit = SlopeFit(slope=float(slope), low=float(slope - q * se), high=float(slope + q * se), intercept=float(icpt),
                   level=level, points=m, x_min=float(np.exp(lx.min())), x_max=float(np.exp(lx.max())),
                   r2=float(1 - np.sum(resid ** 2) / ss_tot) if ss_tot else 1.0)
    if predicted is not None:
        fit.predicted = predicted
        fit.verdict = verdict(fit, predicted)
    return fit


def verdict(fit: SlopeFit, predicted: float) -> str:
    """'matches' when the interval holds the predicted slope; otherwise faster or slower than predicted."""
    if fit.low <= predicted <= fit.high:
        return "matches"
    return "faster than predicted" if fit.high < predicted else "slower than predicted"
