"""Label-free losses on a predicted Hamiltonian, molecules and crystals.

For one molecule with predicted H (the model's output) the loss is

    L = w_E · E[P(H)]  +  w_SC · mean_ij (H − F[sg P(H)])²_ij  (+ w_sup · mean (H − F_label)²)

* E[P(H)] is the variational total energy of the density built from the
  occupied eigenvectors of H (Hartree). It fixes the occupied subspace only.
* The self-consistency term compares H with the Fock matrix of its own
  density. H = F[P(H)] is exactly the SCF condition, so it fixes the virtual
  spectrum too (LUMO, gap). F is a fixed target in this term: the gradient is
  stopped on P *before* F is evaluated (the libxc callback has no JVP). It is
  measured in the AO basis or, with ``self_consistency_basis="orthonormal"``, as
  X†(H − F)X (:func:`orthonormal_mse`), which bounds the orbital-energy errors.
* The supervised term is only for comparisons when a dataset carries PySCF
  labels; its weight is 0 in label-free training.

One Fock evaluation serves both terms: ∂E[P(H)]/∂H = (∂P/∂H)^T F[P], so the
energy term is implemented by the surrogate ⟨sg F, P(H)⟩ whose gradient is
exact and whose value is replaced by E (``_value_with_gradient_of``).

A crystal is the same with k-points (:func:`crystal_loss`): H(k), S(k), P(k) on the
training k-mesh, the energy per cell of :mod:`solvers.periodic`, and the
self-consistency residual averaged over k (and, optionally, over the half-shifted
mesh q, where F(q) comes from the potential of the same density).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

import flax.struct

from basis.integrals import Integrals
from basis.pbc_integrals import PeriodicIntegrals
from solvers import periodic
from solvers.eigen import density_factor, eigh, solve_hamiltonian
from solvers.energy import energy_and_fock
from vardft.config import LossWeights

sg = jax.lax.stop_gradient


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
    self_consistency_basis: str = "ao",
    max_occupied: int | None = None,
    G: jax.Array | None = None,
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
        self_consistency_basis: ``"ao"`` or ``"orthonormal"`` (static).
        max_occupied: static bound on the occupied orbitals (≥ n_electrons / 2): the
            energy then gets P as Y Yᵀ (:func:`solvers.eigen.density_factor`), which makes
            exact exchange several times cheaper. Default: the static count, if known.
        G: (nao, nao) overlap filter (:func:`solvers.eigen.overlap_filter`) or ``None``:
            the orthonormal penalty then measures G (H − F) G, the part of the residual a
            filtered correction can reach. The AO penalty and the metrics are unfiltered.
    """
    n_electrons = ints.n_electrons if n_electrons is None else n_electrons
    res = solve_hamiltonian(H, X, n_electrons, mo_mask=mo_mask)
    P = res.density
    if max_occupied is None and isinstance(n_electrons, int):
        max_occupied = n_electrons // 2
    Y = None if max_occupied is None or not ints.functional.exact_exchange else density_factor(res, max_occupied)
    E, _, F = energy_and_fock(sg(P), ints, Y)
    F = sg(F)
    pair = (ao_mask[:, None] & ao_mask[None, :]).astype(H.dtype)
    n_pair = jnp.sum(pair)
    diff = (H - F) * pair
    mse = jnp.sum(diff**2) / n_pair
    if self_consistency_basis == "ao":
        penalty = mse
    else:
        reachable = filtered(diff[None], None if G is None else G[None])
        penalty = orthonormal_mse(reachable, X[None], mo_mask[None], real=True)
    loss = weights.energy * _value_with_gradient_of(E, jnp.sum(F * P))
    loss = loss + weights.self_consistency * penalty
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


# ------------------------------------------------------------------ crystals
def embed_complex(A):
    """Real embedding [[Re A, −Im A], [Im A, Re A]] of complex (..., n, m) matrices."""
    top = jnp.concatenate([A.real, -A.imag], axis=-1)
    bottom = jnp.concatenate([A.imag, A.real], axis=-1)
    return jnp.concatenate([top, bottom], axis=-2)


def orthonormal_mse(D, X, mo_mask, real: bool = False):
    """Mean |X(k)† D(k) X(k)|² over k and orbital pairs: D measured in an orthonormal basis.

    By Weyl's inequality every orbital (band) energy of H moves by at most the spectral
    norm of X† (H − F) X, so this bounds those errors; the AO-basis residual |H − F| does
    not (S(k) of Si/gth-szv has eigenvalues down to 0.13: an AO residual of 7 meV came
    with conduction-band errors of 50 meV).

    Args:
        D: (nk, N, N) Hermitian residual H − F, Hartree (complex, or real with ``real``).
        X, mo_mask: orthogonalizers (nk, 2N, 2M) in the real embedding of
            :func:`embed_complex` with their column mask (nk, 2M); with ``real``, plain
            real (nk, N, M) and (nk, M).
    """
    if real:
        R = jnp.einsum("kai,kab,kbj->kij", X, D, X)
        n_mo = jnp.sum(mo_mask, axis=-1)
        return jnp.mean(jnp.sum(R**2, axis=(-2, -1)) / n_mo**2)
    R = jnp.einsum("kai,kab,kbj->kij", X, embed_complex(D), X)
    n_mo = jnp.sum(mo_mask, axis=-1)  # 2 × orbitals per k (every level twice)
    return jnp.mean(jnp.sum(R**2, axis=(-2, -1)) / n_mo**2 * 2.0)


