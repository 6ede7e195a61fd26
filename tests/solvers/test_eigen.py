"""Generalized eigensolver: PySCF/SciPy agreement, linear dependence, safe gradients."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from pyscf import gto, scf
from pyscf.scf import addons
from pyscf.scf import hf as pyscf_hf

from solvers.eigen import (
    LINDEP_THRESHOLD,
    batched_eigh_calls,
    canonical_orthogonalizer,
    canonical_orthogonalizer_fixed,
    eigh,
    lowdin_filter_from_overlap_filter,
    lowdin_overlap_filter,
    overlap_filter,
    overlap_filter_from_orthogonalizer,
    pad_orthogonalizer,
    solve_hamiltonian,
)

ENERGY_ATOL = 1e-10  # Hartree, orbital energies vs SciPy / PySCF
DENSITY_ATOL = 1e-9  # density-matrix elements vs reference
IDENTITY_ATOL = 1e-10  # X^T S X = I, P S P = 2P, C^T S C = I
ELECTRON_ATOL = 1e-10  # trace(P S) and sum(occ) vs n_electrons
FD_RTOL = 1e-6  # analytic vs finite-difference directional derivatives
FD_STEP = 1e-4  # Hartree, step along a unit-Frobenius-norm symmetric direction
PAD_ATOL = 1e-12  # padded vs unpadded results and gradients
DEGENERATE_SPREAD = 1e-10  # Hartree, the CH4 t2 levels really are degenerate
N_DIRECTIONS = 3  # random FD directions per case
WATER_WIDTH = 0.5  # Hartree; gives clearly fractional HOMO/LUMO occupations (~1.9/0.05)
METHANE_WIDTH = 0.3  # Hartree

WATER = "O 0 0 0.1173; H 0 0.7572 -0.4692; H 0 -0.7572 -0.4692"
# Exact tetrahedron: the occupied 1t2 level is triply degenerate.
METHANE = "C 0 0 0; H .629 .629 .629; H -.629 -.629 .629; H -.629 .629 -.629; H .629 -.629 -.629"
LIH = "Li 0 0 0; H 0 0 1.6"


def _core(atom, basis="def2-svp"):
    """(H_core, S, n_electrons) of a neutral closed-shell molecule, Hartree."""
    mol = gto.M(atom=atom, basis=basis)
    return mol.intor("int1e_kin") + mol.intor("int1e_nuc"), mol.intor("int1e_ovlp"), mol.nelectron


def _sym_direction(rng, n):
    D = rng.standard_normal((n, n))
    D = D + D.T
    return D / np.linalg.norm(D)


def _check_against_fd(loss, H, seed):
    """Compare jax.grad(loss) with 4th-order central differences along random directions."""
    loss = jax.jit(loss)
    H = jnp.asarray(H)
    grad = np.asarray(jax.grad(loss)(H))
    assert np.all(np.isfinite(grad))
    np.testing.assert_allclose(grad, grad.T, atol=1e-12 * np.abs(grad).max())
    rng = np.random.default_rng(seed)
    for _ in range(N_DIRECTIONS):
        D = _sym_direction(rng, H.shape[0])
        h = FD_STEP
        fd = (-loss(H + 2 * h * D) + 8 * loss(H + h * D) - 8 * loss(H - h * D) + loss(H - 2 * h * D)) / (12 * h)
        np.testing.assert_allclose(np.sum(grad * D), fd, rtol=FD_RTOL)


def _weights(rng, n):
    W = rng.standard_normal((n, n))
    return jnp.asarray(W + W.T)


# --- agreement with SciPy / PySCF -------------------------------------------------


def test_orthogonalizer_water():
    _, S, _ = _core(WATER)
    X = canonical_orthogonalizer(S)
    assert X.shape == S.shape
    np.testing.assert_allclose(X.T @ S @ X, np.eye(X.shape[1]), atol=IDENTITY_ATOL)


def _overlap_with_spectrum(s, complex_, seed):
    """S = U diag(s) U† with a random unitary (complex) or orthogonal (real) U."""
    rng = np.random.default_rng(seed)
    n = len(s)
    A = rng.standard_normal((n, n)) + (1j * rng.standard_normal((n, n)) if complex_ else 0.0)
    U, _ = np.linalg.qr(A)
    return (U * s) @ U.conj().T


def test_threshold_is_pyscf_default():
    """One threshold, the one PySCF's molecular SCF, KRKS and get_bands use."""
    assert LINDEP_THRESHOLD == pyscf_hf.overlap_zero_eigenvalue_threshold


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_orthogonalizer_matches_pyscf_at_default_threshold(complex_):
    """Eigenvalues straddling the threshold: same kept space as PySCF's canonical_orthogonalization.

    X is unique up to a unitary on its columns, so X X† (= U_kept s⁻¹ U_kept†) is compared.
    """
    s = np.array([0.3 * LINDEP_THRESHOLD, 3.0 * LINDEP_THRESHOLD, 1e-3, 0.5, 1.0, 2.0])
    S = _overlap_with_spectrum(s, complex_, seed=12)
    X = canonical_orthogonalizer(S)
    X_ref = pyscf_hf.canonical_orthogonalization(S)
    assert X.shape == X_ref.shape == (6, 5)
    assert X.dtype == (np.complex128 if complex_ else np.float64)
    np.testing.assert_allclose(X.conj().T @ S @ X, np.eye(5), atol=IDENTITY_ATOL)
    scale = 1.0 / s[1]
    np.testing.assert_allclose(X @ X.conj().T, X_ref @ X_ref.conj().T, atol=IDENTITY_ATOL * scale)


