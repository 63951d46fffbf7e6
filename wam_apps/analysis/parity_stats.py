"""Statistics of a sim-to-real parity study (pure numpy; no ROS, no files).

- :func:`wilson` — Wilson score interval of a success rate.
- :func:`pearson`, :func:`mmrv` — SIMPLER's two judges of a sim eval over a set of policies
  (arXiv 2405.05941; ``simpler_env/utils/metrics.py``): Pearson r between the policies' sim and
  real success rates, and the Mean Maximum Rank Violation
  ``MMRV = 1/N Σ_i max_j |R_i − R_j| · 1[(S_i > S_j) ≠ (R_i > R_j)]`` (S sim, R real; lower is
  better, 0 = the sim orders every pair as the real world does). Ties follow SIMPLER's code: a pair
  tied in one world and not in the other counts once, for the member that is ahead in the other.
- :func:`bootstrap_parity` — seeded percentile-bootstrap 95 % intervals of both, resampling each
  policy's episodes within each world (the episode is the unit of chance; the policy set is fixed).
- :func:`ppi_mean` — prediction-powered inference (Angelopoulos et al., Science 2023; for robot
  evals: SureSim arXiv 2510.04354, control variates arXiv 2506.20553) of a policy's real success
  from N sim episodes and n paired (sim, real) episodes: ``θ̂ = λ·mean_N(sim) + mean_n(real − λ·sim)``
  with the CLT interval ``θ̂ ± z·sqrt(λ²·σ²_sim/N + σ²_(real−λ·sim)/n)``; ``λ = 1`` is plain PPI, the
  power-tuned λ̂ (PPI++, Angelopoulos et al. 2023b) never does worse than real-only asymptotically.
  :func:`classical_mean` is the real-only interval beside it.
- :func:`agreement` — the diagnostic that says when the worlds disagree: the rectifier
  ``mean(real − sim)`` with its interval (excluding 0 = the sim is biased for this policy) and
  whether PPI's interval is narrower than real-only's.

Small samples: with binary outcomes and n ≈ 10 a plain Wald variance is often 0 (10/10 agree) and
the interval collapses. ``small_sample=True`` (the default) estimates the variances the way the
adjusted-Wald intervals do: Agresti–Coull's ``(s+2)/(N+4)`` for the sim rate and for the real-only
rate, and for the paired term ``PSEUDO`` = 0.25 pseudo-disagreements each way (a lighter version of
Agresti–Min's / Bonett–Price's paired adjustments, which add 0.5–1 per cell and at n = 10 make PPI
wider than real-only even when the worlds agree 92 % of the time). So no interval has zero width
from a lucky sample; the point estimates are the plain means either way. Coverage of these choices
on synthetic draws with a known truth (tests/test_parity_stats.py) and in the committed study:
docs/results/parity.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

Z95 = NormalDist().inv_cdf(0.975)


def _z(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return NormalDist().inv_cdf(1 - alpha / 2)


def _binary(name: str, x) -> np.ndarray:
    a = np.asarray(x, dtype=float).reshape(-1)
    if a.size and not np.all((a == 0) | (a == 1)):
        raise ValueError(f"{name}: outcomes must be 0/1 (success), got {sorted(set(a.tolist()) - {0.0, 1.0})[:3]}")
    return a


# --------------------------------------------------------------------------- one rate
def wilson(successes: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """Wilson score interval (lo, hi) for ``successes`` of ``n``; (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= n:
        raise ValueError(f"wilson: successes {successes} not in 0..{n}")
    z = _z(alpha)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


# --------------------------------------------------------------------------- ranking judges
def pearson(sim, real) -> float:
    """Pearson r of paired success rates (SIMPLER's: 1 when the centred rates are equal, else
    Σ(s·r)/sqrt(Σs²·Σr²)); NaN when one world gives every policy the same rate and the other not."""
    s, r = np.asarray(sim, float), np.asarray(real, float)
    if s.shape != r.shape or s.ndim != 1:
        raise ValueError(f"pearson: sim and real need the same 1-D shape, got {s.shape} and {r.shape}")
    if s.size < 2:
        raise ValueError("pearson: needs at least 2 policies")
    s, r = s - s.mean(), r - r.mean()
    if np.allclose(s, r, atol=1e-12):
        return 1.0
    den = np.sqrt(np.sum(s * s) * np.sum(r * r))
    if den < 1e-15:
        return float("nan")
    return float(np.sum(s * r) / den)


def mmrv(sim, real) -> float:
    """Mean Maximum Rank Violation (SIMPLER): 1/N Σ_i max_j |R_i − R_j|·1[(S_i > S_j) ≠ (R_i > R_j)]."""
    s, r = np.asarray(sim, float), np.asarray(real, float)
    if s.shape != r.shape or s.ndim != 1:
        raise ValueError(f"mmrv: sim and real need the same 1-D shape, got {s.shape} and {r.shape}")
    if s.size < 2:
        raise ValueError("mmrv: needs at least 2 policies")
    viol = (s[:, None] > s[None, :]) != (r[:, None] > r[None, :])
    gap = np.abs(r[:, None] - r[None, :]) * viol
    return float(gap.max(axis=1).mean())


@dataclass
class Interval:
    estimate: float
    lo: float
    hi: float

    def as_dict(self) -> dict:
        return {k: (None if v is None or not np.isfinite(v) else round(float(v), 6)) for k, v in asdict(self).items()}


def bootstrap_parity(sim_outcomes: list, real_outcomes: list, n_boot: int = 2000, seed: int = 0,
                     alpha: float = 0.05) -> dict[str, Interval]:
    """Pearson r and MMRV with percentile-bootstrap intervals.

    ``sim_outcomes[i]`` / ``real_outcomes[i]``: policy i's 0/1 episode outcomes in each world. Each
    replicate resamples every policy's episodes with replacement; when a policy has as many
    episodes in both worlds (a paired study, the same order), the same indices are drawn in both,
    so a pair stays a pair; otherwise each world is resampled independently. Replicates where r is
    undefined (one world gives every policy the same rate) are left out of r's interval."""
    if len(sim_outcomes) != len(real_outcomes) or len(sim_outcomes) < 2:
        raise ValueError("bootstrap_parity: needs the same ≥ 2 policies in both worlds")
    sims = [_binary(f"sim[{i}]", x) for i, x in enumerate(sim_outcomes)]
    reals = [_binary(f"real[{i}]", x) for i, x in enumerate(real_outcomes)]
    for i, (a, b) in enumerate(zip(sims, reals)):
        if a.size == 0 or b.size == 0:
            raise ValueError(f"bootstrap_parity: policy {i} has no episodes in one world")
    rng = np.random.default_rng(seed)
    s0 = np.array([a.mean() for a in sims])
    r0 = np.array([b.mean() for b in reals])
    pr, mm = np.empty(n_boot), np.empty(n_boot)
    for k in range(n_boot):
        s, r = np.empty(len(sims)), np.empty(len(sims))
        for i, (a, b) in enumerate(zip(sims, reals)):
            ia = rng.integers(0, a.size, a.size)
            ib = ia if a.size == b.size else rng.integers(0, b.size, b.size)
            s[i], r[i] = a[ia].mean(), b[ib].mean()
        pr[k], mm[k] = pearson(s, r), mmrv(s, r)
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    pr_ok = pr[np.isfinite(pr)]
    p_lo, p_hi = np.percentile(pr_ok, q) if pr_ok.size else (np.nan, np.nan)
    m_lo, m_hi = np.percentile(mm, q)
    return {"pearson": Interval(pearson(s0, r0), float(p_lo), float(p_hi)),
            "mmrv": Interval(mmrv(s0, r0), float(m_lo), float(m_hi))}


# --------------------------------------------------------------------------- real success: PPI vs real-only
@dataclass
class MeanEstimate:
    method: str
    estimate: float
    lo: float
    hi: float
    n: int
    N: int = 0
    lam: float | None = None

    @property
    def width(self) -> float:
        return self.hi - self.lo

    def covers(self, truth: float) -> bool:
        return self.lo <= truth <= self.hi

    def as_dict(self) -> dict:
        d = asdict(self)
        d["width"] = self.width
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in d.items()}