WINDOW_CONDUCTION_BANDS = 8
"""Empty bands above the occupied ones in the ``"window"`` self-consistency residual (twice
the conduction bands of the band metric)."""

_MASKED_LEVEL = 1e6
"""Hartree: where the padding columns of an orthogonalizer are put, above every band."""


BAND_MIXING_WIDTH = 0.01
"""Hartree: pairs of bands closer than about this count as one level in the band-energy
residual (:func:`window_residuals`), so exactly degenerate bands (Si at Γ) are measured
independently of the basis LAPACK picks within them."""


class WindowResiduals(NamedTuple):
    """The residual D = H − F in the basis of H's lowest Bloch states (shapes ()), Eh²."""

    pairs: jax.Array  # mean |C†DC|² over k and pairs of window bands
    bands: jax.Array  # mean over k and window bands of the first-order band-energy error²


def window_residuals(D, H, X, mo_mask, n_bands: int) -> WindowResiduals:
    """D in the basis C of H's own ``n_bands`` lowest S-orthonormal Bloch states (taken as
    fixed, no gradient through them): the mean over pairs and the band energies.

    The orthonormal residual (:func:`orthonormal_mse`) weighs every direction of the AO
    space alike, including nearly linearly dependent ones whose error moves only bands far
    above the gap (gth-dzvp Si: 8 Eh RMS for the sap baseline); this one measures what moves
    the bands of the window and mixes them.

    The mean over pairs dilutes the band energies: the first-order change of band i from H to
    F is (C†DC)_ii, one of n² pairs, and a rigid shift H + cS (the same density, so the same
    F) shows only there. ``bands`` is mean_i Σ_j w_ij |(C†DC)_ij|² with
    w_ij = exp(−((ε_i − ε_j)/:data:`BAND_MIXING_WIDTH`)²): the squared band-energy errors for
    isolated bands, and for a degenerate set the squared eigenvalues of its block (what
    first-order perturbation theory moves the set by), whatever basis LAPACK picks in it.

    Args:
        D: (nk, N, N) Hermitian residual H − F (complex), Hartree.
        H: (nk, N, N) the H(k) whose bands define the window.
        X, mo_mask: real-embedded orthogonalizers (nk, 2N, 2M) and their column mask (nk, 2M).
        n_bands: bands in the window (static), at most M.
    """
    Ho = jnp.einsum("kai,kab,kbj->kij", X, embed_complex(sg(H)), X)
    Ho = Ho + jax.vmap(jnp.diag)((1.0 - mo_mask) * _MASKED_LEVEL)
    e, V = eigh(Ho)
    m = 2 * n_bands  # every level twice in the embedding
    C = jnp.einsum("kai,kij->kaj", X, V[..., :m])
    R = jnp.einsum("kai,kab,kbj->kij", C, embed_complex(D), C)
    gap = e[:, :m, None] - e[:, None, :m]
    weight = jnp.exp(-((gap / BAND_MIXING_WIDTH) ** 2))
    pairs = jnp.mean(jnp.sum(R**2, axis=(-2, -1)) / m**2 * 2.0)
    bands = jnp.mean(jnp.sum(weight * R**2, axis=(-2, -1)) / m)
    return WindowResiduals(pairs=pairs, bands=bands)


def hermitian_density(Hk, X, mo_mask, n_electrons: int):
    """Density matrices and band energies of an insulator from H(k), with safe gradients.

    The complex Hermitian eigenproblem is solved through its real embedding (every level
    twice) with :func:`solvers.eigen.solve_hamiltonian`, whose VJP uses occupied–virtual
    pairs only: gradients stay finite at degenerate band tops (Si at Γ).

    Args:
        Hk: (nk, N, N) complex Hermitian H(k), Hartree.
        X: (nk, 2N, 2N) real-embedded orthogonalizers.
        mo_mask: (nk, 2N) real columns of ``X``.
        n_electrons: electrons per cell (static, even).

    Returns:
        P (nk, N, N) complex128, PySCF's ``dm_kpts`` (Σ_k w_k tr P S = n_electrons);
        ε (nk, N) band energies, ascending, Hartree.
    """
    n = Hk.shape[-1]
    res = jax.vmap(lambda h, x, m: solve_hamiltonian(h, x, 2 * n_electrons, mo_mask=m))(embed_complex(Hk), X, mo_mask)
    D = res.density
    P = D[:, :n, :n] + 1j * D[:, n:, :n]
    return P, res.mo_energy[:, ::2]