@pytest.mark.parametrize("complex_", [False, True], ids=["real", "complex"])
def test_fixed_shape_orthogonalizer_is_the_same_rule(complex_):
    """JAX fixed-shape version: zero columns where NumPy drops them, same kept space."""
    s = np.array([1e-9, 0.5 * LINDEP_THRESHOLD, 1e-2, 0.7, 1.3])
    S = np.stack([_overlap_with_spectrum(s, complex_, seed) for seed in (13, 14)])
    Xf, keep = canonical_orthogonalizer_fixed(jnp.asarray(S))
    Xf, keep = np.asarray(Xf), np.asarray(keep)
    for k in range(2):
        X = canonical_orthogonalizer(S[k])
        assert keep[k].tolist() == [False, False, True, True, True]
        np.testing.assert_array_equal(Xf[k][:, ~keep[k]], 0.0)
        Xk = Xf[k][:, keep[k]]
        np.testing.assert_allclose(Xk.conj().T @ S[k] @ Xk, np.eye(3), atol=IDENTITY_ATOL)
        np.testing.assert_allclose(Xk @ Xk.conj().T, X @ X.conj().T, atol=IDENTITY_ATOL / s[2])


@pytest.mark.parametrize("atom", [WATER, METHANE], ids=["water", "methane"])
def test_core_hamiltonian_matches_scipy(atom):
    H, S, n = _core(atom)
    res = solve_hamiltonian(H, canonical_orthogonalizer(S), n)
    e_ref, c_ref = scipy.linalg.eigh(H, S)
    np.testing.assert_allclose(res.mo_energy, e_ref, atol=ENERGY_ATOL)
    c_occ = c_ref[:, : n // 2]
    np.testing.assert_allclose(res.density, 2 * c_occ @ c_occ.T, atol=DENSITY_ATOL)
    P, C = np.asarray(res.density), np.asarray(res.mo_coeff)
    np.testing.assert_allclose(P @ S @ P, 2 * P, atol=IDENTITY_ATOL)
    np.testing.assert_allclose(np.trace(P @ S), n, atol=ELECTRON_ATOL)
    np.testing.assert_allclose(C.T @ S @ C, np.eye(C.shape[1]), atol=IDENTITY_ATOL)
    np.testing.assert_array_equal(res.mo_occ, np.where(np.arange(len(e_ref)) < n // 2, 2.0, 0.0))


def test_converged_fock_matches_pyscf():
    mol = gto.M(atom=WATER, basis="def2-svp")
    mf = scf.RHF(mol).run(conv_tol=1e-10)
    F, S = mf.get_fock(), mf.get_ovlp()
    e_ref, c_ref = mf.eig(F, S)
    P_ref = mf.make_rdm1(c_ref, mf.get_occ(e_ref, c_ref))
    res = solve_hamiltonian(F, canonical_orthogonalizer(S), mol.nelectron)
    np.testing.assert_allclose(res.mo_energy, e_ref, atol=ENERGY_ATOL)
    np.testing.assert_allclose(res.mo_occ, mf.get_occ(e_ref, c_ref), atol=0)
    np.testing.assert_allclose(res.density, P_ref, atol=DENSITY_ATOL)


def test_duplicated_basis_function_is_dropped():
    """An exactly duplicated AO gives a singular S; the solution is the original one."""
    H, S, n = _core(WATER)
    nao = H.shape[0]
    T = np.concatenate([np.eye(nao), np.eye(nao)[:, [3]]], axis=1)  # (nao, nao+1): chi = phi T
    H_dup, S_dup = T.T @ H @ T, T.T @ S @ T
    assert np.linalg.eigvalsh(S_dup)[0] < 1e-12
    X = canonical_orthogonalizer(S_dup)
    assert X.shape == (nao + 1, nao)
    res = solve_hamiltonian(H_dup, X, n)
    np.testing.assert_allclose(res.mo_energy, scipy.linalg.eigh(H, S, eigvals_only=True), atol=ENERGY_ATOL)
    ref = solve_hamiltonian(H, canonical_orthogonalizer(S), n)
    # Same density operator: contracting back to the original AOs gives the original P.
    np.testing.assert_allclose(T @ res.density @ T.T, ref.density, atol=DENSITY_ATOL)
    P = np.asarray(res.density)
    np.testing.assert_allclose(P @ S_dup @ P, 2 * P, atol=IDENTITY_ATOL)
    np.testing.assert_allclose(np.trace(P @ S_dup), n, atol=ELECTRON_ATOL)


def test_near_linear_dependence_matches_pyscf_canonical_orth():
    """Two H atoms 0.05 Å apart in aug-cc-pVDZ: S eigenvalues ~3e-6 and ~1e-4."""
    H, S, n = _core("H 0 0 0; H 0 0 0.05", basis="aug-cc-pvdz")
    threshold = 3e-4
    s = np.linalg.eigvalsh(S)
    n_dropped = int(np.sum(s <= threshold))
    assert n_dropped == 3
    X = canonical_orthogonalizer(S, threshold=threshold)
    assert X.shape == (S.shape[0], S.shape[0] - n_dropped)
    np.testing.assert_allclose(X.T @ S @ X, np.eye(X.shape[1]), atol=IDENTITY_ATOL)
    X_ref = addons.canonical_orth_(S, thr=threshold)
    e_ref = np.linalg.eigvalsh(X_ref.T @ H @ X_ref)
    res = solve_hamiltonian(H, X, n)
    np.testing.assert_allclose(res.mo_energy, e_ref, atol=ENERGY_ATOL)
    P = np.asarray(res.density)
    np.testing.assert_allclose(np.trace(P @ S), n, atol=ELECTRON_ATOL)
    np.testing.assert_allclose(P @ S @ P, 2 * P, atol=IDENTITY_ATOL)


def test_overlap_filter_is_the_rational_function_of_s():
    """G = S²(S² + τ²)⁻¹, built here with a linear solve instead of an eigendecomposition,
    on a complex S(k)-like matrix with a nearly dependent direction (s ~ 1e-6): that
    direction is removed, well-conditioned ones are kept, and a unitary change of basis
    commutes with the filter."""
    rng = np.random.default_rng(4)
    A = rng.normal(size=(6, 6)) + 1j * rng.normal(size=(6, 6))
    U, _ = np.linalg.qr(A)
    s = np.array([1e-6, 2e-4, 1e-3, 0.05, 0.8, 2.0])
    S = (U * s) @ U.conj().T
    tau = 1e-3
    G = overlap_filter(S, tau)
    S2 = S @ S
    np.testing.assert_allclose(G, np.linalg.solve((S2 + tau**2 * np.eye(6)).T, S2.T).T, atol=1e-10)
    weights = np.real(np.einsum("ai,ab,bi->i", U.conj(), G, U))
    np.testing.assert_allclose(weights, s**2 / (s**2 + tau**2), atol=1e-10)
    assert weights[0] < 1e-5 and weights[-2] > 0.999
    V, _ = np.linalg.qr(rng.normal(size=(6, 6)) + 1j * rng.normal(size=(6, 6)))
    np.testing.assert_allclose(overlap_filter(V @ S @ V.conj().T, tau), V @ G @ V.conj().T, atol=1e-10)
    with pytest.raises(ValueError):
        overlap_filter(S, 0.0)


def test_lowdin_filter_is_the_square_root_of_s_times_the_filter_and_weighs_orthonormal_directions_by_g():
    """S^{1/2} g(S), against SciPy's matrix square root times :func:`overlap_filter`; in the
    orthonormal basis X = U s^{-1/2} of S it is diag(g(s)) (so X† G_L A G_L X = g Ã g);
    rebuilt from G alone (the training step's JAX form) it is the same to 1e-9 relative."""
    from scipy.linalg import sqrtm

    rng = np.random.default_rng(6)
    U, _ = np.linalg.qr(rng.normal(size=(6, 6)) + 1j * rng.normal(size=(6, 6)))
    s = np.array([1e-6, 2e-4, 1e-3, 0.05, 0.8, 3.0])
    S = (U * s) @ U.conj().T
    tau = 1e-3
    G_L = lowdin_overlap_filter(S, tau)
    np.testing.assert_allclose(G_L, sqrtm(S) @ overlap_filter(S, tau), atol=1e-10)
    X = U / np.sqrt(s)
    np.testing.assert_allclose(X.conj().T @ G_L @ U, np.diag(s**2 / (s**2 + tau**2)), atol=1e-9)
    from_g = np.asarray(jax.jit(lambda g: lowdin_filter_from_overlap_filter(g, tau))(jnp.asarray(overlap_filter(S, tau)[None])))[0]
    np.testing.assert_allclose(from_g, G_L, atol=1e-9 * np.abs(G_L).max())
    with pytest.raises(ValueError):
        lowdin_overlap_filter(S, 0.0)


def test_overlap_filter_from_a_padded_orthogonalizer_is_the_filter_of_s():
    """Built from the canonical orthogonalizer (zero-padded as in a training batch, in JAX
    and in NumPy) G is :func:`overlap_filter` of S, on a def2-SVP molecule with overlap
    eigenvalues near τ and on a matrix with a direction the orthogonalizer drops."""
    mol = gto.M(atom="C 0 0 0; O 0 0 1.2; H 0 0.94 -0.54; H 0 -0.94 -0.54", basis="def2-svp")
    S = mol.intor_symmetric("int1e_ovlp")
    tau = 3e-2
    assert np.linalg.eigvalsh(S)[0] < tau  # the filter acts on this molecule
    X = canonical_orthogonalizer(S)
    G = overlap_filter(S, tau)
    np.testing.assert_allclose(overlap_filter_from_orthogonalizer(X, tau, np), G, atol=1e-12, rtol=0)
    n = S.shape[0]
    padded = np.zeros((n + 3, n + 3))
    padded[:n, : X.shape[1]] = X
    G_jax = np.asarray(jax.jit(lambda x: overlap_filter_from_orthogonalizer(x, tau))(jnp.asarray(padded[None])))[0]
    np.testing.assert_allclose(G_jax[:n, :n], G, atol=1e-12, rtol=0)
    assert not G_jax[n:].any() and not G_jax[:, n:].any()
    U, _ = np.linalg.qr(np.random.default_rng(5).normal(size=(5, 5)))
    s = np.array([1e-8, 1e-3, 0.02, 0.5, 1.5])  # the first is dropped: LINDEP_THRESHOLD
    S = (U * s) @ U.T
    X = canonical_orthogonalizer(S)
    assert X.shape[1] == 4
    np.testing.assert_allclose(overlap_filter_from_orthogonalizer(X, tau, np), overlap_filter(S, tau), atol=1e-12)
    with pytest.raises(ValueError):
        overlap_filter_from_orthogonalizer(X, 0.0, np)


# --- smearing ---------------------------------------------------------------------


def test_smearing_occupations():
    H, S, n = _core(METHANE)
    res = solve_hamiltonian(H, canonical_orthogonalizer(S), n, smearing=METHANE_WIDTH)
    occ = np.asarray(res.mo_occ)
    np.testing.assert_allclose(occ.sum(), n, atol=ELECTRON_ATOL)
    np.testing.assert_allclose(np.trace(np.asarray(res.density) @ S), n, atol=ELECTRON_ATOL)
    assert np.all((occ >= 0) & (occ <= 2)) and np.all(np.diff(occ) <= 0)
    assert 0.01 < occ[n // 2] < 1.99  # the width really produces fractional occupations
    np.testing.assert_allclose(occ[2:5], occ[2], rtol=0, atol=1e-12)  # degenerate levels share


def test_odd_electron_count_needs_smearing():
    H, S, _ = _core(WATER)
    X = canonical_orthogonalizer(S)
    with pytest.raises(ValueError):
        solve_hamiltonian(H, X, 9)
    with pytest.raises(ValueError):
        solve_hamiltonian(H, X, 2 * X.shape[1] + 2)
    np.testing.assert_allclose(solve_hamiltonian(H, X, 9, smearing=0.1).mo_occ.sum(), 9, atol=ELECTRON_ATOL)


# --- gradients --------------------------------------------------------------------


@pytest.mark.parametrize(
    "atom, smearing",
    [(WATER, None), (WATER, WATER_WIDTH), (METHANE, METHANE_WIDTH)],
    ids=["water", "water-smeared", "methane-smeared"],
)
def test_density_gradient_matches_fd(atom, smearing):
    H, S, n = _core(atom)
    X = jnp.asarray(canonical_orthogonalizer(S))
    W = _weights(np.random.default_rng(1), H.shape[0])
    _check_against_fd(lambda H: jnp.sum(W * solve_hamiltonian(H, X, n, smearing=smearing).density), H, seed=2)


def test_degenerate_methane_density_gradient_matches_fd():
    """CH4 1t2 is triply degenerate and occupied: the density gradient is finite and exact.

    The degeneracy is checked first with SciPy, so the finite-difference comparison
    really exercises degenerate occupied levels (where Γ_ij = (f_i − f_j)/(ε_i − ε_j)
    must drop the occupied–occupied pairs).
    """
    H, S, n = _core(METHANE)
    e = scipy.linalg.eigh(H, S, eigvals_only=True)
    assert np.ptp(e[2:5]) < DEGENERATE_SPREAD and e[5] - e[4] > 1.0 and n // 2 == 5
    X = jnp.asarray(canonical_orthogonalizer(S))
    W = _weights(np.random.default_rng(1), H.shape[0])
    _check_against_fd(lambda H: jnp.sum(W * solve_hamiltonian(H, X, n).density), H, seed=2)


def test_eigenvalue_gradient_matches_fd():
    H, S, n = _core(WATER)
    X = jnp.asarray(canonical_orthogonalizer(S))
    w = jnp.asarray(np.random.default_rng(3).standard_normal(X.shape[1]))
    _check_against_fd(lambda H: jnp.dot(w, solve_hamiltonian(H, X, n).mo_energy), H, seed=4)


def test_occupation_gradient_matches_fd():
    """Smeared occupations: f'(ε) and the chemical-potential shift at fixed N."""
    H, S, n = _core(WATER)
    X = jnp.asarray(canonical_orthogonalizer(S))
    w = jnp.asarray(np.random.default_rng(5).standard_normal(X.shape[1]))
    _check_against_fd(lambda H: jnp.dot(w, solve_hamiltonian(H, X, n, smearing=WATER_WIDTH).mo_occ), H, seed=6)


def test_orbital_gradient_matches_fd():
    """Sign-invariant loss of individual (non-degenerate) orbitals: sum_i w_i c_i^T W c_i."""
    H, S, n = _core(WATER)
    X = jnp.asarray(canonical_orthogonalizer(S))
    rng = np.random.default_rng(7)
    W, w = _weights(rng, H.shape[0]), jnp.asarray(rng.standard_normal(X.shape[1]))

    def loss(H):
        C = solve_hamiltonian(H, X, n).mo_coeff
        return jnp.dot(w, jnp.einsum("mi,mn,ni->i", C, W, C))

    _check_against_fd(loss, H, seed=8)


def test_orbital_gradient_degenerate_gauge_invariant():
    """CH4 occupied orbitals, equal weights within the degenerate 1t2 level."""
    H, S, n = _core(METHANE)
    X = jnp.asarray(canonical_orthogonalizer(S))
    W = _weights(np.random.default_rng(10), H.shape[0])
    w = jnp.zeros(X.shape[1]).at[:5].set(jnp.array([0.7, -1.3, 0.4, 0.4, 0.4]))

    def loss(H):
        C = solve_hamiltonian(H, X, n).mo_coeff
        return jnp.dot(w, jnp.einsum("mi,mn,ni->i", C, W, C))

    _check_against_fd(loss, H, seed=11)


# --- padding and batching ---------------------------------------------------------


@pytest.mark.parametrize("smearing", [None, WATER_WIDTH], ids=["aufbau", "smeared"])
def test_padded_batch_matches_unpadded(smearing):
    """H2O (24 AOs, 10 e) and LiH (14 AOs, 4 e) in one vmapped, padded call."""
    systems = [_core(WATER), _core(LIH)]
    nao_pad, nmo_pad = 27, 26
    rng = np.random.default_rng(9)
    W_pad = np.asarray(_weights(rng, nao_pad))

    def loss(H, X, mask, n):
        P = solve_hamiltonian(H, X, n, mo_mask=mask, smearing=smearing).density
        return jnp.sum(W_pad[: H.shape[0], : H.shape[0]] * P)

    Hs, Xs, masks, ns, refs = [], [], [], [], []
    for H, S, n in systems:
        nao = H.shape[0]
        X = canonical_orthogonalizer(S)
        ref = jax.jit(partial(solve_hamiltonian, n_electrons=n, smearing=smearing))(H, X)
        refs.append((ref, jax.jit(jax.grad(loss), static_argnums=(2, 3))(jnp.asarray(H), X, None, n)))
        X_pad, mask = pad_orthogonalizer(X, nmo_pad, nao_pad)
        H_pad = rng.standard_normal((nao_pad, nao_pad))  # garbage outside the real block
        H_pad[:nao, :nao] = H
        Hs.append(H_pad), Xs.append(X_pad), masks.append(mask), ns.append(n)
    batch = [jnp.asarray(np.stack(a)) for a in (Hs, Xs, masks, ns)]

    res = jax.jit(jax.vmap(lambda H, X, m, n: solve_hamiltonian(H, X, n, mo_mask=m, smearing=smearing)))(*batch)
    grads = jax.jit(jax.vmap(jax.grad(loss)))(*batch)
    for b, ((H, _, n), (ref, ref_grad)) in enumerate(zip(systems, refs)):
        nao, nmo = H.shape[0], ref.mo_energy.shape[0]
        np.testing.assert_allclose(res.density[b, :nao, :nao], ref.density, atol=PAD_ATOL)
        np.testing.assert_allclose(res.density[b, nao:], 0.0, atol=0)
        np.testing.assert_allclose(res.mo_energy[b, :nmo], ref.mo_energy, atol=PAD_ATOL)
        assert np.all(res.mo_energy[b, nmo:] > ref.mo_energy[-1])
        np.testing.assert_allclose(res.mo_occ[b, :nmo], ref.mo_occ, atol=PAD_ATOL)
        np.testing.assert_array_equal(res.mo_occ[b, nmo:], 0.0)
        np.testing.assert_allclose(res.mo_occ[b].sum(), n, atol=ELECTRON_ATOL)
        np.testing.assert_array_equal(res.mo_coeff[b, :, nmo:], 0.0)
        scale = np.abs(ref_grad).max()
        np.testing.assert_allclose(grads[b, :nao, :nao], ref_grad, atol=PAD_ATOL * scale)
        np.testing.assert_array_equal(grads[b, nao:], 0.0)
        np.testing.assert_array_equal(grads[b, :, nao:], 0.0)


def test_numpy_aufbau_equals_solve_hamiltonian():
    """The NumPy twin used by prediction gives the JAX solver's orbitals and density."""
    from solvers.eigen import aufbau_orbitals, canonical_orthogonalizer, solve_hamiltonian

    rng = np.random.default_rng(4)
    A = rng.normal(size=(9, 9))
    S = A @ A.T / 9 + np.eye(9)
    H = rng.normal(size=(9, 9))
    H = H + H.T
    X = canonical_orthogonalizer(S)
    ref = solve_hamiltonian(jnp.asarray(H), jnp.asarray(X), 6)
    got = aufbau_orbitals(H, X, 6)
    assert np.abs(got.density - np.asarray(ref.density)).max() < 1e-12
    assert np.abs(got.mo_energy - np.asarray(ref.mo_energy)).max() < 1e-12
    assert np.abs(got.mo_occ - np.asarray(ref.mo_occ)).max() == 0.0
    with pytest.raises(ValueError, match="even"):
        aufbau_orbitals(H, X, 5)


@pytest.mark.parametrize("dtype", [np.float64, np.complex128])
def test_serial_eigh_equals_lapack_on_stacks_and_under_vmap(dtype):
    """:func:`solvers.eigen.eigh` is LAPACK's decomposition of each matrix of a stack,
    directly and under (nested) vmap, and compiles to single-matrix calls only."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(2, 3, 6, 6)).astype(dtype)
    if dtype == np.complex128:
        a = a + 1j * rng.normal(size=a.shape)
    a = a + np.conj(np.swapaxes(a, -1, -2))
    w_ref, v_ref = np.linalg.eigh(a)
    for fn in (eigh, jax.vmap(eigh), jax.vmap(jax.vmap(eigh))):
        w, v = jax.jit(fn)(a)
        np.testing.assert_allclose(w, w_ref, atol=1e-12)
        overlap = np.abs(np.einsum("...ij,...ik->...jk", np.conj(v_ref), np.asarray(v)))
        np.testing.assert_allclose(overlap, np.broadcast_to(np.eye(6), overlap.shape), atol=1e-10)  # same vectors, up to phase
        hlo = jax.jit(fn).lower(a).compile().as_text()
        assert not batched_eigh_calls(hlo), batched_eigh_calls(hlo)
    assert batched_eigh_calls(jax.jit(jnp.linalg.eigh).lower(a).compile().as_text())  # the check can fail
