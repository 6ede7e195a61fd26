"""Using a trained model from Python: load a run, predict, seed PySCF.

:func:`load` returns a :class:`MoleculeModel` or a :class:`CrystalModel`, whichever
kind the run directory holds; giving a model the other kind of structure is a
one-line :class:`~basis.errors.InputError` naming both kinds.

Example:
    >>> import vardft
    >>> model = vardft.load("runs/water")                     # doctest: +SKIP
    >>> pred = model.predict(vardft.System.from_atoms(atoms))   # doctest: +SKIP
    >>> pred.hamiltonian.shape, pred.energy                     # doctest: +SKIP
    >>> mf.kernel(dm0=vardft.initial_guess("runs/water", mol))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from basis.crystal import make_kpts, supercell_map, to_cell
from basis.errors import CheckpointError, InputError
from basis.integrals import DEFAULT_GRID_LEVEL, build_integrals
from basis.layout import ao_offsets, ao_rotation
from basis.pbc_integrals import build_periodic_integrals
from basis.pbc_sap import LatticeBlocks
from basis.sap import sap_hamiltonian
from basis.system import System
from basis.units import BOHR_ANGSTROM
from solvers import periodic
from solvers.bands import unfolding_weights
from solvers.eigen import aufbau_orbitals, canonical_orthogonalizer
from solvers.energy import total_energy
from solvers.sparse_bands import gap_shift, window_eigenvalues_sparse
from vardft.tasks import CrystalTask, MoleculeTask
from vardft.train import load_params, read_run


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A predicted Hamiltonian of a molecule and what follows from it (PySCF AO order, Hartree).

    Attributes:
        hamiltonian: (nao, nao) H.
        overlap: (nao, nao) S.
        density_matrix: (nao, nao) closed-shell P from the occupied eigenvectors of H.
        mo_energy: (nmo,) eigenvalues of H C = S C ε.
        mo_coeff: (nao, nmo) eigenvectors.
        energy: variational total energy E[P] with the run's functional, Hartree
            (``None`` unless asked for: it needs a DF factor and an XC grid).
        system: the input.
    """

    hamiltonian: np.ndarray
    overlap: np.ndarray
    density_matrix: np.ndarray
    mo_energy: np.ndarray
    mo_coeff: np.ndarray
    energy: float | None
    system: System

    @property
    def homo(self) -> float:
        return float(self.mo_energy[self.system.n_electrons_all // 2 - 1])

    @property
    def lumo(self) -> float:
        return float(self.mo_energy[self.system.n_electrons_all // 2])


@dataclasses.dataclass(frozen=True)
class CrystalPrediction:
    """A predicted crystal Hamiltonian at the run's k-mesh (PySCF AO order, Hartree).

    Attributes:
        kpts: (nk, 3) Cartesian k-points, 1/Bohr.
        hamiltonian: (nk, nao, nao) complex H(k).
        overlap: (nk, nao, nao) complex S(k).
        density_matrix: (nk, nao, nao) complex P(k) filling the lowest n_electrons/2
            bands at every k (PySCF's ``dm_kpts``).
        mo_energy: (nk, nmo) band energies.
        energy: variational energy per cell E[P], Hartree.
        n_electrons: valence electrons per cell.
        system: the input.
    """

    kpts: np.ndarray
    hamiltonian: np.ndarray
    overlap: np.ndarray
    density_matrix: np.ndarray
    mo_energy: np.ndarray
    energy: float
    n_electrons: int
    system: System

    @property
    def homo(self) -> float:
        """Valence-band maximum over the k-mesh, Hartree."""
        return float(self.mo_energy[:, self.n_electrons // 2 - 1].max())

    @property
    def lumo(self) -> float:
        """Conduction-band minimum over the k-mesh, Hartree."""
        return float(self.mo_energy[:, self.n_electrons // 2].min())


class Model:
    """A trained (or untrained, ``--steps 0``) Hamiltonian model from a run directory."""

    kind = ""

    def __init__(self, run_dir: str, run: tuple | None = None):
        """``run``: :func:`vardft.train.read_run` of ``run_dir`` if already read."""
        self.run_dir = run_dir
        self.record, self.config, self.model_config = run or read_run(run_dir)
        if self.config.kind != self.kind:
            raise CheckpointError(f"{run_dir} holds a {self.config.kind} model, not a {self.kind} model")
        self.params, self.step = load_params(run_dir, self.model_config, self.config)

    @property
    def xc(self) -> str:
        return self.config.xc

    @property
    def basis(self) -> str:
        return self.config.basis

    def _check(self, system) -> System:
        system = System.from_any(system)
        kind = "crystal" if system.is_periodic else "molecule"
        if kind != self.kind:
            raise InputError(f"the model in {self.run_dir} is a {self.kind} model; got a {kind} ({system.formula})")
        unknown = sorted(set(system.symbols) - set(self.model_config.elements))
        if unknown:
            raise InputError(
                f"the model in {self.run_dir} knows elements {', '.join(self.model_config.elements)}; "
                f"got {', '.join(unknown)}"
            )
        system.require_closed_shell()
        charges = self.record.get("charges")
        if charges is not None and system.charge not in charges:
            warnings.warn(
                f"{system.formula} has charge {system.charge:+d}; the model in {self.run_dir} was trained on "
                f"charge(s) {', '.join(f'{c:+d}' for c in charges)} only: expect a poor prediction",
                stacklevel=3,
            )
        return system


class MoleculeModel(Model):
    """A molecular model: :meth:`predict` gives H, orbitals, density and energy."""

    kind = "molecule"

    @property
    def task(self) -> MoleculeTask:
        return MoleculeTask(self.config)

    def hamiltonian(self, system) -> np.ndarray:
        """Predicted H (nao, nao) of one molecule, Hartree, PySCF AO order (built in the
        molecule's frame and rotated back: exactly E(3)-equivariant)."""
        return self.task.lab_hamiltonian(self.params, self.model_config, self._check(system))

    def predict(self, system, energy: bool = False) -> Prediction:
        """Hamiltonian, orbitals and density of one molecule (and its variational energy
        with ``energy=True``): :meth:`predict_many` of one."""
        return self.predict_many([system], energy=energy)[0]

    def predict_many(self, systems, energy: bool = False) -> list[Prediction]:
        """Hamiltonians, orbitals and densities of molecules; their energies with ``energy``.

        Everything is computed in each molecule's own frame (:mod:`basis.frame`) and the
        matrices rotated back, so H, S, P and C are exactly equivariant and orbital
        energies (and the energy) exactly invariant. The network runs on batches of
        molecules padded to at most :data:`vardft.tasks.PREDICT_SHAPES` shapes (one
        compilation each). What is built per
        molecule depends on the run's baseline: ``"sap"`` (the fast path; molecule runs'
        default) needs only
        one-electron-type integrals (S, T, V_nuc and the tabulated atomic potentials) —
        no density-fitting factor, no XC grid — then one diagonalisation; ``"minao"``
        builds integrals on the run's training grid for its Kohn–Sham baseline. The
        energy, when asked for, is evaluated on PySCF's grid level 3 (built then, one
        molecule at a time).
        """
        c = self.config
        systems = [self._check(s) for s in systems]
        placed = [self.task.to_frame(s) for s in systems]
        inside = [p[0] for p in placed]
        moles = [s.to_mole(c.basis) for s in inside]
        if c.baseline == "sap":  # the fast path: one molecule build, one-electron-type integrals
            bases, overlaps = map(list, zip(*[sap_hamiltonian(mol) for mol in moles]))
        else:
            bases, overlaps = None, [mol.intor_symmetric("int1e_ovlp") for mol in moles]
        Xs = [canonical_orthogonalizer(S) for S in overlaps]  # the filter's and the diagonalisation's
        Hs = self.task.hamiltonians(self.params, self.model_config, inside, bases=bases, orthogonalizers=Xs)
        out = []
        for system, (inner, frame), H, mol, S, X in zip(systems, placed, Hs, moles, overlaps, Xs):
            res = aufbau_orbitals(H, X, mol.nelectron)
            D = ao_rotation(c.basis, system.symbols, frame.rotation)
            back = lambda m: D.T @ np.asarray(m) @ D  # noqa: E731  M_lab = Dᵀ M_frame D
            out.append(Prediction(
                hamiltonian=back(H),
                overlap=back(S),
                density_matrix=back(res.density),
                mo_energy=res.mo_energy,
                mo_coeff=D.T @ res.mo_coeff,
                energy=self._energy(inner, res.density) if energy else None,
                system=system,
            ))
        return out

    def _energy(self, system: System, density) -> float:
        """E[P] of a molecule in its frame on PySCF's grid level 3 (its integrals built here
        and dropped: one molecule's grid and DF factor in memory at a time)."""
        ints = build_integrals(system, self.xc, self.basis, DEFAULT_GRID_LEVEL)
        return float(_total_energy(jnp.asarray(density), ints))


_total_energy = jax.jit(total_energy)


def insulator_density(H: np.ndarray, S: np.ndarray, n_electrons: int):
    """P(k) (nk, nao, nao) filling the lowest n_electrons/2 bands of H(k) C = S(k) C ε at
    each k, and ε (nk, nmo), Hartree (linearly dependent directions as PySCF's KRKS)."""
    e, C = periodic.generalized_eigh(jnp.asarray(H), jnp.asarray(S))
    occ = jnp.zeros(e.shape).at[:, : n_electrons // 2].set(2.0)
    return periodic.density_matrices(C, occ), np.asarray(e)


class CrystalModel(Model):
    """A crystal model: H(k) at any k, bands, and the prediction at the run's k-mesh."""

    kind = "crystal"

    @property
    def task(self) -> CrystalTask:
        return CrystalTask(self.config)

    @property
    def pseudo(self) -> str:
        return self.config.pseudo

    def hamiltonian(self, system, kpts, ints=None) -> tuple[np.ndarray, np.ndarray]:
        """``(H(k), S(k))``, (nk, nao, nao) complex, Hartree, at Cartesian ``kpts`` (nk, 3), 1/Bohr."""
        return self.task.hamiltonian(self.params, self.model_config, self._check(system), kpts, ints)

    def real_space(self, system) -> LatticeBlocks:
        """H(R) and S(R) of ``system`` (any cell of the model's elements, e.g. a supercell far
        larger than the training cells) as atom-pair blocks, Hartree, PySCF AO order within
        each atom: :class:`basis.pbc_sap.LatticeBlocks`. Cost and memory linear in the atoms.

        Raises:
            InputError: the run's baseline is not ``sap`` (the minao baseline needs a
                whole-cell build), or the cell does not suit the model.
        """
        return self.task.real_space(self.params, self.model_config, self._check(system))

    def bands(self, system, kpts, nbands: int | None = None, window: tuple[int, int] | None = None,
              solver: str = "auto") -> np.ndarray:
        """Band energies (nk, nb), Hartree, ascending, at Cartesian ``kpts`` (nk, 3), 1/Bohr.

        Without ``nbands`` every band, solved with S(k) as PySCF's ``get_bands`` does
        (linearly dependent directions at 1e30). With ``nbands`` only the bands of
        :meth:`band_window` (the ``nbands`` nearest the Fermi level), from a dense solver
        that computes no others. Runs on the sap baseline go one k-point at a time from the
        real-space blocks, so memory holds one H(k), S(k) pair at a time.

        Args:
            window: the bands to solve for, ``(first, last)`` (inclusive, from 0), instead
                of ``nbands``; from :func:`band_window` when the caller already has the
                counts (a 1,000-atom PySCF cell takes a second to build).
            solver: for a window of bands on a sap run, ``"dense"`` (LAPACK's subset
                solver on dense H(k), S(k)), ``"sparse"`` (sparse H(k), S(k), shift-invert
                Lanczos: :mod:`solvers.sparse_bands`) or ``"auto"``: sparse from
                :data:`SPARSE_MIN_AOS` AOs.

        Raises:
            InputError: ``nbands`` < 1, an unknown ``solver``, ``"sparse"`` without a
                window or on a run that is not sap or has an overlap filter, or the cell
                does not suit the model.
        """
        system = self._check(system)
        kpts = np.asarray(kpts, dtype=np.float64).reshape(-1, 3)
        if solver not in ("auto", "dense", "sparse"):
            raise InputError(f"unknown band solver {solver!r}; use auto, dense or sparse")
        if window is None and nbands is not None:
            window = self.band_window(system, nbands)
        if solver == "sparse" and (window is None or not self._has_real_space):
            raise InputError("the sparse band solver finds the bands nearest the Fermi level (give nbands) of a "
                             "model on the sap baseline without an overlap filter")
        blocks = self.real_space(system) if self._has_real_space else None
        if blocks is not None and window is not None and (
                solver == "sparse" or (solver == "auto" and blocks.nao >= SPARSE_MIN_AOS)):
            return _sparse_window_bands(blocks, kpts, window)
        pairs = self._bloch_pairs(system, kpts, blocks)
        if window is None:
            return np.stack([np.asarray(periodic.generalized_eigh(jnp.asarray(h), jnp.asarray(s))[0]) for h, s in pairs])
        return np.stack([_window_eigenvalues(h, s, window) for h, s in pairs])

    def _bloch_pairs(self, system: System, kpts: np.ndarray, blocks: LatticeBlocks | None = None):
        """``(H(k), S(k))`` one k-point at a time: from the real-space blocks on a sap run
        (``blocks``, built here when not given), else all at once from :meth:`hamiltonian`."""
        if self._has_real_space:
            blocks = blocks if blocks is not None else self.real_space(system)
            return (blocks.bloch_pair(k) for k in kpts)
        return zip(*self.hamiltonian(system, kpts))

    @property
    def _has_real_space(self) -> bool:
        """Whether H(k) is the Bloch sum of :meth:`real_space` blocks (sap runs without an
        overlap filter)."""
        return self.config.baseline == "sap" and not self.config.overlap_filter

    def unfolded_bands(self, supercell, primitive, kpts, nbands: int | None = None,
                       window: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Bands of ``supercell`` unfolded onto the Brillouin zone of ``primitive``: at each
        primitive wavevector k, the supercell's states and their spectral weight at k
        (:func:`solvers.bands.unfolding_weights`; a perfect supercell gives the primitive
        bands with weight 1 and the folded-in ones with weight 0).

        Args:
            supercell: the cell to solve: an unstrained supercell of ``primitive``, atoms
                displaced or not, every site taken once; each atom matched to a primitive
                site by :func:`basis.crystal.supercell_map`.
            primitive: the cell whose Brillouin zone the bands unfold onto.
            kpts: (nk, 3) Cartesian wavevectors of the primitive cell (its band path), 1/Bohr.
            nbands, window: as :meth:`bands` (the eigenvectors come from a full dense
                solve at each k either way).

        Returns:
            ``(energies (nk, nb) Hartree ascending, weights (nk, nb) in [0, 1])``.

        Raises:
            GeometryError: ``supercell`` is not a supercell of ``primitive``.
        """
        supercell, primitive = self._check(supercell), self._check(primitive)
        mapping = supercell_map(primitive, supercell)
        offsets_p = ao_offsets(self.basis, primitive.symbols)
        offsets_s = ao_offsets(self.basis, supercell.symbols)
        sizes = np.diff(offsets_s)
        atom = np.repeat(np.arange(len(sizes)), sizes)
        local = np.arange(offsets_s[-1]) - offsets_s[atom]
        orbital = offsets_p[mapping.site[atom]] + local
        translation = mapping.translation[atom] @ np.asarray(primitive.cell, dtype=np.float64) / BOHR_ANGSTROM
        kpts = np.asarray(kpts, dtype=np.float64).reshape(-1, 3)
        if window is None and nbands is not None:
            window = self.band_window(supercell, nbands)
        pairs = self._bloch_pairs(supercell, kpts)
        energies, weights = [], []
        for k, (h, s) in zip(kpts, pairs):
            X = canonical_orthogonalizer(s)
            e, c = np.linalg.eigh(X.conj().T @ h @ X)
            C = X @ c
            if window is not None:
                e, C = e[window[0]: window[1] + 1], C[:, window[0]: window[1] + 1]
            energies.append(e)
            weights.append(unfolding_weights(C, s @ C, orbital, translation, k, int(offsets_p[-1]), e))
        return np.stack(energies), np.stack(weights)

    def band_window(self, system, nbands: int) -> tuple[int, int]:
        """``(first, last)`` band indices (inclusive, from 0) of the ``nbands`` bands nearest
        the Fermi level of an insulator: half occupied, half empty, within the AOs.

        Raises:
            InputError: ``nbands`` < 1.
        """
        cell = to_cell(self._check(system), basis=self.basis, pseudo=self.pseudo, mesh=self.config.mesh)
        return band_window(int(cell.nao_nr()), int(cell.nelectron) // 2, nbands)

    def kpts(self, system) -> np.ndarray:
        """The run's k-mesh for ``system``, Cartesian (nk, 3), 1/Bohr."""
        cell = to_cell(self._check(system), basis=self.basis, pseudo=self.pseudo, mesh=self.config.mesh)
        return make_kpts(cell, self.config.kmesh)

    def predict(self, system) -> CrystalPrediction:
        """H(k), S(k), P(k), bands and variational energy per cell at the run's k-mesh."""
        system = self._check(system)
        c = self.config
        ints = build_periodic_integrals(system, c.xc, c.basis, c.pseudo, c.kmesh, c.mesh)
        H, S = self.hamiltonian(system, np.asarray(ints.kpts), ints)
        P, bands = insulator_density(H, S, ints.n_electrons)
        return CrystalPrediction(
            kpts=np.asarray(ints.kpts),
            hamiltonian=H,
            overlap=S,
            density_matrix=np.asarray(P),
            mo_energy=bands,
            energy=float(periodic.total_energy(P, ints)),
            n_electrons=int(ints.n_electrons),
            system=system,
        )


def band_window(nao: int, n_occupied: int, nbands: int) -> tuple[int, int]:
    """``(first, last)`` indices (inclusive, from 0) of the ``nbands`` bands nearest the
    Fermi level among ``nao``, ``n_occupied`` of them occupied: half below, half above.

    Raises:
        InputError: ``nbands`` < 1.
    """
    if nbands < 1:
        raise InputError(f"nbands must be at least 1, not {nbands}")
    first = max(0, min(n_occupied - nbands // 2, nao - nbands))
    return first, min(nao, first + nbands) - 1


SPARSE_MIN_AOS = 16384
"""``CrystalModel.bands(solver="auto")`` solves a window of bands with the sparse solver
from this many AOs (Si gth-szv: 4,096 atoms), the dense one below. Measured on displaced Si
supercells, 16 bands (docs/results.md): at 4,096 AOs the dense path took 337 s and 2.2 GB in
all, the sparse one 508 s and 3.6 GB; at 5,832 AOs the bands alone took 24 s per k-point
dense and 262 s sparse, and the peaks were 3.6 and 5.6 GB. Both gaps grow with size; fitted
to the two sizes, the peaks meet near 16,000 AOs (~21 GB each), so below that the dense
path is faster and lighter and above it neither fits this 23-GB machine well."""


def _sparse_window_bands(blocks: LatticeBlocks, kpts: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Bands ``window`` at each k-point from sparse H(k), S(k), shifted into the gap found at
    the first k-point (between the window's lower and upper halves)."""
    out, sigma = [], None
    for k in kpts:
        H, S = blocks.bloch_pair_sparse(k)
        if sigma is None:
            sigma = gap_shift(H, S, (window[0] + window[1] + 1) // 2)
        out.append(window_eigenvalues_sparse(H, S, window, sigma))
    return np.stack(out)


def _window_eigenvalues(h: np.ndarray, s: np.ndarray, window: tuple[int, int]) -> np.ndarray:
    """Eigenvalues ``window[0] … window[1]`` of H c = ε S c (LAPACK's subset solver); at a
    time-reversal-invariant k-point (every phase ±1: H, S real to round-off) in real
    arithmetic, about 4× cheaper."""
    if np.abs(h.imag).max() <= 1e-13 * np.abs(h).max() and np.abs(s.imag).max() <= 1e-13 * np.abs(s).max():
        h, s = np.ascontiguousarray(h.real), np.ascontiguousarray(s.real)
    return scipy.linalg.eigh(h, s, eigvals_only=True, subset_by_index=window, driver="gvx",
                             overwrite_a=True, overwrite_b=True, check_finite=False)


MODELS = {"molecule": MoleculeModel, "crystal": CrystalModel}


def load(run_dir: str, kind: str | None = None) -> Model:
    """The model of a run directory written by ``vardft train``: a :class:`MoleculeModel`
    or a :class:`CrystalModel`, as the run says.

    Args:
        kind: ``"molecule"`` or ``"crystal"`` to require that kind.

    Raises:
        CheckpointError: not a vardft run directory, a run of the other ``kind``, or a
            checkpoint that does not match its config.
    """
    run = read_run(run_dir)
    found = run[1].kind
    if kind is not None and kind != found:
        raise CheckpointError(f"{run_dir} holds a {found} model, not a {kind} model")
    return MODELS[found](run_dir, run)


def initial_guess(run_dir_or_model, mol) -> np.ndarray:
    """Density matrix (nao, nao) for ``mf.kernel(dm0=...)`` from a model's prediction
    (no energy computed; with a ``"sap"``-baseline model, the default of molecule runs, no
    DF factor or XC grid either).

    Args:
        run_dir_or_model: a run directory or a loaded :class:`MoleculeModel`.
        mol: a built ``pyscf.gto.Mole`` in the model's basis.
    """
    model = run_dir_or_model if isinstance(run_dir_or_model, Model) else load(run_dir_or_model, "molecule")
    if getattr(mol, "cart", False):
        raise InputError("mol uses Cartesian d/f functions (cart=True); the model predicts spherical AOs (cart=False)")
    bases = set(mol.basis.values()) if isinstance(mol.basis, dict) else {mol.basis}
    if any(_basis_key(b) != _basis_key(model.basis) for b in bases):
        raise InputError(f"mol uses basis {mol.basis!r}; the model predicts {model.basis!r}")
    return model.predict(System.from_mole(mol)).density_matrix


def _basis_key(name) -> str:
    """A basis name as PySCF compares them (case, '-' and '_' ignored: def2-SVP = def2svp)."""
    return str(name).lower().replace("-", "").replace("_", "")
