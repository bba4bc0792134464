"""What a larger corpus would find: an extreme-value model of the per-sample maxima.

Each sample is a block: its maximum |a| over the points that count for the global max is one observation.
The maximum over a corpus of N samples is the maximum of N such observations, so its distribution is F^N
where F is the distribution of one sample's maximum. This module fits F's upper tail and reports, for each N,
the median of the maximum over N samples (the value a corpus of N samples exceeds with probability 1/2) with
a 90% profile-likelihood interval, the shape with its interval, the finite upper endpoint where the shape is
negative, a goodness-of-fit statistic and the share of samples at a structural peak.

Massive activations put a point mass in F: many samples reach exactly the same peak (often at their first
token). That atom is taken out before fitting and kept as a mixture weight p at the value s:
F(x) = p 1[x >= s] + (1 - p) G(x), G fitted to the other samples. Two models of G:

* ``gpd`` (default): peaks over a threshold. The largest ``tail_fraction`` of the other samples (at least
  ``min_exceedances``) are fitted by a generalized Pareto distribution above the threshold u; the exceedance
  rate is taken as known. Only the tail enters the fit.
* ``gev``: a generalized extreme-value distribution fitted to all the other samples (each sample a block).

Fits use scipy.stats (``genpareto.fit``, ``genextreme.fit``) from explicit starting values; intervals profile
the log-likelihood with scipy.optimize. scipy's GEV shape is ``c = -xi`` (scipy#3276); every shape reported
here is ``xi`` (xi > 0: heavy tail, no upper bound; xi < 0: a finite upper endpoint).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import optimize, stats

__all__ = ["DEFAULT_SIZES", "METHODS", "ExtremesError", "covers", "fit_extremes", "median_max_true", "structural_atom"]

DEFAULT_SIZES = (20_000, 100_000, 1_000_000)
METHODS = ("gpd", "gev")
LEVEL = 0.90
CHI2 = float(stats.chi2.ppf(LEVEL, 1))  # 2.7055: the profile-likelihood drop of a 90% interval


class ExtremesError(ValueError):
    """The per-sample maxima cannot be fitted (too few, not finite); the message says why and what to do."""


# --------------------------------------------------------------------------- the structural atom

def structural_atom(m: np.ndarray, min_share: float = 0.05) -> tuple[float | None, int]:
    """``(value, count)`` of the most frequent exact value among the upper half of ``m`` when it holds at least
    ``min_share`` of all samples and at least five times as frequent as its neighbouring values, else ``(None, 0)``.
    A massive activation reaching the same value on many samples is such an atom; ties from rounding (bf16 keeps 8
    significant bits) are spread over neighbouring values alike and do not stand out."""
    m = np.asarray(m, dtype=float)
    upper = m[m >= np.median(m)]
    if upper.size == 0:
        return None, 0
    vals, counts = np.unique(upper, return_counts=True)
    i = int(np.argmax(counts[::-1]))  # the largest value among equally frequent ones
    i = len(vals) - 1 - i
    # rounding (bf16 keeps 8 significant bits) gives a smooth run of tied values; a structural peak stands out:
    # at least five times as frequent as the median of its ten neighbouring values on each side
    neighbours = np.concatenate([counts[max(0, i - 10):i], counts[i + 1:i + 11]])
    stands_out = counts[i] >= 5 * max(1.0, float(np.median(neighbours))) if neighbours.size else True
    if counts[i] >= max(5, math.ceil(min_share * len(m))) and stands_out:
        return float(vals[i]), int(counts[i])
    return None, 0


# --------------------------------------------------------------------------- the two tail models

def _q_level(n: float, p_atom: float) -> float:
    """The quantile of G that the median of the max over n samples sits at, above the atom."""
    return (0.5 ** (1.0 / n) - p_atom) / (1.0 - p_atom)


@dataclass
class _Gpd:
    """Generalized Pareto above threshold u, for the excesses y = x - u; rate = P(X > u)."""

    y: np.ndarray
    u: float
    rate: float

    n_par = 2

    def nll(self, xi: float, sigma: float) -> float:
        # the generalized Pareto log-density written out (scipy's logpdf is ten times slower inside profiles)
        if not (sigma > 0 and np.isfinite(sigma) and np.isfinite(xi)):
            return np.inf
        z = self.y / sigma
        if abs(xi) < 1e-9:
            return float(self.y.size * math.log(sigma) + z.sum())
        t = 1.0 + xi * z
        if np.any(t <= 0):
            return np.inf
        return float(self.y.size * math.log(sigma) + (1.0 + 1.0 / xi) * np.log(t).sum())

    def fit(self) -> tuple[float, float]:
        # starting values by the method of moments (scipy's own start can fail for xi < 0)
        mean, var = float(np.mean(self.y)), float(np.var(self.y))
        xi0 = float(np.clip(0.5 * (1 - mean * mean / var), -0.45, 0.45)) if var > 0 else 0.0
        s0 = max(mean * (1 - xi0), 1e-12)
        best = None
        for start in ((xi0, s0), (0.0, mean), (-0.2, mean * 1.2)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    xi, _, sigma = stats.genpareto.fit(self.y, start[0], loc=0.0, scale=start[1], floc=0.0)
                except Exception:  # noqa: BLE001 - a failed start is tried from the next one
                    continue
            v = self.nll(xi, sigma)
            if np.isfinite(v) and (best is None or v < best[0]):
                best = (v, float(xi), float(sigma))
        if best is None:
            raise ExtremesError("the generalized Pareto fit failed from every starting value")
        return best[1], best[2]

    def quantile(self, q: float, xi: float, sigma: float) -> float:
        """G^{-1}(q) of the whole distribution: above u, P(X > x) = rate * S_gpd(x - u)."""
        tail = (1.0 - q) / self.rate
        if tail >= 1:
            return self.u  # inside the body: the threshold is the best the tail model says
        return self.u + float(stats.genpareto.isf(tail, xi, scale=sigma))

    def sigma_for_level(self, z: float, xi: float, q: float) -> float:
        """The scale that puts G^{-1}(q) at z for shape xi."""
        t = (1.0 - q) / self.rate
        d = z - self.u
        if abs(xi) < 1e-9:
            return d / -math.log(t)
        return d * xi / (t ** (-xi) - 1.0)

    def cdf(self, x, xi, sigma):
        return stats.genpareto.cdf(x, xi, scale=sigma)


@dataclass
class _Gev:
    """Generalized extreme value for the whole (non-atom) sample; scipy's shape c = -xi."""

    x: np.ndarray

    n_par = 3

    def nll(self, xi: float, sigma: float, mu: float) -> float:
        # the GEV log-density written out in xi (scipy's logpdf is ten times slower inside profiles)
        if not (sigma > 0 and np.isfinite(sigma) and np.isfinite(mu) and np.isfinite(xi)):
            return np.inf
        z = (self.x - mu) / sigma
        n = self.x.size
        if abs(xi) < 1e-9:
            return float(n * math.log(sigma) + z.sum() + np.exp(-z).sum())
        t = 1.0 + xi * z
        if np.any(t <= 0):
            return np.inf
        lt = np.log(t)
        return float(n * math.log(sigma) + (1.0 + 1.0 / xi) * lt.sum() + np.exp(-lt / xi).sum())

    def fit(self) -> tuple[float, float, float]:
        x = self.x
        s0 = float(np.std(x)) * math.sqrt(6) / math.pi or 1e-12  # Gumbel moments as the start
        m0 = float(np.mean(x)) - 0.5772 * s0
        best = None
        for xi0 in (0.0, -0.2, 0.2):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    c, mu, sigma = stats.genextreme.fit(x, -xi0, loc=m0, scale=s0)
                except Exception:  # noqa: BLE001
                    continue
            v = self.nll(-c, sigma, mu)
            if np.isfinite(v) and (best is None or v < best[0]):
                best = (v, float(-c), float(sigma), float(mu))
        if best is None:
            raise ExtremesError("the generalized extreme-value fit failed from every starting value")
        return best[1], best[2], best[3]

    def quantile(self, q: float, xi: float, sigma: float, mu: float) -> float:
        return float(stats.genextreme.ppf(q, -xi, loc=mu, scale=sigma))

    def mu_for_level(self, z: float, xi: float, sigma: float, q: float) -> float:
        y = -math.log(q)
        if abs(xi) < 1e-9:
            return z + sigma * math.log(y)
        return z - sigma / xi * (y ** (-xi) - 1.0)

    def cdf(self, x, xi, sigma, mu):
        return stats.genextreme.cdf(x, -xi, loc=mu, scale=sigma)


