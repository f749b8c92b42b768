"""Intervals and exact tests for the gate, on per-question scores (0..100 points).

numpy and the standard library only (statistics.NormalDist gives the normal quantile).

Every interval here is the hull of two intervals over the same questions:

- a bootstrap over questions (percentile method; for a difference, *paired*: each
  resample draws questions and takes both versions' answers to them), which follows the
  observed spread and assumes no distribution;
- a score interval: Wilson's interval for a mean, and for a difference of two paired
  means Newcombe's hybrid score interval (Newcombe 1998, "Improved confidence intervals
  for the difference between binomial proportions based on paired data", method 10; the
  same construction as Zou & Donner's MOVER), with Newcombe's continuity-adjusted
  correlation of the pairs. On right/wrong scores (0 or 100) this is exactly Newcombe's
  interval; on fractional scores (the same formulas on the scores' covariance) Wilson's
  variance p(1-p) is the largest any 0..1 score with mean p can have, so it errs wide.

Why both: on few questions the percentile bootstrap is far too sure of itself, and when
every pair agrees it has zero width (ten questions with no change "prove" no change). In
a simulation of paired right/wrong answers (5 true effects, 300 runs each, 95% asked)
the bootstrap covered the true difference in 29-66% of runs for small effects at 5-10
questions and 78% at 30; Newcombe's interval and the hull in 96-100% at every size, and
at 60 questions all three in 95-99% with widths within a few points of each other.

The bootstrap is reproducible for a seed and a numpy version (numpy's Generator streams
may change between numpy feature releases; the report records the numpy version).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

SCALE = 100.0  # scores are points; the score intervals work on fractions


@dataclass(frozen=True)
class Interval:
    """An interval in points, with what it was made of.

    `means` is (mean,) for a mean, or (a, b) for the paired difference b - a; with `n`,
    `cov` and `sd_product` (covariance and product of standard deviations of the paired
    scores, as fractions) they are what the score interval needs, kept so the interval can
    be projected to more questions (questions_to_decide).
    """

    low: float
    high: float
    bootstrap: tuple[float, float]
    score: tuple[float, float]
    n: int
    means: tuple[float, ...]
    cov: float = 0.0
    sd_product: float = 0.0

    @property
    def estimate(self) -> float:
        return self.means[1] - self.means[0] if len(self.means) == 2 else self.means[0]

    def to_json(self) -> dict:
        r = _round
        return {"low": r(self.low), "high": r(self.high),
                "bootstrap": [r(self.bootstrap[0]), r(self.bootstrap[1])],
                "score": [r(self.score[0]), r(self.score[1])],
                "n": self.n, "means": [r(m) for m in self.means],
                "cov": round(self.cov, 6), "sd_product": round(self.sd_product, 6)}

    @classmethod
    def from_json(cls, d: dict) -> Interval:
        return cls(d["low"], d["high"], tuple(d["bootstrap"]), tuple(d["score"]), d["n"],
                   tuple(d["means"]), d.get("cov", 0.0), d.get("sd_product", 0.0))

    def negated(self) -> Interval:
        """The interval of a - b: the old-knowledge loss is minus the old-knowledge change.
        Newcombe's interval is symmetric in this: swapping the two means negates it."""
        b, s = self.bootstrap, self.score
        return Interval(-self.high, -self.low, (-b[1], -b[0]), (-s[1], -s[0]), self.n,
                        self.means[::-1], self.cov, self.sd_product)


def _round(v: float) -> float:
    return round(float(v), 2) + 0.0  # + 0.0 turns -0.0 into 0.0


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _as_array(values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError("an interval needs at least one score")
    return arr


# ---------------------------------------------------------------- bootstrap


def resample_indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) question indices drawn with replacement; the same for a seed and n."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, n, size=(resamples, n), dtype=np.int32)


