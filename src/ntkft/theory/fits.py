"""Log-log slopes with t confidence intervals, and how they compare with a predicted exponent."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats


@dataclass
class SlopeFit:
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

    def to_dict(self) -> dict:
        return asdict(self)


def loglog_slope(x, y, level: float = 0.95, predicted: float | None = None, x_min: float = 0.0) -> SlopeFit | None:
    """OLS slope of log y on log x for x >= x_min and y > 0, with a two-sided t interval (points - 2 dof).
    None when fewer than 3 usable points."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    keep = (x >= x_min) & (y > 0) & np.isfinite(y)
    lx, ly = np.log(x[keep]), np.log(y[keep])
    m = len(lx)
    if m < 3 or np.ptp(lx) == 0:
        return None
    slope, icpt = np.polyfit(lx, ly, 1)
    resid = ly - (icpt + slope * lx)
    sxx = np.sum((lx - lx.mean()) ** 2)
    se = math.sqrt(np.sum(resid ** 2) / (m - 2) / sxx) if m > 2 else math.inf
    q = stats.t.ppf(0.5 + level / 2, m - 2)
    ss_tot = np.sum((ly - ly.mean()) ** 2)
    fit = SlopeFit(float(slope), float(slope - q * se), float(slope + q * se), float(icpt), level, m,
                   float(np.exp(lx.min())), float(np.exp(lx.max())), float(1 - np.sum(resid ** 2) / ss_tot) if ss_tot else 1.0)
    if predicted is not None:
        fit.predicted = predicted
        fit.verdict = verdict(fit, predicted)
    return fit


def verdict(fit: SlopeFit, predicted: float) -> str:
    """'matches' when the interval holds the predicted slope; otherwise faster or slower than predicted."""
    if fit.low <= predicted <= fit.high:
        return "matches"
    return "faster than predicted" if fit.high < predicted else "slower than predicted"