# --------------------------------------------------------------------------- profile likelihood

def _min_nll(fun, x0: Sequence[float]) -> tuple[float, np.ndarray]:
    """Minimum of ``fun`` over the free parameters, started at ``x0`` (scipy's Nelder-Mead or bounded Brent)."""
    x0 = np.asarray(x0, dtype=float)
    if x0.size == 1:
        lo, hi = -0.95, 1.5
        r = optimize.minimize_scalar(lambda v: fun(np.array([v])), bounds=(lo, hi), method="bounded",
                                     options={"xatol": 1e-6})
        return float(r.fun), np.array([r.x])
    r = optimize.minimize(fun, x0, method="Nelder-Mead", options={"xatol": 1e-6, "fatol": 1e-6, "maxiter": 1500})
    return float(r.fun), np.asarray(r.x)


class _WarmStart:
    """A profile's free parameters started where the nearest profile point already evaluated ended: neighbouring
    points have neighbouring optima, so Nelder-Mead converges in a few dozen steps instead of thousands."""

    def __init__(self, x0):
        self.points: list[tuple[float, np.ndarray]] = []
        self.x0 = np.asarray(x0, dtype=float)

    def __call__(self, value: float, fun) -> float:
        start = min(self.points, key=lambda p: abs(p[0] - value))[1] if self.points else self.x0
        best, x = _min_nll(fun, start)
        if not np.isfinite(best) and self.points:  # a bad start near a boundary: try from the MLE
            best, x = _min_nll(fun, self.x0)
        if np.isfinite(best):
            self.points.append((value, x))
        return best


