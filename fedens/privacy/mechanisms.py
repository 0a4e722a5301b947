"""DP release of a combination of teacher/expert outputs: GNMax and its relatives.

Neighbouring relation (record level, DESIGN.md): one record of one site changes.
Teachers are trained on disjoint shards, so that changes at most one teacher's
output (replace-one-teacher). Each mechanism states the sensitivity this implies
and, for every release, returns the dp-accounting events describing exactly what
it spent; epsilon is computed from them by dp-accounting, never here.

Accounting is data-independent (RDP of the noise addition). Noise is drawn in
floating point from the ``numpy.random.Generator`` passed in: the guarantee is
that of the idealised real-valued mechanism; it is not hardened against
floating-point attacks (Mironov 2012) and the generator is not cryptographic.
To keep budget checks data-independent, check a ledger against
``worst_case_events(n)`` before releasing, then charge ``event(release)``.
"""

from __future__ import annotations

import math
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting.rdp import RdpAccountant

from fedens.privacy.mechanism_base import (
    MECHANISMS,
    SQRT2,
    Mechanism,
    Release,
    calibrate_noise,
    check_array,
    check_budget,
    check_positive,
    check_rng,
    check_votes,
    describe_first,
    make_mechanism,
    project_to_simplex,
    register_mechanism,
    self_composed,
)

__all__ = [
    "MECHANISMS",
    "ConfidentGNMax",
    "GNMax",
    "LNMax",
    "Mechanism",
    "NoisyLinearPool",
    "Release",
    "WeightedGNMax",
    "make_mechanism",
    "register_mechanism",
]


@register_mechanism("gnmax")
class GNMax(Mechanism):
    """Gaussian NoisyMax (Papernot et al. 2018): argmax of votes + N(0, sigma^2) per class.

    Replace-one-teacher moves one vote: the histogram changes by 1 in two classes,
    L2 sensitivity sqrt(2). dp-accounting's ``GaussianDpEvent(z)`` is noise std z
    for sensitivity 1, RDP ``lambda / (2 z^2)``; with ``z = sigma / sqrt(2)`` that
    is ``lambda / sigma^2``, the data-independent RDP of GNMax in Papernot et al.
    Each query charges ``GaussianDpEvent(sigma / sqrt(2))``; releasing the noisy
    votes costs nothing more (the labels are their post-processing).

    Parameters
    ----------
    sigma : std of the Gaussian noise added to each vote count.

    Examples
    --------
    >>> import numpy as np
    >>> from fedens.privacy import GNMax, epsilon_from_events
    >>> mech = GNMax(sigma=40.0)
    >>> release = mech.release(np.array([[240, 5, 5], [10, 230, 10]]), np.random.default_rng(0))
    >>> release.labels.tolist()
    [0, 1]
    >>> epsilon_from_events(mech.events(release), 1e-5) < 1.0
    True
    """

    def __init__(self, *, sigma: float) -> None:
        self.sigma = check_positive("sigma", sigma)

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma}

    def release(self, inputs: np.ndarray, rng: np.random.Generator) -> Release:
        votes = check_votes(inputs)
        noisy = check_rng(rng).normal(0.0, self.sigma, votes.shape)
        noisy += votes
        return self._release(labels=noisy.argmax(axis=1), answered=np.ones(len(votes), bool),
                             noisy_aggregate=noisy)

    def worst_case_events(self, num_queries: int) -> list[dp_accounting.DpEvent]:
        return self_composed(dp_accounting.GaussianDpEvent(self.sigma / SQRT2), num_queries)

    @classmethod
    def with_epsilon(cls, target_epsilon: float, delta: float, num_queries: int) -> GNMax:
        """The least-noise GNMax whose ``num_queries`` answers stay within the target."""
        make = lambda s: cls(sigma=s)
        return make(calibrate_noise(make, target_epsilon, delta, num_queries, SQRT2))


