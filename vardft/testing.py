"""One equivariance check for every AO-matrix function of the project.

:func:`assert_equivariant` applies Euclidean operations and atom permutations
to a molecule or crystal, maps the function's output of the original system
with the matching AO transformation and compares:

* molecules: ``fn(system) -> (nao, nao)`` in PySCF AO order; for a system moved
  to ``x'_k = R x_{perm[k]} + t`` it must hold that
  ``fn(x') = D fn(x) D^T`` with ``D = ao_rotation(R)[idx]`` (parity ``(-1)^l``
  for improper R, ``idx = ao_permutation(perm)``);
* crystals: ``fn(system) -> (H_R (nR, nao, nao), shifts (nR, 3) int)``, the
  real-space blocks ``H(n)_ij = <i, cell 0| H |j, cell n>`` (e.g.
  :func:`vardft.hamiltonian.unpad_real_space`); the cell rotates with the atoms,
  and moving atom ``k`` by the lattice vector ``m_k`` relabels
  ``H'(n)_kl = H(n + m_l - m_k)_kl``. Shifts missing from one output count as
  zero blocks.

Errors are relative to ``max|fn(x)|``.

Example:
    >>> import numpy as np
    >>> from basis.system import System
    >>> from vardft.testing import assert_equivariant
    >>> mol = System(("O", "H", "H"), np.array([[0.0, 0.0, 0.1], [0.0, 0.76, -0.5], [0.1, -0.76, -0.5]]))
    >>> def overlap(s):
    ...     return s.to_mole("sto-3g").intor("int1e_ovlp")
    >>> errors = assert_equivariant(overlap, mol, basis="sto-3g")
    >>> sorted(errors)
    ['inversion', 'permutation', 'rotation', 'rotoinversion', 'translation']
    >>> max(errors.values()) < 1e-12
    True
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from basis.layout import ao_offsets, ao_permutation, ao_rotation
from basis.system import System

__all__ = [
    "MOLECULE_OPERATIONS",
    "CRYSTAL_OPERATIONS",
    "Transform",
    "make_transforms",
    "assert_equivariant",
    "equivariance_errors",
]

MOLECULE_OPERATIONS = ("rotation", "inversion", "rotoinversion", "translation", "permutation")
"""Default operations for molecules; ``'combined'`` (rotoinversion + translation +
permutation in one system) is also available, for expensive functions."""

CRYSTAL_OPERATIONS = MOLECULE_OPERATIONS + ("lattice_shift",)
"""Default operations for crystals; ``'combined'`` there also shifts atoms by lattice vectors."""

TRANSLATION_SCALE_ANGSTROM = 3.0


@dataclasses.dataclass(frozen=True)
class Transform:
    """``x'_k = R (x_{perm[k]} + atom_shifts[k] @ cell) + t``; ``cell' = cell R^T``.

    Attributes:
        name: operation name.
        rotation: (3, 3) orthogonal R, possibly improper.
        translation: (3,) t, Ångström.
        perm: (natom,) int, new atom k is old atom ``perm[k]``.
        atom_shifts: (natom, 3) int lattice vectors per new atom (crystals), or None.
    """

    name: str
    rotation: np.ndarray
    translation: np.ndarray
    perm: np.ndarray
    atom_shifts: np.ndarray | None = None

    def apply(self, system: System) -> System:
        """The transformed system."""
        x = system.positions[self.perm]
        cell = system.cell
        if self.atom_shifts is not None:
            x = x + self.atom_shifts @ cell
        symbols = tuple(system.symbols[p] for p in self.perm)
        new_cell = None if cell is None else cell @ self.rotation.T
        return system.replace(symbols=symbols, positions=x @ self.rotation.T + self.translation, cell=new_cell)

    def ao_matrix(self, basis: str, symbols: Sequence[str]) -> np.ndarray:
        """(nao, nao) D with ``A(x') = D A(x) D^T`` for an AO operator (``symbols``: original order)."""
        idx = ao_permutation(basis, symbols, self.perm)
        return ao_rotation(basis, symbols, self.rotation)[idx]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:

    return Rotation.random(random_state=rng).as_matrix()  # float64, proper


def _random_perm(rng: np.random.Generator, n: int) -> np.ndarray:
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    while True:
        perm = rng.permutation(n)
        if np.any(perm != np.arange(n)):
            return perm.astype(np.int64)


def make_transforms(system: System, ops: Sequence[str] | None = None, seed: int = 0) -> list[Transform]:
    """The transforms :func:`assert_equivariant` applies, reproducible from ``seed``.

    Args:
        system: the molecule or crystal (only its atom count and kind are used).
        ops: names from :data:`MOLECULE_OPERATIONS` / :data:`CRYSTAL_OPERATIONS`
            or ``'combined'``; default: all of the system's kind.
    """
    periodic = system.is_periodic
    if ops is None:
        ops = CRYSTAL_OPERATIONS if periodic else MOLECULE_OPERATIONS
    known = CRYSTAL_OPERATIONS if periodic else MOLECULE_OPERATIONS
    rng = np.random.default_rng(seed)
    n = system.natom
    ident = np.arange(n, dtype=np.int64)
    out = []
    for name in ops:
        r, t, perm, shifts = np.eye(3), np.zeros(3), ident, None
        if name == "rotation":
            r = _random_rotation(rng)
        elif name == "inversion":
            r = -np.eye(3)
        elif name == "rotoinversion":
            r = -_random_rotation(rng)
        elif name == "translation":
            t = rng.normal(scale=TRANSLATION_SCALE_ANGSTROM, size=3)
        elif name == "permutation":
            perm = _random_perm(rng, n)
        elif name == "lattice_shift" and periodic:
            shifts = rng.integers(-1, 2, size=(n, 3))
        elif name == "combined":
            r = -_random_rotation(rng)
            t = rng.normal(scale=TRANSLATION_SCALE_ANGSTROM, size=3)
            perm = _random_perm(rng, n)
            if periodic:
                shifts = rng.integers(-1, 2, size=(n, 3))
        else:
            raise ValueError(f"unknown operation {name!r} for a {'crystal' if periodic else 'molecule'}; "
                             f"choose from {known + ('combined',)}")
        out.append(Transform(name, r, t, perm, shifts))
    return out


def _real_space_dict(out) -> dict[tuple[int, int, int], np.ndarray]:
    h_r, shifts = out
    h_r, shifts = np.asarray(h_r, dtype=np.float64), np.asarray(shifts)
    if h_r.ndim != 3 or shifts.shape != (h_r.shape[0], 3):
        raise ValueError(f"a crystal's fn must return (H_R (nR, nao, nao), shifts (nR, 3)); got {h_r.shape}, {shifts.shape}")
    table = {tuple(int(v) for v in s): h for s, h in zip(shifts, h_r)}
    if len(table) != len(shifts):
        raise ValueError("repeated lattice shifts in fn's output")
    return table


def _crystal_error(out0, out1, tr: Transform, basis: str, symbols: Sequence[str]) -> tuple[float, float]:
    h0, h1 = _real_space_dict(out0), _real_space_dict(out1)
    scale = max(np.abs(h).max() for h in h0.values())
    a = ao_rotation(basis, symbols, tr.rotation)
    rotated = {n: a @ h @ a.T for n, h in h0.items()}  # original atom order and shifts
    offsets = ao_offsets(basis, symbols)
    new_symbols = [symbols[p] for p in tr.perm]
    new_offsets = ao_offsets(basis, new_symbols)
    m = np.zeros((len(symbols), 3), dtype=np.int64) if tr.atom_shifts is None else np.asarray(tr.atom_shifts)
    nao = offsets[-1]
    zero = np.zeros((nao, nao))
    # every shift n' of the new output, or that a block of the original maps to
    targets = set(h1)
    for n in h0:
        for k in range(len(symbols)):
            for l in range(len(symbols)):
                targets.add(tuple(int(v) for v in np.asarray(n) - m[l] + m[k]))
    err = 0.0
    for n in targets:
        got = h1.get(n, zero)
        want = np.zeros((nao, nao))
        for k, pk in enumerate(tr.perm):
            for l, pl in enumerate(tr.perm):
                src = rotated.get(tuple(int(v) for v in np.asarray(n) + m[l] - m[k]))
                if src is not None:
                    want[new_offsets[k]:new_offsets[k + 1], new_offsets[l]:new_offsets[l + 1]] = \
                        src[offsets[pk]:offsets[pk + 1], offsets[pl]:offsets[pl + 1]]
        err = max(err, float(np.abs(got - want).max()))
    return err, scale


def equivariance_errors(fn: Callable, system: System, *, basis: str, ops: Sequence[str] | None = None,
                        seed: int = 0, batched: bool = False) -> dict[str, float]:
    """``{operation: max|fn(g x) - D fn(x) D^T| / max|fn(x)|}`` without asserting.

    Arguments as :func:`assert_equivariant`.
    """
    transforms = make_transforms(system, ops, seed)
    moved = [tr.apply(system) for tr in transforms]
    if batched:
        outs = list(fn([system] + moved))
        if len(outs) != len(moved) + 1:
            raise ValueError(f"batched fn returned {len(outs)} outputs for {len(moved) + 1} systems")
    else:
        outs = [fn(system)] + [fn(s) for s in moved]
    errors = {}
    for tr, out in zip(transforms, outs[1:]):
        if system.is_periodic:
            err, scale = _crystal_error(outs[0], out, tr, basis, system.symbols)
        else:
            h0, h1 = np.asarray(outs[0], dtype=np.float64), np.asarray(out, dtype=np.float64)
            if h0.shape != h1.shape or h0.ndim != 2:
                raise ValueError(f"a molecule's fn must return (nao, nao) matrices; got {h0.shape} and {h1.shape}")
            d = tr.ao_matrix(basis, system.symbols)
            err, scale = float(np.abs(h1 - d @ h0 @ d.T).max()), float(np.abs(h0).max())
        if scale == 0.0:
            raise AssertionError("fn(system) is zero: equivariance would be trivial")
        errors[tr.name] = err / scale
    return errors


def assert_equivariant(fn: Callable, system: System, *, basis: str, ops: Sequence[str] | None = None,
                       rtol: float = 1e-10, seed: int = 0, batched: bool = False) -> dict[str, float]:
    """Assert ``fn`` commutes with rotations, inversion, translations and permutations.

    Args:
        fn: molecule → (nao, nao) AO matrix, PySCF AO order; crystal →
            ``(H_R (nR, nao, nao), shifts (nR, 3) int)``. With ``batched=True``
            it takes a list of systems and returns a list of such outputs (called
            once: one compilation for a batched model).
        system: the molecule or crystal (Ångström).
        basis: PySCF basis name of the AOs.
        ops: operation names (default: all of :data:`MOLECULE_OPERATIONS` or
            :data:`CRYSTAL_OPERATIONS`); ``'combined'`` does several in one.
        rtol: bound on ``max|fn(g x) - D fn(x) D^T|`` relative to ``max|fn(x)|``.
        seed: random rotations, translations and permutations.

    Returns:
        the relative error of each operation.

    Raises:
        AssertionError: naming every operation above ``rtol`` and its error.
    """
    errors = equivariance_errors(fn, system, basis=basis, ops=ops, seed=seed, batched=batched)
    bad = {k: v for k, v in errors.items() if not v <= rtol}
    if bad:
        detail = ", ".join(f"{k}: {v:.2e}" for k, v in bad.items())
        raise AssertionError(f"not equivariant to rtol={rtol:.1e} (error relative to max|fn(x)|): {detail}")
    return errors