def _profile_interval(profile, est: float, nll_hat: float, scale: float, lower_bound: float | None = None,
                      upper_bound: float | None = None) -> tuple[float | None, float | None]:
    """Where ``profile(value) - nll_hat`` reaches CHI2 / 2 on each side of ``est``: scipy's brentq between the
    estimate and a point found by stepping out geometrically. None where the profile never drops that far
    inside the bounds (an interval open on that side)."""
    target = CHI2 / 2.0

    def g(v):
        p = profile(v)
        return (p - nll_hat - target) if np.isfinite(p) else 1e6

    out = []
    for direction, bound in ((-1, lower_bound), (1, upper_bound)):
        step = max(scale, 1e-12)
        a = est
        found = None
        for _ in range(60):
            b = est + direction * step
            if bound is not None and (b - bound) * direction >= 0:
                b = bound - direction * 1e-9 * max(1.0, abs(bound))
                if g(b) > 0:
                    found = (a, b)
                break
            if g(b) > 0:
                found = (a, b)
                break
            a, step = b, step * 1.8
        if found is None:
            out.append(None)
            continue
        try:
            out.append(float(optimize.brentq(g, *sorted(found), xtol=1e-10 * max(1.0, abs(est)), rtol=1e-10)))
        except ValueError:
            out.append(None)
    return out[0], out[1]


# --------------------------------------------------------------------------- the fit