@register_mechanism("lnmax")
class LNMax(Mechanism):
    """Laplace NoisyMax (Papernot et al. 2017): argmax of votes + Laplace(0, scale) per class.

    The vote histogram has L1 sensitivity 2 under replace-one-teacher, so releasing
    the noisy histogram is (2 / scale)-DP. dp-accounting's ``LaplaceDpEvent(m)``
    means Laplace scale ``m * C`` for L1 sensitivity C (pure epsilon ``1 / m``):
    each query charges ``LaplaceDpEvent(scale / 2)``. RDP accounting of one query
    gives a little more than ``2 / scale`` at any delta; it pays off over many.

    Parameters
    ----------
    scale : Laplace scale b of the noise added to each vote count.

    Examples
    --------
    >>> import numpy as np
    >>> mech = LNMax(scale=20.0)
    >>> mech.release(np.array([[240, 5, 5]]), np.random.default_rng(0)).labels.tolist()
    [0]
    """

    def __init__(self, *, scale: float) -> None:
        self.scale = check_positive("scale", scale)

    def params(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def release(self, inputs: np.ndarray, rng: np.random.Generator) -> Release:
        votes = check_votes(inputs)
        noisy = votes + check_rng(rng).laplace(0.0, self.scale, votes.shape)
        return self._release(labels=noisy.argmax(axis=1), answered=np.ones(len(votes), bool),
                             noisy_aggregate=noisy)

    def worst_case_events(self, num_queries: int) -> list[dp_accounting.DpEvent]:
        return self_composed(dp_accounting.LaplaceDpEvent(self.scale / 2.0), num_queries)

    @classmethod
    def with_epsilon(cls, target_epsilon: float, delta: float, num_queries: int) -> LNMax:
        """The least-noise LNMax whose ``num_queries`` answers stay within the target."""
        make = lambda b: cls(scale=b)
        return make(calibrate_noise(make, target_epsilon, delta, num_queries, 2.0))


@register_mechanism("confident_gnmax")
class ConfidentGNMax(Mechanism):
    """Confident-GNMax (Papernot et al. 2018): answer only when the teachers agree.

    Per query: if ``max(votes) + N(0, sigma1^2) >= threshold`` answer with
    GNMax(sigma2), else abstain (label -1). The max count has sensitivity 1, so
    every query charges ``GaussianDpEvent(sigma1)``; answered queries also charge
    ``GaussianDpEvent(sigma2 / sqrt(2))`` (see :class:`GNMax`). Charging the
    answer only when the (already charged, published) check passed is adaptive
    composition with costs chosen from public outputs, as in Papernot et al.

    Parameters
    ----------
    threshold : the noisy max vote must reach it for the query to be answered.
    sigma1, sigma2 : noise std of the check and of the answer.

    Examples
    --------
    >>> import numpy as np
    >>> mech = ConfidentGNMax(threshold=200.0, sigma1=20.0, sigma2=40.0)
    >>> release = mech.release(np.array([[250, 0, 0], [84, 83, 83]]), np.random.default_rng(0))
    >>> release.labels.tolist(), release.answered.tolist()
    ([0, -1], [True, False])
    """

    def __init__(self, *, threshold: float, sigma1: float, sigma2: float) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) \
                or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.threshold = float(threshold)
        self.sigma1 = check_positive("sigma1", sigma1)
        self.sigma2 = check_positive("sigma2", sigma2)

    def params(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "sigma1": self.sigma1, "sigma2": self.sigma2}

    def pate_analysis_params(self) -> dict[str, float]:
        return {"sigma": self.sigma2, "threshold": self.threshold, "sigma_threshold": self.sigma1}

    def release(self, inputs: np.ndarray, rng: np.random.Generator) -> Release:
        votes = check_votes(inputs)
        rng = check_rng(rng)
        noisy_check = votes.max(axis=1) + rng.normal(0.0, self.sigma1, len(votes))
        answered = noisy_check >= self.threshold
        noisy = rng.normal(0.0, self.sigma2, votes.shape)
        noisy += votes
        noisy[~answered] = np.nan  # drawn but never published, never charged
        labels = np.where(answered, np.nan_to_num(noisy).argmax(axis=1), -1)
        return self._release(labels=labels, answered=answered, noisy_aggregate=noisy,
                             noisy_check=noisy_check)

    def _events(self, checked: int, answered: int) -> list[dp_accounting.DpEvent]:
        return (self_composed(dp_accounting.GaussianDpEvent(self.sigma1), checked)
                + self_composed(dp_accounting.GaussianDpEvent(self.sigma2 / SQRT2), answered))

    def events(self, release: Release) -> list[dp_accounting.DpEvent]:
        """Every query's check; the GNMax answer only for answered queries."""
        return self._events(self._own(release).labels.shape[0], release.num_answered)

    def worst_case_events(self, num_queries: int) -> list[dp_accounting.DpEvent]:
        return self._events(num_queries, num_queries)

    @classmethod
    def with_epsilon(cls, target_epsilon: float, delta: float, num_queries: int, *,
                     threshold: float, sigma1: float) -> ConfidentGNMax:
        """Calibrate sigma2 for the worst case: all ``num_queries`` checked *and* answered.

        Raises ValueError when the checks alone already spend ``target_epsilon``.
        """
        n = check_budget(target_epsilon, delta, num_queries)
        checks = cls(threshold=threshold, sigma1=sigma1, sigma2=1.0)._events(n, 0)
        spent = RdpAccountant().compose(dp_accounting.ComposedDpEvent(checks)).get_epsilon(delta)
        if spent >= target_epsilon:
            raise ValueError(f"target_epsilon={target_epsilon!r} leaves nothing to answer with: "
                             f"{num_queries} checks with sigma1={sigma1!r} spend {spent:.4g}")
        make = lambda s: cls(threshold=threshold, sigma1=sigma1, sigma2=s)
        return make(calibrate_noise(make, target_epsilon, delta, n, SQRT2))


