"""The skew-normal distribution: a moment fit and a log-CDF accurate far into the lower tail.

The Secret Sharer (Carlini et al. 2019, Sec. 4.3) estimates a canary's exposure when its
randomness space is too large to enumerate by fitting a skew-normal to the log-perplexities of
sampled candidates and reading the canary's rank off the fitted CDF. A memorized canary sits
many standard deviations below the bulk, where ``Phi(z) - 2 T(z, alpha)`` cancels to noise, so
the CDF here integrates the density in log space.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

# the largest |skewness| a skew-normal can have (alpha -> infinity), slightly inside the bound
_MAX_SKEW = 0.99
_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class SkewNormal:
    """Location ``loc`` (xi), scale ``scale`` (omega > 0) and shape ``alpha`` (0 is the normal)."""

    loc: float
    scale: float
    alpha: float

    @classmethod
    def fit(cls, samples: np.ndarray) -> "SkewNormal":
        """Method-of-moments fit (sample mean, variance and skewness, the skewness clipped to what a
        skew-normal can reach)."""
        x = np.asarray(samples, dtype=np.float64).ravel()
        if x.size < 3 or not np.all(np.isfinite(x)):
            raise ValueError(f"A skew-normal fit needs at least 3 finite samples; got {x.size}.")
        mean, std = float(x.mean()), float(x.std())
        if std <= 0:
            raise ValueError("All samples are equal; a skew-normal cannot be fitted to a point mass.")
        skew = float(np.mean(((x - mean) / std) ** 3))
        skew = float(np.clip(skew, -_MAX_SKEW, _MAX_SKEW))
        g = abs(skew) ** (2.0 / 3.0)
        delta = math.copysign(math.sqrt((math.pi / 2) * g / (g + ((4 - math.pi) / 2) ** (2.0 / 3.0))), skew)
        alpha = delta / math.sqrt(1 - delta * delta)
        scale = std / math.sqrt(1 - 2 * delta * delta / math.pi)
        loc = mean - scale * delta * math.sqrt(2 / math.pi)
        return cls(loc=loc, scale=scale, alpha=alpha)

    def logcdf(self, x: float, points: int = 20001) -> float:
        """Natural log of P(X <= x), by trapezoidal integration of the log-density.

        The density is log-concave, so below ``x`` it falls at least as fast as its tangent in
        log space: with slope ``s`` there, the window ``[x - 40/s, x]`` (in standard units) holds
        all but e^-40 of the mass. Near or above the mode the window starts at -40.
        """
        z = (float(x) - self.loc) / self.scale
        az = torch.tensor(self.alpha * z, dtype=torch.float64)
        mills = math.exp(float(-0.5 * az * az - _LOG_SQRT_2PI - torch.special.log_ndtr(az)))
        slope = -z + self.alpha * mills  # d/dt log density at z
        low = z - 40.0 / slope if slope > 1.0 else min(z, 0.0) - 40.0
        t = torch.linspace(low, z, points, dtype=torch.float64)
        log_density = math.log(2.0) - 0.5 * t * t - _LOG_SQRT_2PI + torch.special.log_ndtr(self.alpha * t)
        dt = (z - low) / (points - 1)
        log_w = torch.full_like(t, math.log(dt))
        log_w[0] = log_w[-1] = math.log(dt / 2)
        return float(min(0.0, torch.logsumexp(log_density + log_w, dim=0).item()))