def fit_extremes(m, sizes: Sequence[int] = DEFAULT_SIZES, method: str = "gpd", *, tail_fraction: float = 0.1,
                 min_exceedances: int = 50, atom_share: float = 0.05, intervals: bool = True) -> dict:
    """Fit the per-sample maxima ``m`` and predict the median of the maximum over each corpus size in ``sizes``.

    Returns the JSON document of ``maxact extremes`` (``return_levels``, ``shape``, ``endpoint``,
    ``structural_share``, ``gof``, ``method``, plus what the fit used)."""
    # the optimisers probe parameters where the density is zero or overflows: those evaluations are inf, by design
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return _fit(m, sizes, method, tail_fraction, min_exceedances, atom_share, intervals)


def _fit(m, sizes, method, tail_fraction, min_exceedances, atom_share, intervals) -> dict:
    if method not in METHODS + ("auto",):
        raise ExtremesError(f"unknown method {method!r}; choose one of {list(METHODS) + ['auto']}")
    if not 0 < tail_fraction <= 1:
        raise ExtremesError(f"tail_fraction must be in (0, 1], got {tail_fraction}")
    m = np.asarray(m, dtype=float)
    n_in = m.size
    m = m[np.isfinite(m)]
    if m.size < 20:
        raise ExtremesError(f"{m.size} finite per-sample maxima ({n_in - m.size} not finite): an extreme-value fit "
                            f"needs at least 20 samples; measure more samples")
    sizes = [int(s) for s in sizes]
    if any(s < 1 for s in sizes):
        raise ExtremesError(f"corpus sizes must be positive integers, got {sizes}")
    n = m.size
    s_atom, k_atom = structural_atom(m, atom_share)
    p = k_atom / n
    rest = m[m != s_atom] if s_atom is not None else m
    doc: dict = {"method": None, "n_samples": int(n), "n_not_finite": int(n_in - n), "observed_max": float(m.max()),
                 "structural_share": float(p), "structural_peak": s_atom,
                 "interval": {"level": LEVEL, "kind": "profile likelihood"}}
    # Exact repeats: a per-sample maximum that is a function of a discrete input (a massive activation at the first
    # token takes one value per first token) repeats exactly; then the maximum over more samples is the maximum over
    # the first tokens they bring, and a continuous tail model can overstate it. Said, not hidden.
    _, counts = np.unique(m, return_counts=True)
    repeated = float(counts[counts > 1].sum() / n)
    doc["ties"] = {"distinct_values": int(counts.size), "share_of_samples_repeating_a_value": repeated}
    doc["warnings"] = []
    if repeated > 0.5:
        doc["warnings"].append(
            f"{100 * repeated:.0f}% of the samples share their maximum exactly with another sample ({counts.size} "
            f"distinct values in {n}): the maximum looks like a function of a discrete input (a massive activation at "
            f"the first token takes one value per first token); a continuous tail model may overstate what more "
            f"samples find (if the values are bf16, rounding alone makes ties)")

    if method == "auto":  # the tail alone where there are enough samples for it, else every sample
        method = "gpd" if rest.size > max(min_exceedances, int(math.ceil(tail_fraction * rest.size))) else "gev"
    doc["model"] = method
    if method == "gpd":
        k = max(min_exceedances, int(math.ceil(tail_fraction * rest.size)))
        if rest.size < k + 1:
            raise ExtremesError(f"{rest.size} samples outside the structural peak: peaks over a threshold need more "
                                f"than {k}; use --method gev or measure more samples")
        srt = np.sort(rest)
        u = float(srt[-(k + 1)])
        y = srt[-k:] - u
        y = y[y > 0]
        model = _Gpd(y=y, u=u, rate=y.size / rest.size)  # P(X > u) under G: the samples outside the atom
        xi, sigma = model.fit()
        hat = (xi, sigma)
        nll_hat = model.nll(xi, sigma)
        doc["method"] = (f"peaks over threshold: generalized Pareto (scipy.stats.genpareto, MLE) fitted to the {y.size} "
                         f"largest per-sample maxima outside the structural peak (threshold {u:.6g}, exceedance rate among them "
                         f"{model.rate:.4g}); intervals by profile likelihood")
        doc["threshold"] = u
        doc["n_exceedances"] = int(y.size)
        sc = sigma

        def quantile(q, th):
            return model.quantile(q, *th)

        def level_profile(z, q):
            def f(v):
                s = model.sigma_for_level(z, float(v[0]), q)
                return model.nll(float(v[0]), s) if s > 0 else np.inf
            return _min_nll(f, [xi])[0]

        def shape_profile(x):
            r = optimize.minimize_scalar(lambda ls: model.nll(x, math.exp(ls)), method="bounded",
                                         bounds=(math.log(sigma) - 8, math.log(sigma) + 8))
            return float(r.fun)

        def endpoint_of(th):
            return u - th[1] / th[0] if th[0] < 0 else None

        def endpoint_profile(e):
            # over log(-xi): a far endpoint needs xi near -sigma / (e - u), which a linear search in xi misses
            r = optimize.minimize_scalar(lambda lv: model.nll(-math.exp(lv), (e - u) * math.exp(lv)),
                                         bounds=(math.log(1e-9), math.log(0.999)), method="bounded",
                                         options={"xatol": 1e-6})
            return float(r.fun)

        gof_x, gof_cdf = y, (lambda v: model.cdf(v, *hat))
        lower_support = u
    else:
        model = _Gev(x=rest)
        xi, sigma, mu = model.fit()
        hat = (xi, sigma, mu)
        nll_hat = model.nll(*hat)
        doc["method"] = (f"block maxima (each sample a block): generalized extreme value (scipy.stats.genextreme, MLE, "
                         f"shape reported as xi = -c) fitted to the {rest.size} per-sample maxima outside the structural "
                         f"peak; intervals by profile likelihood")
        doc["location"] = mu
        sc = sigma

        def quantile(q, th):
            return model.quantile(q, *th)

        warm_levels: dict = {}

        def level_profile(z, q):
            def f(v):
                x, ls = float(v[0]), float(v[1])
                s = math.exp(ls)
                return model.nll(x, s, model.mu_for_level(z, x, s, q))
            return warm_levels.setdefault(q, _WarmStart([xi, math.log(sigma)]))(z, f)

        warm_shape = _WarmStart([math.log(sigma), mu])

        def shape_profile(x):
            return warm_shape(x, lambda v: model.nll(x, math.exp(float(v[0])), float(v[1])))

        def endpoint_of(th):
            return th[2] - th[1] / th[0] if th[0] < 0 else None

        warm_end = _WarmStart([min(xi, -1e-3), math.log(sigma)])

        def endpoint_profile(e):
            def f(v):
                x, ls = float(v[0]), float(v[1])
                if x >= 0:
                    return np.inf
                s = math.exp(ls)
                return model.nll(x, s, e + s / x)
            return warm_end(e, f)

        gof_x, gof_cdf = rest, (lambda v: model.cdf(v, *hat))
        lower_support = -np.inf

    doc["sigma"] = float(sigma)

    def level(nn: int, th) -> float:
        """Median of the max over nn samples under the mixture (atom p at s, tail model th)."""
        q = _q_level(nn, p)
        if q <= 0:  # the atom alone makes the median
            return float(s_atom)
        z = quantile(q, th)
        if s_atom is not None and z < s_atom:
            # below the atom, F(x) = (1 - p) G(x): the median is s unless (1 - p) G reaches 0.5^(1/n) first
            q_low = 0.5 ** (1.0 / nn) / (1.0 - p)
            z_low = quantile(q_low, th) if q_low < 1 else math.inf
            return float(min(z_low, s_atom)) if z_low < s_atom else float(s_atom)
        return float(z)

    rls = []
    for nn in sizes:
        est = level(nn, hat)
        row = {"n_samples": nn, "estimate": est, "lower": None, "upper": None}
        q = _q_level(nn, p)
        at_atom = s_atom is not None and est == s_atom
        if intervals and not at_atom and q > 0:
            lo, hi = _profile_interval(lambda z: level_profile(z, q), est, nll_hat, scale=0.05 * sc + 1e-9 * abs(est),
                                       lower_bound=lower_support if np.isfinite(lower_support) else None)
            if s_atom is not None and lo is not None:
                lo = max(lo, s_atom)  # the max over n samples that all but surely hit the atom is at least s
            row["lower"], row["upper"] = lo, hi
        elif at_atom:
            # the median is the peak, but the tail's quantile may lie above it within the interval
            row["lower"], row["upper"] = float(s_atom), float(s_atom)
            if intervals and q > 0:
                zc = quantile(q, hat)
                _, hi_c = _profile_interval(lambda z: level_profile(z, q), zc, nll_hat,
                                            scale=0.05 * sc + 1e-9 * abs(zc),
                                            lower_bound=lower_support if np.isfinite(lower_support) else None)
                row["upper"] = None if hi_c is None else max(float(s_atom), hi_c)
            row["note"] = "the structural peak: the tail model puts the median below it"
        rls.append(row)
    doc["return_levels"] = rls

    shape = {"estimate": float(xi), "lower": None, "upper": None}
    if intervals:
        shape["lower"], shape["upper"] = _profile_interval(shape_profile, xi, nll_hat, scale=0.05, lower_bound=-0.999,
                                                           upper_bound=3.0)
    doc["shape"] = shape

    e = endpoint_of(hat)
    if e is None:
        doc["endpoint"] = None
    else:
        ep = {"estimate": float(e), "lower": None, "upper": None}
        if intervals:
            lo, hi = _profile_interval(endpoint_profile, e, nll_hat, scale=0.05 * sc,
                                       lower_bound=float(np.max(gof_x if method == "gev" else y + u)))
            if shape["upper"] is None or shape["upper"] >= 0:
                hi = None  # the shape's interval reaches 0: the data cannot rule out an unbounded tail
            ep["lower"], ep["upper"] = lo, hi  # upper None: the data cannot rule out an unbounded tail
        if s_atom is not None and e < s_atom:
            ep["note"] = "below the structural peak: the peak itself bounds the maximum"
        doc["endpoint"] = ep

    ks = stats.kstest(gof_x, gof_cdf)
    doc["gof"] = {"statistic": "Kolmogorov-Smirnov D of the fitted model against the values it was fitted to",
                  "ks_d": float(ks.statistic), "ks_pvalue_nominal": float(ks.pvalue),
                  "note": "the p-value ignores that the parameters were fitted to the same data (it is optimistic)",
                  "n": int(len(gof_x))}
    return doc


def covers(row: dict, value: float) -> bool:
    """Whether ``value`` lies in a return level's 90% interval (a missing end is open)."""
    lo = -math.inf if row.get("lower") is None else row["lower"]
    hi = math.inf if row.get("upper") is None else row["upper"]
    return bool(lo <= value <= hi)


# --------------------------------------------------------------------------- synthetic truth

def median_max_true(n: int, dist, p_atom: float = 0.0, atom: float | None = None) -> float:
    """The true median of the maximum over n samples of the mixture p_atom * delta(atom) + (1 - p_atom) * dist
    (a frozen scipy distribution): the reference the coverage tests hold the estimates against."""
    q = (0.5 ** (1.0 / n) - p_atom) / (1.0 - p_atom)
    if q <= 0:
        return float(atom)
    z = float(dist.ppf(q))
    if atom is not None and z < atom:
        q_low = 0.5 ** (1.0 / n) / (1.0 - p_atom)
        z_low = float(dist.ppf(q_low)) if q_low < 1 else math.inf
        return min(z_low, atom) if z_low < atom else float(atom)
    return z
