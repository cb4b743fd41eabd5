"""A line search satisfying the strong Wolfe conditions (Nocedal & Wright, *Numerical
Optimization*, 2nd ed., Algorithms 3.5 and 3.6), on scalars.

Along a descent direction d from x, ``phi(t) = f(x + t*d)`` and ``phi'(t) = grad f(x + t*d) . d``.
A step t > 0 satisfies the strong Wolfe conditions when

- sufficient decrease (Armijo): ``phi(t) <= phi(0) + c1 * t * phi'(0)``, and
- curvature: ``|phi'(t)| <= c2 * |phi'(0)|``,

with ``0 < c1 < c2 < 1``. The defaults are the book's for quasi-Newton methods: ``c1 = 1e-4``
(almost any decrease will do) and ``c2 = 0.9`` (the slope must shrink by 10%, which is what
keeps every (s, y) pair of BFGS at positive curvature: ``y.s >= (c2 - 1) t phi'(0) > 0``).

The search has two phases. *Bracketing* (Algorithm 3.5) tries ``t0`` and then longer steps
until one satisfies both conditions, or an interval is known to contain such a step (the
new step breaks sufficient decrease, is no better than the previous one, or has a
non-negative slope). Each longer step is the minimiser of the cubic through the last two
trials, kept between ``2*t_i - t_(i-1)`` (the last increment at least repeated) and
``t_i + 10*(t_i - t_(i-1))`` and at most ``t_max``. *Zoom* (Algorithm 3.6) then shrinks
that interval: each trial is the minimiser of the cubic that matches phi and phi' at both
ends (N&W eq. 3.59), kept at least 10% of the interval's width from either end (bisection
when the cubic has no minimiser there), so the interval shrinks by 10% or more every trial.

Limits: at most ``max_evaluations`` evaluations in all (25), and zoom gives up once its
interval is narrower than ``t_tolerance`` times its larger end (distinct steps that close
change nothing in the parameters' precision). A trial whose phi or phi' is not finite counts
as too long a step. When the search stops without a strong Wolfe step it returns the best
step that satisfied sufficient decrease (``converged`` False), or t = 0 when there is none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

__all__ = ["LineSearchResult", "strong_wolfe", "C1", "C2", "MAX_EVALUATIONS"]

C1 = 1e-4
C2 = 0.9
MAX_EVALUATIONS = 25
# Extrapolation: the next increment is between 1 and 10 times the last one.
_GROW_MIN, _GROW_MAX = 1.0, 10.0
# Zoom's trials stay this fraction of the interval's width away from either end.
_MARGIN = 0.1


@dataclass(frozen=True)
class LineSearchResult:
    """The step a line search chose, with what it knew there.

    ``t`` the step (0.0 when no trial decreased phi enough); ``f`` and ``slope`` phi(t) and
    phi'(t); ``f0`` and ``slope0`` phi(0) and phi'(0); ``evaluations`` the number of calls of
    phi; ``converged`` whether t satisfies both strong Wolfe conditions; ``last`` whether t
    was the last step evaluated (so that whatever phi left behind, the gradient at the
    trial point, belongs to t)."""

    t: float
    f: float
    slope: float
    f0: float
    slope0: float
    evaluations: int
    converged: bool
    last: bool


def _cubic_minimizer(a: float, fa: float, ga: float, b: float, fb: float, gb: float) -> float:
    """The minimiser of the cubic with values fa, fb and slopes ga, gb at a and b (N&W eq.
    3.59), or NaN when it has none (or the data are not finite)."""
    if a == b:
        return math.nan
    d1 = ga + gb - 3 * (fa - fb) / (a - b)
    disc = d1 * d1 - ga * gb
    if not (disc >= 0 and math.isfinite(disc)):
        return math.nan
    d2 = math.copysign(math.sqrt(disc), b - a)
    den = gb - ga + 2 * d2
    if den == 0:
        return math.nan
    return b - (b - a) * (gb + d2 - d1) / den


def _check(name: str, v, low: float, high: float) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"strong_wolfe: {name} must be a real number, got {type(v).__name__}")
    v = float(v)
    if not (low < v < high):
        raise ValueError(f"strong_wolfe: {name} must be in ({low:g}, {high:g}), got {v}")
    return v


def strong_wolfe(phi: Callable[[float], tuple[float, float]], f0: float, slope0: float, t0: float = 1.0, *,
                 c1: float = C1, c2: float = C2, t_max: float = 1e10, max_evaluations: int = MAX_EVALUATIONS,
                 t_tolerance: float = 1e-9) -> LineSearchResult:
    """A step satisfying the strong Wolfe conditions along a descent direction.

    ``phi(t)`` returns ``(phi(t), phi'(t))``; ``f0`` and ``slope0`` are phi(0) and phi'(0)
    (``slope0 < 0``); ``t0`` the first trial. See the module's docstring for the algorithm,
    its constants and its limits.
    """
    c1 = _check("c1", c1, 0.0, 1.0)
    c2 = _check("c2", c2, c1, 1.0)
    t0 = _check("t0", t0, 0.0, math.inf)
    t_max = _check("t_max", t_max, 0.0, math.inf)
    if isinstance(max_evaluations, bool) or not isinstance(max_evaluations, int) or max_evaluations < 1:
        raise ValueError(f"strong_wolfe: max_evaluations must be an int >= 1, got {max_evaluations!r}")
    if not (math.isfinite(f0) and slope0 < 0 and math.isfinite(slope0)):
        raise ValueError(f"strong_wolfe: need a finite phi(0) and a finite phi'(0) < 0, got {f0} and {slope0}")

    evaluations = 0
    last_t = None

    def trial(t: float) -> tuple[float, float, bool]:
        """phi and phi' at t, and whether they are usable (both finite)."""
        nonlocal evaluations, last_t
        evaluations += 1
        last_t = t
        f, g = phi(t)
        f, g = float(f), float(g)
        return f, g, math.isfinite(f) and math.isfinite(g)

    def armijo(t: float, f: float) -> bool:
        return f <= f0 + c1 * t * slope0

    def curvature(g: float) -> bool:
        return abs(g) <= -c2 * slope0

    def result(t, f, g, converged):
        return LineSearchResult(t, f, g, f0, slope0, evaluations, converged, t == last_t)

    def zoom(lo, f_lo, g_lo, hi, f_hi, g_hi, hi_ok) -> LineSearchResult:
        # Invariants (N&W 3.6): lo satisfies sufficient decrease and has the lowest phi of
        # the trials so far that do; phi'(lo) * (hi - lo) < 0, so a strong Wolfe step lies
        # between lo and hi.
        while evaluations < max_evaluations:
            width = abs(hi - lo)
            if width <= t_tolerance * max(abs(lo), abs(hi)):
                break
            left, right = min(lo, hi), max(lo, hi)
            t = _cubic_minimizer(lo, f_lo, g_lo, hi, f_hi, g_hi) if hi_ok else math.nan
            if not (left + _MARGIN * width <= t <= right - _MARGIN * width):
                t = t if math.isfinite(t) and left < t < right else 0.5 * (lo + hi)
                t = min(max(t, left + _MARGIN * width), right - _MARGIN * width)
            f, g, ok = trial(t)
            if not ok or not armijo(t, f) or f >= f_lo:
                hi, f_hi, g_hi, hi_ok = t, f, g, ok
                continue
            if curvature(g):
                return result(t, f, g, True)
            if g * (hi - lo) >= 0:
                hi, f_hi, g_hi, hi_ok = lo, f_lo, g_lo, True
            lo, f_lo, g_lo = t, f, g
        return result(lo, f_lo, g_lo, False) if lo > 0 else result(0.0, f0, slope0, False)

    prev, f_prev, g_prev = 0.0, f0, slope0
    t = min(t0, t_max)
    while True:
        f, g, ok = trial(t)
        if not ok or not armijo(t, f) or (prev > 0 and f >= f_prev):
            return zoom(prev, f_prev, g_prev, t, f, g, ok)
        if curvature(g):
            return result(t, f, g, True)
        if g >= 0:
            return zoom(t, f, g, prev, f_prev, g_prev, True)
        if evaluations >= max_evaluations or t >= t_max:
            return result(t, f, g, False)
        step = t - prev
        low, high = t + _GROW_MIN * step, min(t + _GROW_MAX * step, t_max)
        nxt = _cubic_minimizer(prev, f_prev, g_prev, t, f, g)
        nxt = high if not math.isfinite(nxt) else min(max(nxt, low), high)
        prev, f_prev, g_prev = t, f, g
        t = nxt