def classical_mean(real, alpha: float = 0.05, small_sample: bool = True) -> MeanEstimate:
    """Real-only estimate of success from n real episodes: mean with the (Agresti–Coull adjusted when
    ``small_sample``) Wald interval, clipped to [0, 1]."""
    y = _binary("real", real)
    n = y.size
    if n == 0:
        raise ValueError("classical_mean: no real episodes")
    z = _z(alpha)
    est = float(y.mean())
    if small_sample:
        p = (y.sum() + z * z / 2) / (n + z * z)
        half = z * np.sqrt(p * (1 - p) / (n + z * z))
        centre = p  # Agresti–Coull's interval is centred on the adjusted rate
    else:
        half = z * np.sqrt(est * (1 - est) / n)
        centre = est
    return MeanEstimate("real-only", est, max(0.0, centre - half), min(1.0, centre + half), n)


#: pseudo-disagreements added each way to the paired episodes when ``small_sample`` (see the module doc)
PSEUDO = 0.25


def _paired_variance(sim_p: np.ndarray, real_p: np.ndarray, lam: float, small_sample: bool) -> float:
    """Per-episode variance of the paired term ``real − lam·sim`` (so that /n is its mean's variance).

    With ``small_sample`` the paired sample is augmented by PSEUDO pseudo-pairs of each disagreement,
    (real 1, sim 0) and (real 0, sim 1), as the adjusted-Wald intervals for paired proportions do
    (Agresti & Min 2005 add 0.5 to each cell, Bonett & Price 2012 one to each disagreement cell):
    a sample of n agreeing pairs then still leaves the rectifier an honest variance."""
    n = sim_p.size
    d = real_p - lam * sim_p
    if not small_sample:
        return float(d.var(ddof=1)) if n > 1 else 0.0
    c = PSEUDO
    vals = np.concatenate([d, [1.0, -lam]])
    w = np.concatenate([np.ones(n), [c, c]])
    mean = np.sum(w * vals) / w.sum()
    var_w = np.sum(w * (vals - mean) ** 2) / w.sum()
    return float(var_w * n / (n + 2 * c))