@flax.struct.dataclass
class OffMesh:
    """Integrals at the half-shifted k-points q of one crystal (stacked: a leading axis B).

    Attributes:
        kpts: (nq, 3) Cartesian q, 1/Bohr.
        hcore: (nq, N, N) complex h(q); ao: (nq, nderiv, ngrid, N) Bloch AOs on the
            training FFT mesh; X, mo_mask: real-embedded orthogonalizers of S(q);
        h_base: (nq, N, N) baseline H_base(q), Hartree;
        G: (nq, N, N) overlap filters of S(q) (:func:`solvers.eigen.overlap_filter`) or ``None``.
    """

    kpts: Any
    hcore: Any
    ao: Any
    X: Any
    mo_mask: Any
    h_base: Any
    G: Any = None


def offmesh_fock(P, ints: PeriodicIntegrals, offmesh: OffMesh):
    """F(q) = h(q) + ⟨φ_q|v[P]|φ_q⟩ at the off-mesh points, (nq, N, N) complex, Hartree.

    v[P] is the Hartree + XC potential of the density of P(k) on the k-mesh of
    ``ints``: the Fock matrices PySCF's ``get_bands`` diagonalises.
    """
    return offmesh.hcore + periodic.potential_matrices(periodic.effective_potential(P, ints), offmesh.ao)


class CrystalTerms(NamedTuple):
    """Per-crystal loss terms (shapes ()), Hartree."""

    loss: jax.Array
    energy: jax.Array  # E per cell of the density of H(k)
    self_consistency_rmse: jax.Array  # sqrt(mean |H(k) − F(k)|²), AO basis
    orthonormal_rmse: jax.Array  # the same in an orthonormal basis (:func:`orthonormal_mse`)


def filtered(D, G):
    """G D G (each of shape (nk, N, N)), or ``D`` when ``G`` is ``None`` (no filter)."""
    return D if G is None else jnp.einsum("kab,kbc,kcd->kad", G, D, G)


def crystal_loss(
    Hk,
    ints: PeriodicIntegrals,
    X,
    mo_mask,
    weights: LossWeights,
    self_consistency_basis: str = "orthonormal",
    Hq=None,
    offmesh: OffMesh | None = None,
    G=None,
    Hk_target=None,
    Hq_target=None,
) -> CrystalTerms:
    """Loss of one crystal from its H(k) (nk, N, N) at the k-points of ``ints`` (unstacked).

    With ``offmesh`` and ``Hq`` (nq, N, N), H(q) at the half-shifted points, the
    self-consistency penalty is the mean of the mesh's and the off-mesh points'. With
    overlap filters ``G`` (nk, N, N) (and ``offmesh.G``), every self-consistency residual
    is that of G (H − F) G: the directions the filtered correction can reach; or, given
    ``Hk_target`` (and ``Hq_target``), the matrices H_base + ΔH before the filter, that of
    G (H_base + ΔH − F) G = H − (H_base + G (F − H_base) G), H against the filtered Fock
    matrix (:data:`vardft.config.SELF_CONSISTENCY_TARGETS`). The density and the band
    window are H's in both.
    """
    nao = ints.nao
    Hk = Hk[:, :nao, :nao]
    P, _ = hermitian_density(Hk, X, mo_mask, ints.n_electrons)
    E, _, F = periodic.energy_and_fock(sg(P), ints)
    F = sg(F)
    surrogate = jnp.sum(ints.kweights * jnp.einsum("kij,kji->k", F, P).real)
    compared = Hk if Hk_target is None else Hk_target[:, :nao, :nao]
    D = filtered(compared - F, G)
    mse = jnp.mean(jnp.abs(D) ** 2)
    mse_orthonormal = orthonormal_mse(D, X, mo_mask)
    n_window = min(nao, ints.n_electrons // 2 + WINDOW_CONDUCTION_BANDS)
    in_window = self_consistency_basis == "window" or weights.band_energy > 0
    mse_window, mse_bands = window_residuals(D, Hk, X, mo_mask, n_window) if in_window else (0.0, 0.0)
    if offmesh is not None:
        Fq = sg(offmesh_fock(sg(P), ints, offmesh))
        Hq = Hq[:, :nao, :nao]
        compared_q = Hq if Hq_target is None else Hq_target[:, :nao, :nao]
        Dq = filtered(compared_q - Fq, offmesh.G)
        mse = 0.5 * (mse + jnp.mean(jnp.abs(Dq) ** 2))
        mse_orthonormal = 0.5 * (mse_orthonormal + orthonormal_mse(Dq, offmesh.X, offmesh.mo_mask))
        if in_window:
            q_window, q_bands = window_residuals(Dq, Hq, offmesh.X, offmesh.mo_mask, n_window)
            mse_window, mse_bands = 0.5 * (mse_window + q_window), 0.5 * (mse_bands + q_bands)
    penalty = {"ao": mse, "orthonormal": mse_orthonormal, "window": mse_window}[self_consistency_basis]
    loss = (weights.energy * _value_with_gradient_of(E, surrogate) + weights.self_consistency * penalty
            + weights.band_energy * mse_bands)
    return CrystalTerms(
        loss=loss,
        energy=E,
        self_consistency_rmse=jnp.sqrt(sg(mse)),
        orthonormal_rmse=jnp.sqrt(sg(mse_orthonormal)),
    )
