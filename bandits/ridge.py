"""Per-arm ridge regression statistics shared by the linear policies (LinUCB, LinTS, ε-greedy).

Source of truth, additive and order-independent (so any worker may apply any sample, in any order):
  Aₐ = ridge·I + Σ x xᵀ over exposures of arm a,   bₐ = Σ r·x over its rewards.
Caches derived from them, kept exact with rank-one algebra (no matrix inversion per call):
  Aₐ⁻¹ by Sherman–Morrison on every exposure, θₐ = Aₐ⁻¹ bₐ.
Every ``refresh_every`` exposures of an arm (and after a batch), Aₐ⁻¹ is recomputed from Aₐ so
rounding errors of the rank-one updates cannot pile up over millions of steps.

Layout for speed: Aₐ⁻¹ of all K arms and their θₐ live in one (K·d + K, d) matrix, so a single
matrix-vector product gives Aₐ⁻¹x for every arm and θₐ·x for every arm; the (K, d, d) stack is never
copied when the eligible set is (most of) the catalogue. In-place rank-one updates use BLAS (dger, daxpy).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
from scipy.linalg import blas

from bandits.base import Policy

# x·y of two float64 vectors as a Python float: BLAS directly, about a quarter of float(np.dot(x, y))'s
# cost, which matters on the per-request path (a select + update is a few µs of numpy calls)
ddot = blas.ddot

SMALL_BATCH = 4  # per arm: up to this many rows go through Sherman–Morrison, more through one inversion


@dataclass(frozen=True, slots=True)
class ArmStats:
    """Copies of one arm's statistics: gram = A (ridge·I + Σ x xᵀ), sums = b (Σ r·x), theta = A⁻¹ b."""

    gram: np.ndarray
    sums: np.ndarray
    theta: np.ndarray


