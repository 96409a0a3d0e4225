"""What runs when a snapshot's policy meets the settings: the settings' policy, with the snapshot's learning.

A snapshot pickles the whole policy, hyperparameters included; a worker restarted with other settings used to
run the snapshot's policy as it was. ``carry_over`` keeps what was learned and takes the rest from the policy
the settings built:

- the same type: the restored policy, with the configured decision-only hyperparameters
  (``Policy.decision_params``: LinUCB's α, ε, ε_min and n₀, LinTS's scale, ε and draws, ε-greedy's ε);
- another type with the same statistics (LinUCB, LinTS and ε-greedy all keep ``bandits.ridge`` statistics):
  a policy of the configured type and hyperparameters holding the snapshot's statistics;
- otherwise ``PolicyMismatch``, saying what to set.

The ridge λ stays the snapshot's (A = λI + Σ x xᵀ holds it), and so does the random generator's state: the
seed only seeds a fresh policy. With unchanged settings the restored policy is returned untouched, so a
rollback restores the earlier decisions exactly.
"""

from __future__ import annotations

from bandits.base import Policy
from bandits.ridge import LinearPolicy


class PolicyMismatch(ValueError):
    """The snapshot's policy cannot carry its statistics over into the configured one."""


def carry_over(configured: Policy, restored: Policy, setting: str = "CADENCE_POLICY") -> tuple[Policy, list[str]]:
    """The policy to run: ``restored``'s learning under ``configured``'s type and decision hyperparameters,
    and what differs from the snapshot (for one log line; empty when the settings are the snapshot's).
    ``restored`` (a freshly unpickled snapshot) may be changed or taken apart; ``configured`` is not changed."""
    changes: list[str] = []
    if restored.dim != configured.dim:
        raise PolicyMismatch(f"the snapshot's {restored.name} policy has contexts of {restored.dim} values, this "
                             f"engine {configured.dim}: its statistics cannot be used; roll back to a snapshot "
                             "of this engine's contexts (`cadence snapshots list`)")
    if type(restored) is type(configured):
        policy = restored
        for name in configured.decision_params:
            old, new = getattr(restored, name), getattr(configured, name)
            if old != new:
                changes.append(f"{name} {old} -> {new}")
                setattr(policy, name, new)
    elif isinstance(restored, LinearPolicy) and isinstance(configured, LinearPolicy):
        policy = configured.with_statistics_of(restored)  # the configured hyperparameters come with the copy
        params = ", ".join(f"{name} {getattr(configured, name)}" for name in configured.decision_params)
        changes.append(f"type {restored.name} -> {configured.name} with {params} (the learned statistics "
                       "carried over)")
    else:
        raise PolicyMismatch(
            f"the snapshot holds a {restored.name} policy and {setting}={configured.name} cannot take its "
            f"statistics: set {setting}={restored.name} again, or roll back to a snapshot of a "
            f"{configured.name} policy (`cadence snapshots list`, `cadence snapshots rollback V`)")
    if isinstance(restored, LinearPolicy) and isinstance(configured, LinearPolicy) \
            and restored.ridge != configured.ridge:
        changes.append(f"ridge stays {restored.ridge} (the snapshot's statistics hold it; "
                       f"{configured.ridge} applies to a fresh start)")
    if restored.seed != configured.seed:
        changes.append(f"seed {configured.seed} not used (the random generator's state comes from the snapshot)")
    return policy, changes