@register_mechanism("weighted_gnmax")
class WeightedGNMax(Mechanism):
    """GNMax over weighted votes: teacher k adds ``weights[k]`` to the class it votes for.

    Input: per-teacher labels (n, K), integers in ``[0, num_classes)``. Replacing
    teacher k moves weight w_k between two classes: L2 sensitivity
    ``sqrt(2) * max(weights)``; each query charges
    ``GaussianDpEvent(sigma / (sqrt(2) * max(weights)))``. This holds only if the
    weights do not depend on the private data: they must be public, or learned
    under DP and charged separately (then released and fixed before any query).

    Parameters
    ----------
    sigma : noise std per class; weights : (K,) non-negative, not all 0;
    num_classes : C.

    Examples
    --------
    >>> import numpy as np
    >>> mech = WeightedGNMax(sigma=2.0, weights=[1.0, 0.5, 0.5], num_classes=2)
    >>> release = mech.release(np.array([[0, 1, 1]] * 2), np.random.default_rng(0))
    >>> release.noisy_aggregate.shape
    (2, 2)
    """

    def __init__(self, *, sigma: float, weights: Any, num_classes: int) -> None:
        self.sigma = check_positive("sigma", sigma)
        self.weights = check_array(weights, "weights", "(K,)", 1).copy()
        self.weights.flags.writeable = False  # the sensitivity is fixed at construction
        if self.weights.max() <= 0:
            raise ValueError(f"weights must not all be 0, got {self.weights.tolist()}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.num_classes = int(num_classes)

    def params(self) -> dict[str, Any]:
        return {"sigma": self.sigma, "weights": self.weights.tolist(),
                "num_classes": self.num_classes}

    def release(self, inputs: np.ndarray, rng: np.random.Generator) -> Release:
        labels = np.asarray(inputs)
        K, C = len(self.weights), self.num_classes
        if labels.ndim != 2 or labels.shape[0] == 0 or labels.shape[1] != K:
            raise ValueError(f"teacher labels must have shape (n>=1, K={K}), got {labels.shape}")
        if labels.dtype.kind not in "iu":
            raise ValueError(f"teacher labels must be integers, got dtype {labels.dtype}")
        bad = (labels < 0) | (labels >= C)
        if bad.any():
            raise ValueError(f"teacher labels must be in [0, {C}), got {describe_first(labels, bad)}")
        n = labels.shape[0]
        votes = np.zeros((n, C))
        np.add.at(votes, (np.repeat(np.arange(n), K), labels.ravel()), np.tile(self.weights, n))
        noisy = votes + check_rng(rng).normal(0.0, self.sigma, votes.shape)
        return self._release(labels=noisy.argmax(axis=1), answered=np.ones(n, bool),
                             noisy_aggregate=noisy)

    def worst_case_events(self, num_queries: int) -> list[dp_accounting.DpEvent]:
        z = self.sigma / (SQRT2 * float(self.weights.max()))
        return self_composed(dp_accounting.GaussianDpEvent(z), num_queries)

    @classmethod
    def with_epsilon(cls, target_epsilon: float, delta: float, num_queries: int, *,
                     weights: Any, num_classes: int) -> WeightedGNMax:
        """The least-noise WeightedGNMax whose ``num_queries`` answers stay within the target."""
        def make(s: float) -> WeightedGNMax:
            return cls(sigma=s, weights=weights, num_classes=num_classes)

        scale = SQRT2 * float(make(1.0).weights.max())  # validates weights first
        return make(calibrate_noise(make, target_epsilon, delta, num_queries, scale))


@register_mechanism("noisy_linear_pool")
class NoisyLinearPool(Mechanism):
    """Noisy sum of clipped expert probability vectors, projected to a distribution.

    Input (n, K, C): each expert's vector is scaled to L2 norm <= ``clip`` and the
    K vectors summed. Replacing one expert moves the sum by at most ``2 * clip``
    (conservative: two distributions differ by at most sqrt(2) in L2, so a clip
    above 1 only adds noise); Gaussian noise of std ``noise_multiplier * 2 * clip``
    per class, so each query charges ``GaussianDpEvent(noise_multiplier)``. The
    released distribution is the Euclidean projection of the noisy sum onto the
    simplex, the label its argmax: post-processing, free. Requires each expert to
    depend on a disjoint part of the data (one record changes one expert).

    Parameters
    ----------
    clip : L2 bound on each expert's vector; noise_multiplier : noise std / (2 clip).

    Examples
    --------
    >>> import numpy as np
    >>> mech = NoisyLinearPool(clip=1.0, noise_multiplier=0.5)
    >>> P = np.tile([[0.9, 0.1]], (1, 8, 1))  # 1 query, 8 experts, 2 classes
    >>> release = mech.release(P, np.random.default_rng(0))
    >>> release.labels.tolist(), round(float(release.distribution.sum()), 6)
    ([0], 1.0)
    """

    def __init__(self, *, clip: float, noise_multiplier: float) -> None:
        self.clip = check_positive("clip", clip)
        self.noise_multiplier = check_positive("noise_multiplier", noise_multiplier)

    def params(self) -> dict[str, Any]:
        return {"clip": self.clip, "noise_multiplier": self.noise_multiplier}

    def release(self, inputs: np.ndarray, rng: np.random.Generator) -> Release:
        P = check_array(inputs, "expert outputs", "(n, K, C)", 3)
        norms = np.linalg.norm(P, axis=2, keepdims=True)
        clipped = P * np.minimum(1.0, self.clip / np.maximum(norms, 1e-300))
        total = clipped.sum(axis=1)
        std = self.noise_multiplier * 2.0 * self.clip
        noisy = total + check_rng(rng).normal(0.0, std, total.shape)
        return self._release(labels=noisy.argmax(axis=1), answered=np.ones(len(P), bool),
                             noisy_aggregate=noisy, distribution=project_to_simplex(noisy))

    def worst_case_events(self, num_queries: int) -> list[dp_accounting.DpEvent]:
        return self_composed(dp_accounting.GaussianDpEvent(self.noise_multiplier), num_queries)

    @classmethod
    def with_epsilon(cls, target_epsilon: float, delta: float, num_queries: int, *,
                     clip: float) -> NoisyLinearPool:
        """The least-noise pool whose ``num_queries`` answers stay within the target."""
        def make(z: float) -> NoisyLinearPool:
            return cls(clip=clip, noise_multiplier=z)

        return make(calibrate_noise(make, target_epsilon, delta, num_queries, 1.0))
