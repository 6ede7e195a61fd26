"""Label-free losses on a predicted Hamiltonian.

For one molecule with predicted H (the model's output) the loss is

    L = w_E · E[P(H)]  +  w_SC · mean_ij (H − F[sg P(H)])²_ij  (+ w_sup · mean (H − F_label)²)

* E[P(H)] is the variational total energy of the density built from the
  occupied eigenvectors of H (Hartree). It fixes the occupied subspace only.
* The self-consistency term compares H with the Fock matrix of its own
  density. H = F[P(H)] is exactly the SCF condition, so it fixes the virtual
  spectrum too (LUMO, gap). F is a fixed target in this term: the gradient is
  stopped on P *before* F is evaluated (the libxc callback has no JVP).
* The supervised term is only for comparisons when a dataset carries PySCF
  labels; its weight is 0 in label-free training.

One Fock evaluation serves both terms: ∂E[P(H)]/∂H = (∂P/∂H)^T F[P], so the
energy term is implemented by the surrogate ⟨sg F, P(H)⟩ whose gradient is
exact and whose value is replaced by E (``_value_with_gradient_of``).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from basis.integrals import Integrals
from solvers.eigen import solve_hamiltonian
from solvers.energy import energy_and_fock

sg = jax.lax.stop_gradient


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of the loss terms (energy in Eh, the matrix terms in Eh²)."""

    energy: float = 1.0
    self_consistency: float = 300.0
    supervised: float = 0.0


class LossTerms(NamedTuple):
    """Per-molecule quantities, Hartree (shapes ())."""

    loss: jax.Array
    energy: jax.Array  # E[P(H)]
    self_consistency_rmse: jax.Array  # sqrt(mean (H − F[P(H)])²)
    self_consistency_mae: jax.Array  # mean |H − F[P(H)]|
    homo: jax.Array
    lumo: jax.Array


def _value_with_gradient_of(value, surrogate):
    """``value`` in the forward pass, the gradient of ``surrogate`` in the backward pass."""
    return sg(value) + surrogate - sg(surrogate)


def molecule_loss(
    H: jax.Array,
    ints: Integrals,
    X: jax.Array,
    mo_mask: jax.Array,
    ao_mask: jax.Array,
    weights: LossWeights,
    target_fock: jax.Array | None = None,
    n_electrons: jax.Array | int | None = None,
) -> LossTerms:
    """Loss of one predicted Hamiltonian.

    Args:
        H: (nao, nao) predicted Hamiltonian, PySCF AO order, Hartree (may be padded).
        ints: integrals of the molecule (padded to the same nao).
        X: (nao, nmo) orthogonalizer of the overlap (padded columns zero).
        mo_mask: (nmo,) real columns of X.
        ao_mask: (nao,) real AOs.
        weights: loss weights.
        target_fock: (nao, nao) PySCF label, only when ``weights.supervised`` > 0.
        n_electrons: electron count, default ``ints.n_electrons``; an integer
            array (traced) when one compiled function serves molecules of
            different compositions (padded batches of a size bucket).
    """
    n_electrons = ints.n_electrons if n_electrons is None else n_electrons
    res = solve_hamiltonian(H, X, n_electrons, mo_mask=mo_mask)
    P = res.density
    E, _, F = energy_and_fock(sg(P), ints)
    F = sg(F)
    pair = (ao_mask[:, None] & ao_mask[None, :]).astype(H.dtype)
    n_pair = jnp.sum(pair)
    diff = (H - F) * pair
    mse = jnp.sum(diff**2) / n_pair
    loss = weights.energy * _value_with_gradient_of(E, jnp.sum(F * P))
    loss = loss + weights.self_consistency * mse
    if weights.supervised and target_fock is not None:
        loss = loss + weights.supervised * jnp.sum(((H - target_fock) * pair) ** 2) / n_pair
    nocc = n_electrons // 2
    return LossTerms(
        loss=loss,
        energy=E,
        self_consistency_rmse=jnp.sqrt(sg(mse)),
        self_consistency_mae=sg(jnp.sum(jnp.abs(diff)) / n_pair),
        homo=sg(res.mo_energy[nocc - 1]),
        lumo=sg(res.mo_energy[nocc]),
    )