def ppi_mean(sim_unpaired, sim_paired, real_paired, alpha: float = 0.05, lam: float | str = 1.0,
             small_sample: bool = True) -> MeanEstimate:
    """Prediction-powered estimate of real success.

    ``sim_unpaired``: N sim episode outcomes (episodes with no real twin); ``sim_paired`` /
    ``real_paired``: the n paired episodes (same spec in both worlds, same order). The two sets
    must be disjoint episodes (PPI's variance assumes independent samples). ``lam``: 1 (PPI), a
    number in [0, 1], or ``"tuned"`` (PPI++'s λ̂ = Cov(real, sim)/((1 + n/N)·Var(sim)) on the paired
    episodes, clipped to [0, 1], and 1 when the paired sim or real outcomes do not vary; λ = 0 is
    real-only's mean). The estimate and interval are clipped to [0, 1] (a success rate)."""
    f_all = _binary("sim_unpaired", sim_unpaired)
    f_p, y_p = _binary("sim_paired", sim_paired), _binary("real_paired", real_paired)
    if f_p.size != y_p.size:
        raise ValueError(f"ppi_mean: {f_p.size} paired sim outcomes vs {y_p.size} paired real outcomes")
    n, N = y_p.size, f_all.size
    if n < 2 or N < 2:
        raise ValueError(f"ppi_mean: needs ≥ 2 paired and ≥ 2 unpaired sim episodes, got n={n}, N={N}")
    z = _z(alpha)
    if lam == "tuned":
        vf, vy = float(f_p.var(ddof=1)), float(y_p.var(ddof=1))
        # no spread in the paired sim or real outcomes (e.g. 10/10 successes): nothing to estimate the
        # covariance from, keep PPI's λ = 1
        if vf > 0 and vy > 0:
            cov = float(np.cov(y_p, f_p, ddof=1)[0, 1])
            lam_v = float(np.clip(cov / ((1 + n / N) * vf), 0.0, 1.0))
        else:
            lam_v = 1.0
        method = "PPI++"
    else:
        lam_v = float(lam)
        if not 0.0 <= lam_v <= 1.0:
            raise ValueError(f"ppi_mean: lam must be in [0, 1] or 'tuned', got {lam}")
        method = "PPI" if lam_v == 1.0 else f"PPI(λ={lam_v:g})"
    est = lam_v * f_all.mean() + float(np.mean(y_p - lam_v * f_p))
    if small_sample:
        p = (f_all.sum() + 2) / (N + 4)
        var_f = p * (1 - p) * N / (N + 4)
    else:
        var_f = float(f_all.var(ddof=1))
    var_d = _paired_variance(f_p, y_p, lam_v, small_sample)
    half = z * np.sqrt(lam_v ** 2 * var_f / N + var_d / n)
    return MeanEstimate(method, float(np.clip(est, 0.0, 1.0)), float(np.clip(est - half, 0.0, 1.0)),
                        float(np.clip(est + half, 0.0, 1.0)), n, N, lam_v)


def rectifier(sim_paired, real_paired, alpha: float = 0.05, small_sample: bool = True) -> Interval:
    """mean(real − sim) over paired episodes with its interval (the sim's bias for this policy)."""
    f_p, y_p = _binary("sim_paired", sim_paired), _binary("real_paired", real_paired)
    if f_p.size != y_p.size or f_p.size < 2:
        raise ValueError(f"rectifier: needs ≥ 2 pairs, got {f_p.size} sim and {y_p.size} real")
    n = f_p.size
    est = float(np.mean(y_p - f_p))
    half = _z(alpha) * np.sqrt(_paired_variance(f_p, y_p, 1.0, small_sample) / n)
    return Interval(est, est - half, est + half)


def agreement(sim_unpaired, sim_paired, real_paired, alpha: float = 0.05, small_sample: bool = True) -> dict:
    """Do the worlds agree for this policy? The rectifier and its interval, PPI vs real-only widths,
    and a verdict: ``agree`` (rectifier interval holds 0 and PPI is narrower), ``biased`` (the
    rectifier's interval excludes 0: the sim mis-predicts this policy's success; PPI corrects the
    bias but the sim's rate alone is wrong), ``uninformative`` (PPI no narrower than real-only:
    sim and real outcomes do not track episode by episode)."""
    rect = rectifier(sim_paired, real_paired, alpha, small_sample)
    ppi = ppi_mean(sim_unpaired, sim_paired, real_paired, alpha, 1.0, small_sample)
    real = classical_mean(real_paired, alpha, small_sample)
    biased = rect.lo > 0 or rect.hi < 0
    narrower = ppi.width < real.width
    verdict = "biased" if biased else ("agree" if narrower else "uninformative")
    f_p, y_p = _binary("sim_paired", sim_paired), _binary("real_paired", real_paired)
    return {"verdict": verdict, "rectifier": rect.as_dict(), "ppi_width": round(ppi.width, 6),
            "real_only_width": round(real.width, 6), "ppi_narrower": bool(narrower),
            "paired_agreement": round(float(np.mean(f_p == y_p)), 6)}