class LinearPolicy(Policy):
    """A policy over per-arm ridge regressions; subclasses decide how to turn mean/variance into a pick."""

    def __init__(self, dim: int, ridge: float = 1.0, seed: int = 0, refresh_every: int = 512) -> None:
        super().__init__(dim, seed)
        if not ridge > 0:
            raise ValueError(f"ridge must be > 0, got {ridge}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be >= 1, got {refresh_every}")
        self.ridge = ridge
        self.refresh_every = refresh_every
        self._gram = np.empty((0, dim, dim))
        self._sums = np.empty((0, dim))
        self._stack = np.empty((0, dim))  # rows [A₀⁻¹; …; A_{K-1}⁻¹; θ₀ … θ_{K-1}]
        self._since_refresh: list[int] = []

    # -- read access ----------------------------------------------------------------------------
    def stats(self, action: str) -> ArmStats:
        """The statistics of a known action (copies; raises KeyError for an action never seen)."""
        arm = self._index[action]
        theta = self._stack[len(self._since_refresh) * self.dim + arm]
        return ArmStats(self._gram[arm].copy(), self._sums[arm].copy(), theta.copy())

    def with_statistics_of(self, other: LinearPolicy) -> LinearPolicy:
        """A copy of this policy (its type and decision hyperparameters) holding ``other``'s statistics, its
        ridge λ (A = λI + Σ x xᵀ was built with it), actions, version and random generator (taken, not copied:
        ``other`` is a restored snapshot's, not used after). The statistics are the same for every linear
        policy, so a snapshot of one carries over into another."""
        if other.dim != self.dim:
            raise ValueError(f"the statistics have {other.dim} dimensions, this policy {self.dim}")
        policy = copy.copy(self)
        policy.__dict__.update({
            "ridge": other.ridge, "_rng": other._rng, "_index": other._index, "_n_updates": other._n_updates,
            "_gram": other._gram, "_sums": other._sums, "_stack": other._stack,
            "_since_refresh": other._since_refresh, "_eligible": {},
        })
        return policy

    # -- statistics ------------------------------------------------------------------------------
    def _grow(self, n_arms: int) -> None:
        d, old = self.dim, len(self._since_refresh)
        extra = n_arms - old
        eye = np.eye(d)
        self._gram = np.concatenate([self._gram, np.broadcast_to(self.ridge * eye, (extra, d, d))])
        self._sums = np.concatenate([self._sums, np.zeros((extra, d))])
        inverses, thetas = self._stack[: old * d], self._stack[old * d :]
        cold = np.tile(eye / self.ridge, (extra, 1))
        self._stack = np.concatenate([inverses, cold, thetas, np.zeros((extra, d))])
        self._since_refresh.extend([0] * extra)

    def _inverse(self, arm: int) -> np.ndarray:
        """View of Aₐ⁻¹ inside the stack (C-contiguous, so its transpose suits Fortran BLAS in place)."""
        d = self.dim
        return self._stack[arm * d : (arm + 1) * d]

    def _theta(self, arm: int) -> np.ndarray:
        return self._stack[len(self._since_refresh) * self.dim + arm]

    def _moments(self, x: np.ndarray, idx: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean θₐ·x and the quadratic form xᵀAₐ⁻¹x for the eligible arms."""
        d, n = self.dim, len(self._since_refresh)
        kd = n * d
        if idx is None or 2 * len(idx) >= n:
            y = np.dot(self._stack, x)
            var = np.dot(y[:kd].reshape(n, d), x)
            mean = y[kd:]
            return (mean, var) if idx is None else (mean[idx], var[idx])
        inverses = self._stack[:kd].reshape(n, d, d)[idx]  # few eligible arms out of many: copy only those
        var = np.dot(np.dot(inverses, x), x)
        return np.dot(self._stack[kd:][idx], x), var

    def _moments_many(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``_moments`` for every row of ``xs`` and every arm at once: two (n, K) arrays."""
        d, n = self.dim, len(self._since_refresh)
        kd = n * d
        y = xs @ self._stack.T  # (rows, K·d + K): Aₐ⁻¹x of every arm, then θₐ·x
        var = np.einsum("rkd,rd->rk", y[:, :kd].reshape(len(xs), n, d), xs)
        return y[:, kd:], var

    def _means(self, x: np.ndarray, idx: np.ndarray | None) -> np.ndarray:
        mean = np.dot(self._stack[len(self._since_refresh) * self.dim :], x)
        return mean if idx is None else mean[idx]

    def _expose(self, x: np.ndarray, arm: int) -> None:
        # A' = A + x xᵀ;  A'⁻¹ = A⁻¹ − (A⁻¹x)(A⁻¹x)ᵀ / (1 + xᵀA⁻¹x)
        # θ' = A'⁻¹b = θ − A⁻¹x (x·θ) / (1 + xᵀA⁻¹x)
        inv, theta = self._inverse(arm), self._theta(arm)
        ax = np.dot(inv, x)
        denom = 1.0 + ddot(x, ax)
        blas.daxpy(ax, theta, a=-ddot(x, theta) / denom)
        blas.dger(-1.0 / denom, ax, ax, a=inv.T, overwrite_a=True)
        blas.dger(1.0, x, x, a=self._gram[arm].T, overwrite_a=True)
        self._tick(arm)

    def _reward(self, x: np.ndarray, arm: int, reward: float) -> None:
        sums = self._sums[arm]
        blas.daxpy(x, sums, a=reward)
        np.dot(self._inverse(arm), sums, out=self._theta(arm))

    def _update(self, x: np.ndarray, arm: int, reward: float) -> None:
        # exposure and reward fused: θ' = θ + A⁻¹x (r − x·θ) / (1 + xᵀA⁻¹x)  (recursive least squares)
        inv, theta = self._inverse(arm), self._theta(arm)
        ax = np.dot(inv, x)
        denom = 1.0 + ddot(x, ax)
        blas.daxpy(ax, theta, a=(reward - ddot(x, theta)) / denom)
        blas.dger(-1.0 / denom, ax, ax, a=inv.T, overwrite_a=True)
        blas.dger(1.0, x, x, a=self._gram[arm].T, overwrite_a=True)
        if reward:
            blas.daxpy(x, self._sums[arm], a=reward)
        self._tick(arm)

    def _tick(self, arm: int) -> None:
        self._since_refresh[arm] += 1
        if self._since_refresh[arm] >= self.refresh_every:
            self._refresh(np.array([arm]))

    def _refresh(self, arms: np.ndarray) -> None:
        """Recompute Aₐ⁻¹ from Aₐ and θₐ from bₐ for ``arms`` (distinct indices)."""
        inverses = np.linalg.inv(self._gram[arms])
        inverses = 0.5 * (inverses + inverses.transpose(0, 2, 1))
        d, n = self.dim, len(self._since_refresh)
        block = self._stack[: n * d].reshape(n, d, d)
        block[arms] = inverses
        self._stack[n * d :][arms] = np.einsum("kij,kj->ki", inverses, self._sums[arms])
        for arm in arms.tolist():
            self._since_refresh[arm] = 0

    def _expose_many(self, xs: np.ndarray, arms: np.ndarray) -> None:
        order = np.argsort(arms, kind="stable")
        uniq, starts = np.unique(arms[order], return_index=True)
        bounds = [*starts.tolist(), len(order)]
        to_invert = []
        for j, arm in enumerate(uniq.tolist()):
            rows = xs[order[bounds[j] : bounds[j + 1]]]
            if len(rows) <= SMALL_BATCH:
                for x in rows:
                    self._expose(x, arm)
            else:
                self._gram[arm] += rows.T @ rows
                to_invert.append(arm)
        if to_invert:
            self._refresh(np.array(to_invert))

    def _reward_many(self, xs: np.ndarray, arms: np.ndarray, rewards: np.ndarray) -> None:
        np.add.at(self._sums, arms, xs * rewards[:, None])
        touched = np.unique(arms)
        d, n = self.dim, len(self._since_refresh)
        inverses = self._stack[: n * d].reshape(n, d, d)[touched]
        self._stack[n * d :][touched] = np.einsum("kij,kj->ki", inverses, self._sums[touched])