def bootstrap_mean(values, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    """Percentile interval of the mean of `values` (pass candidate - parent for a paired one)."""
    arr = _as_array(values)
    means = arr[resample_indices(arr.size, resamples, seed)].mean(axis=1)
    alpha = 1.0 - confidence
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


# ---------------------------------------------------------------- score intervals


def wilson(successes: float, n: int, confidence: float) -> tuple[float, float]:
    """Wilson's score interval for a proportion (successes may be fractional), as fractions."""
    if n <= 0:
        raise ValueError("Wilson's interval needs n >= 1")
    z = z_value(confidence)
    p = min(1.0, max(0.0, successes / n))
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def score_mean(values, confidence: float) -> tuple[float, float]:
    """Wilson's interval for the mean of 0..100 scores, in points."""
    arr = _as_array(values) / SCALE
    lo, hi = wilson(float(arr.sum()), arr.size, confidence)
    return lo * SCALE, hi * SCALE


def _moments(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """(covariance, product of standard deviations) of paired fractions, population form."""
    return float(((a - a.mean()) * (b - b.mean())).mean()), float(a.std() * b.std())


def newcombe_psi(n: int, cov: float, sd_product: float) -> float:
    """Newcombe's correlation for method 10: for right/wrong pairs B = ad - bc = n^2 * cov;
    psi = (B - n/2) / sqrt(A) when B > n/2, 0 when 0 <= B <= n/2, B / sqrt(A) when B < 0,
    with sqrt(A) = n^2 * sd_product; 0 when a side has no variance."""
    if sd_product <= 0:
        return 0.0
    b = n * n * cov
    if b > n / 2:
        return min(1.0, (b - n / 2) / (n * n * sd_product))
    return 0.0 if b >= 0 else max(-1.0, b / (n * n * sd_product))


def score_paired_difference(parent, candidate, confidence: float) -> tuple[float, float]:
    """Newcombe's hybrid score interval for mean(candidate) - mean(parent), paired, in points."""
    p1, p2 = _as_array(parent) / SCALE, _as_array(candidate) / SCALE
    if p1.size != p2.size:
        raise ValueError("paired scores need the same questions on both sides")
    return newcombe(p1.size, float(p1.mean()) * SCALE, float(p2.mean()) * SCALE,
                    *_moments(p1, p2), confidence)


def newcombe(n: int, mean1: float, mean2: float, cov: float, sd_product: float,
             confidence: float) -> tuple[float, float]:
    """Newcombe's method 10 from its summary: n pairs, the two means (points), their moments."""
    m1, m2 = mean1 / SCALE, mean2 / SCALE
    phi = newcombe_psi(n, cov, sd_product)
    l1, u1 = wilson(m1 * n, n, confidence)
    l2, u2 = wilson(m2 * n, n, confidence)
    d = m2 - m1
    low = d - math.sqrt(max(0.0, (m2 - l2) ** 2 - 2 * phi * (m2 - l2) * (u1 - m1) + (u1 - m1) ** 2))
    high = d + math.sqrt(max(0.0, (u2 - m2) ** 2 - 2 * phi * (u2 - m2) * (m1 - l1) + (m1 - l1) ** 2))
    return max(-1.0, low) * SCALE, min(1.0, high) * SCALE


# ---------------------------------------------------------------- what the gate uses


def mean_interval(values, confidence: float, resamples: int, seed: int) -> Interval:
    arr = _as_array(values)
    boot = bootstrap_mean(arr, confidence, resamples, seed)
    score = score_mean(arr, confidence)
    return Interval(min(boot[0], score[0]), max(boot[1], score[1]), boot, score, arr.size,
                    (float(arr.mean()),))


def paired_difference(parent, candidate, confidence: float, resamples: int, seed: int) -> Interval:
    """Interval of mean(candidate - parent) over the same questions."""
    p, c = _as_array(parent), _as_array(candidate)
    boot = bootstrap_mean(c - p, confidence, resamples, seed)
    score = score_paired_difference(p, c, confidence)
    return Interval(min(boot[0], score[0]), max(boot[1], score[1]), boot, score, p.size,
                    (float(p.mean()), float(c.mean())), *_moments(p / SCALE, c / SCALE))


# ---------------------------------------------------------------- exact test


def mcnemar_exact(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value: the binomial test of the discordant pairs at 1/2.

    `gained` pairs went wrong -> right, `lost` right -> wrong. Under "no change" each
    discordant pair is equally likely to go either way; p = P(a split at least this
    uneven), doubled and capped at 1. No discordant pair: p = 1.
    """
    if gained < 0 or lost < 0:
        raise ValueError("counts of discordant pairs cannot be negative")
    n, k = gained + lost, min(gained, lost)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


# ---------------------------------------------------------------- sample size


def project(iv: Interval, n: int, confidence: float) -> tuple[float, float]:
    """The interval `iv` would have on n questions with the same means, correlation and spread.

    The score part is recomputed at n (Wilson's width does not shrink like 1/sqrt(n) near 0
    or 100, so it is not extrapolated); the bootstrap part's distance from the estimate is
    scaled by sqrt(iv.n / n), as a standard error is.
    """
    est, shrink = iv.estimate, math.sqrt(iv.n / n)
    if len(iv.means) == 2:
        score = newcombe(n, iv.means[0], iv.means[1], iv.cov, iv.sd_product, confidence)
    else:
        lo, hi = wilson(iv.means[0] / SCALE * n, n, confidence)
        score = (lo * SCALE, hi * SCALE)
    boot = (est - (est - iv.bootstrap[0]) * shrink, est + (iv.bootstrap[1] - est) * shrink)
    return min(boot[0], score[0]), max(boot[1], score[1])


MAX_QUESTIONS = 1_000_000


def questions_to_decide(iv: Interval, threshold: float, higher_is_better: bool,
                        confidence: float) -> int | None:
    """Roughly how many questions would put the whole interval on one side of `threshold`.

    Method: keep what was observed (the means, their correlation, the bootstrap's spread)
    and find the smallest n whose projected interval (project) no longer straddles the
    threshold; exponential search, then bisection (the projected interval only narrows as
    n grows). A guide, not a promise: the effect itself moves as questions are added.
    None when the estimate sits on the threshold (no number of questions decides that) or
    beyond MAX_QUESTIONS.
    """
    def decided(n: int) -> bool:
        low, high = project(iv, n, confidence)
        if higher_is_better:
            return low >= threshold or high < threshold
        return high <= threshold or low > threshold

    if abs(iv.estimate - threshold) < 1e-9:
        return None
    lo, hi = iv.n, iv.n + 1
    while not decided(hi):
        lo, hi = hi, hi * 2
        if hi > MAX_QUESTIONS:
            return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if decided(mid) else (mid, hi)
    return hi
