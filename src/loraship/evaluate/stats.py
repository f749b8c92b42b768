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

Sampled scores (compare.samples = k > 0: each question's score is the share of k answers,
sampled at the served temperature, that are right) are fractions with far less spread than
right/wrong, and Newcombe's interval, built on Wilson's variance p(1-p), would hide exactly
that. A paired difference of sampled scores gets Student's t on the observed spread of the
per-question differences instead. Both sides are sampled with the same seeds (common random
numbers: two similar models draw similar answers from the same seed), which is what makes
those differences small, so the spread is taken as observed, never narrower than one sample's
difference on one question (sd 1/(k sqrt(n))): a run where every question came out the same
still gets a width. Levels (one tag's mean) keep Wilson's interval: they are reported, not
gated, and erring wide there costs nothing. The bootstrap part is the same percentile
bootstrap over questions.

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
    samples: int = 0  # k of sampled scores (Student's t score part); 0: Wilson / Newcombe
    sd: float = 0.0  # the spread the t part used (fraction), kept for project()

    @property
    def estimate(self) -> float:
        return self.means[1] - self.means[0] if len(self.means) == 2 else self.means[0]

    def to_json(self) -> dict:
        r = _round
        return {"low": r(self.low), "high": r(self.high),
                "bootstrap": [r(self.bootstrap[0]), r(self.bootstrap[1])],
                "score": [r(self.score[0]), r(self.score[1])],
                "n": self.n, "means": [r(m) for m in self.means],
                "cov": round(self.cov, 6), "sd_product": round(self.sd_product, 6),
                "samples": self.samples, "sd": round(self.sd, 6)}

    @classmethod
    def from_json(cls, d: dict) -> Interval:
        return cls(d["low"], d["high"], tuple(d["bootstrap"]), tuple(d["score"]), d["n"],
                   tuple(d["means"]), d.get("cov", 0.0), d.get("sd_product", 0.0),
                   d.get("samples", 0), d.get("sd", 0.0))

    def negated(self) -> Interval:
        """The interval of a - b: the old-knowledge loss is minus the old-knowledge change.
        Newcombe's interval is symmetric in this: swapping the two means negates it."""
        b, s = self.bootstrap, self.score
        return Interval(-self.high, -self.low, (-b[1], -b[0]), (-s[1], -s[0]), self.n,
                        self.means[::-1], self.cov, self.sd_product, self.samples, self.sd)


def _round(v: float) -> float:
    return round(float(v), 2) + 0.0  # + 0.0 turns -0.0 into 0.0


def z_value(confidence: float) -> float:
    """Two-sided normal quantile: 1.96 for 0.95."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _incomplete_beta(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b) by Lentz's continued fraction (Numerical Recipes 6.4)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x)
                     + b * math.log1p(-x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2:
            num = -((a + m) * (a + b + m) * x) / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            num = (m * (b - m) * x) / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-12:
            break
    return front * (f - 1.0)


def t_value(confidence: float, df: int) -> float:
    """Two-sided Student t quantile (2.045 for 0.95 and 29 degrees of freedom), exact to 1e-9:
    bisection on the t distribution's tail, P(|T| > t) = I_{df/(df+t^2)}(df/2, 1/2). No scipy."""
    alpha = 1.0 - confidence
    z_value(confidence)  # the same check of `confidence`
    v = float(max(df, 1))
    lo, hi = 0.0, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        if _incomplete_beta(v / 2, 0.5, v / (v + mid * mid)) > alpha:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-10:
            break
    return (lo + hi) / 2


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


# ---------------------------------------------------------------- sampled scores


def t_interval(values: np.ndarray, floor_sd: float, confidence: float,
               bounds: tuple[float, float]) -> tuple[tuple[float, float], float]:
    """Student's t interval (points) of the mean of `values` (points), with the spread taken
    no smaller than floor_sd (fraction); returns the interval and the spread used."""
    arr = values / SCALE
    sd = max(float(arr.std(ddof=1)) if arr.size > 1 else 0.0, floor_sd)
    half = t_value(confidence, arr.size - 1) * sd / math.sqrt(arr.size)
    m = float(arr.mean())
    return (max(bounds[0], m - half) * SCALE, min(bounds[1], m + half) * SCALE), sd


def resolution_sd(samples: int, n: int) -> float:
    """The spread (fraction) of one sample's difference on one of n questions: the finest
    change k samples can show, so the narrowest a sampled difference's interval may claim."""
    if samples < 1 or n < 1:
        raise ValueError("a resolution needs samples >= 1 and n >= 1")
    return 1.0 / (samples * math.sqrt(n))


# ---------------------------------------------------------------- what the gate uses


def mean_interval(values, confidence: float, resamples: int, seed: int) -> Interval:
    """Interval of the mean of per-question scores (Wilson's score part errs wide on shares)."""
    arr = _as_array(values)
    boot = bootstrap_mean(arr, confidence, resamples, seed)
    score = score_mean(arr, confidence)
    return Interval(min(boot[0], score[0]), max(boot[1], score[1]), boot, score, arr.size,
                    (float(arr.mean()),))


def paired_difference(parent, candidate, confidence: float, resamples: int, seed: int,
                      samples: int = 0) -> Interval:
    """Interval of mean(candidate - parent) over the same questions; `samples` = k for shares
    of k sampled answers (both sides drawn with the same seeds)."""
    p, c = _as_array(parent), _as_array(candidate)
    if p.size != c.size:
        raise ValueError("paired scores need the same questions on both sides")
    boot = bootstrap_mean(c - p, confidence, resamples, seed)
    sd = 0.0
    if samples:
        score, sd = t_interval(c - p, resolution_sd(samples, p.size), confidence, (-1.0, 1.0))
    else:
        score = score_paired_difference(p, c, confidence)
    return Interval(min(boot[0], score[0]), max(boot[1], score[1]), boot, score, p.size,
                    (float(p.mean()), float(c.mean())), *_moments(p / SCALE, c / SCALE),
                    samples=samples, sd=sd)


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
    if iv.samples:  # Student's t on the same spread
        half = t_value(confidence, n - 1) * iv.sd / math.sqrt(n) * SCALE
        score = (max(-SCALE, est - half), min(SCALE, est + half))
    elif len(iv.means) == 2:
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
