"""A frame fixed by the molecule, so that grid-based AO matrices become equivariant.

PySCF's XC grid (atom-centred Lebedev spheres, Becke partition) is fixed in the
laboratory axes, so a matrix built on it (the minao Fock baseline, PySCF's own
Fock) of a rotated molecule is not exactly the rotated matrix: for uracil
PBE/def2-SVP the minao Fock changes by up to ~1e-4 Eh under a random rotation.
The grid *is* exactly covariant under the octahedral group O_h (axis sign flips
and axis permutations): Lebedev point sets are O_h-invariant, radial grids,
pruning and Becke weights depend only on distances, and PySCF does not rotate the
per-atom grids. (Checked: uracil, grid level 1, 3e-15 relative.)

So: compute the matrix for the molecule placed in a frame of its own, then rotate
it back. Molecules whose charge-weighted second-moment tensor has three distinct
eigenvalues (every molecule without an axis of order >= 3) get the principal
axes; their ambiguities (order, signs) are O_h elements, and the result

    M_lab = D(Q)^T M_pyscf(frame molecule) D(Q)

is equivariant to round-off. Molecules with degenerate moments have a frame
ambiguity outside O_h; :func:`molecular_frames` then returns every frame of an
invariantly chosen candidate set and :func:`frame_averaged` averages over them
(exact again, at the cost of one matrix per candidate), and for linear
molecules and single atoms it projects onto matrices invariant under rotations
about the axis / all rotations (exact, no extra matrix).

Conventions: a frame has ``rotation`` Q (3, 3), orthogonal, possibly improper,
rows = frame axes in laboratory coordinates, and ``origin`` c (3,), Ångström.
Frame coordinates are ``y = Q (x - c)``, i.e. ``positions @ Q.T`` after
subtracting c. AO matrices use PySCF AO order and transform with
``D(Q) = basis.layout.ao_rotation(basis, symbols, Q)``:
``M_frame = D M_lab D^T`` and ``M_lab = D^T M_frame D``.

Example:
    >>> import numpy as np
    >>> from basis.system import System
    >>> from basis.frame import molecular_frame, to_frame, to_frame_matrix, from_frame_matrix
    >>> water = System(("O", "H", "H"), np.array([[0.0, 0.0, 0.1], [0.0, 0.76, -0.5], [0.0, -0.76, -0.5]]))
    >>> frame = molecular_frame(water)
    >>> frame.kind, frame.degenerate
    ('asymmetric', False)
    >>> rot = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))[0]
    >>> turned = water.replace(positions=water.positions @ rot.T + 1.0)
    >>> y0 = to_frame(water, frame).positions
    >>> y1 = to_frame(turned, molecular_frame(turned)).positions
    >>> bool(np.allclose(np.abs(y1), np.abs(y0)))  # equal up to an O_h element (here axis signs)
    True
    >>> m = np.random.default_rng(1).normal(size=(24, 24))
    >>> back = from_frame_matrix(to_frame_matrix(m, frame, "def2-svp", water.symbols), frame, "def2-svp", water.symbols)
    >>> bool(np.allclose(back, m))
    True
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from basis.errors import GeometryError
from basis.layout import ao_rotation, element_layout
from basis.system import System

__all__ = [
    "MolecularFrame",
    "molecular_frame",
    "molecular_frames",
    "to_frame",
    "to_frame_matrix",
    "from_frame_matrix",
    "frame_averaged",
    "symmetrize_matrix",
    "DEGENERACY_RTOL",
    "TIE_ATOL",
]

DEGENERACY_RTOL = 1e-4
"""Second-moment eigenvalues closer than this (relative to the largest) count as
degenerate. Above it the principal axes are determined to ~1e-16/DEGENERACY_RTOL
rad, far below what the grid error (~1e-4 relative per radian) can turn into
1e-10 of max|M|."""

TIE_ATOL = 1e-8
"""Ångström: atoms whose selection distances differ by less than this are tied
(all of them give candidate frames). Round-off in the distances is ~1e-14 Å."""

KINDS = ("asymmetric", "symmetric_top", "spherical_top", "linear", "atom")


@dataclasses.dataclass(frozen=True)
class MolecularFrame:
    """A frame fixed by a molecule's geometry.

    Attributes:
        rotation: (3, 3) orthogonal Q (det ±1); rows are the frame axes in
            laboratory coordinates; frame coordinates ``y = Q (x - origin)``.
        origin: (3,) Ångström, the nuclear-charge centroid.
        kind: ``'asymmetric'`` (three distinct second moments: the frame is
            unique up to O_h), ``'symmetric_top'``, ``'spherical_top'`` (in-plane
            axes fixed by atoms; the frame is one of :func:`molecular_frames`),
            ``'linear'`` (axis only: the rotation about it is arbitrary) or
            ``'atom'`` (one atom: axes arbitrary).
    """

    rotation: np.ndarray
    origin: np.ndarray
    kind: str = "asymmetric"

    def __post_init__(self):
        rot = np.array(self.rotation, dtype=np.float64)
        origin = np.array(self.origin, dtype=np.float64)
        if rot.shape != (3, 3) or np.abs(rot @ rot.T - np.eye(3)).max() > 1e-10:
            raise ValueError("rotation must be a 3x3 orthogonal matrix")
        if origin.shape != (3,):
            raise ValueError("origin must have shape (3,)")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        rot.flags.writeable = False
        origin.flags.writeable = False
        object.__setattr__(self, "rotation", rot)
        object.__setattr__(self, "origin", origin)

    @property
    def degenerate(self) -> bool:
        """True unless the second moments are distinct (frame unique up to O_h)."""
        return self.kind != "asymmetric"


# ----------------------------------------------------------------- frames
def _centre_and_moments(system: System):
    if system.is_periodic:
        raise GeometryError("molecular frames are for molecules; this system has a cell")
    z = system.atomic_numbers.astype(np.float64)
    origin = z @ system.positions / z.sum()
    r = system.positions - origin
    moments = np.einsum("a,ai,aj->ij", z, r, r)
    return z, origin, r, moments


def _orient(axes: np.ndarray, r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Signs of the rows of ``axes``: positive charge-weighted third moment where it
    is clearly non-zero, the last sign making det = +1 otherwise. Only makes frame
    coordinates of copies identical more often; any sign is an O_h element."""
    axes = axes.copy()
    y = r @ axes.T
    skew = np.einsum("a,ak->k", z, y**3)
    scale = np.einsum("a,ak->k", z, np.abs(y) ** 3) + 1e-300
    decided = np.abs(skew) > 1e-6 * scale
    for k in range(3):
        if decided[k] and skew[k] < 0:
            axes[k] = -axes[k]
    if not decided.all() and np.linalg.det(axes) < 0:
        k = int(np.flatnonzero(~decided)[-1])
        axes[k] = -axes[k]
    return axes


def _ties(values: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Candidates whose value is within TIE_ATOL of the largest."""
    best = values[candidates].max()
    return candidates[values[candidates] >= best - TIE_ATOL]


def _select(dist: np.ndarray, z: np.ndarray, extra: np.ndarray | None = None) -> np.ndarray:
    """Atoms tied for (largest dist, then largest Z, then largest extra)."""
    c = _ties(dist, np.arange(len(dist)))
    c = c[z[c] == z[c].max()]
    if extra is not None:
        c = _ties(extra, c)
    return c


def _perp(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return v - np.outer(v @ axis, axis)


def _frame_from(e3: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Rows (e1, e2, e3): e1 along the part of v perpendicular to e3."""
    e1 = _perp(v[None], e3)[0]
    e1 /= np.linalg.norm(e1)
    return np.array([e1, np.cross(e3, e1), e3])


def molecular_frames(system: System) -> tuple[MolecularFrame, ...]:
    """Every candidate frame of a molecule (one unless the moments are degenerate).

    The set is a function of the geometry only: for a rotated, inverted,
    translated or permuted copy it is the same set of frames, each up to an
    O_h element acting on the frame coordinates (and, for ``'linear'`` and
    ``'atom'``, a rotation about the axis / any rotation).

    * three distinct second moments (``'asymmetric'``): one frame, the principal
      axes in ascending order of moment;
    * two equal (``'symmetric_top'``): e3 = the unique axis; e1 along the
      perpendicular part of one atom's position, for every atom tied for the
      largest distance from the axis (then the largest Z, then the largest
      distance along it);
    * three equal (``'spherical_top'``): e1 towards an atom tied for the
      largest distance from the centre (then the largest Z), e2 from an atom
      tied for the largest distance from that line (then the largest Z, then
      the largest projection on it); one frame per pair;
    * all atoms on a line (``'linear'``): e3 along it, e1, e2 arbitrary (from
      the laboratory axes); one atom (``'atom'``): the identity.

    Args:
        system: a molecule (no cell); positions in Ångström.

    Returns:
        tuple of :class:`MolecularFrame`, at least one.
    """
    z, origin, r, moments = _centre_and_moments(system)
    if system.natom == 1:
        return (MolecularFrame(np.eye(3), origin, "atom"),)
    w, v = np.linalg.eigh(moments)
    axes = v.T  # rows, ascending moments
    wmax = w[-1]
    close = [w[1] - w[0] < DEGENERACY_RTOL * wmax, w[2] - w[1] < DEGENERACY_RTOL * wmax]
    if not any(close):
        return (MolecularFrame(_orient(axes, r, z), origin, "asymmetric"),)
    if not all(close):
        e3 = axes[2] if close[0] else axes[0]
        rho = np.linalg.norm(_perp(r, e3), axis=1)
        if rho.max() < TIE_ATOL + 1e-6 * np.sqrt(wmax / z.sum()):
            return (MolecularFrame(_linear_frame(e3), origin, "linear"),)
        chosen = _select(rho, z, np.abs(r @ e3))
        return tuple(MolecularFrame(_frame_from(e3, r[a]), origin, "symmetric_top") for a in chosen)
    frames = []
    dist = np.linalg.norm(r, axis=1)
    for a in _select(dist, z):
        e1 = r[a] / dist[a]
        rho = np.linalg.norm(_perp(r, e1), axis=1)
        for b in _select(rho, z, r @ e1):
            rows = _frame_from(e1, r[b])  # rows (e2', e3', e1): reorder to (e1, e2', e3')
            frames.append(MolecularFrame(np.array([rows[2], rows[0], rows[1]]), origin, "spherical_top"))
    return tuple(frames)


def _linear_frame(e3: np.ndarray) -> np.ndarray:
    helper = np.eye(3)[int(np.argmin(np.abs(e3)))]
    return _frame_from(e3, helper)


def molecular_frame(system: System) -> MolecularFrame:
    """The first of :func:`molecular_frames` (the only one for asymmetric molecules)."""
    return molecular_frames(system)[0]


def to_frame(system: System, frame: MolecularFrame) -> System:
    """The molecule with positions ``(x - origin) @ rotation.T`` (Ångström)."""
    if system.is_periodic:
        raise GeometryError("molecular frames are for molecules; this system has a cell")
    return system.replace(positions=(system.positions - frame.origin) @ frame.rotation.T)


def _rotate(m: np.ndarray, d: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape[-2:] != d.shape:
        raise ValueError(f"matrix shape {m.shape} does not match {d.shape[0]} AOs")
    return d @ m @ d.T


def to_frame_matrix(m: np.ndarray, frame: MolecularFrame, basis: str, symbols: Sequence[str]) -> np.ndarray:
    """(..., nao, nao) AO matrix of the laboratory molecule → the same operator in the frame.

    ``D m D^T`` with ``D = ao_rotation(basis, symbols, frame.rotation)``, PySCF AO order.
    """
    return _rotate(m, ao_rotation(basis, symbols, frame.rotation))


def from_frame_matrix(m: np.ndarray, frame: MolecularFrame, basis: str, symbols: Sequence[str]) -> np.ndarray:
    """(..., nao, nao) AO matrix of the frame molecule → the laboratory molecule: ``D^T m D``."""
    return _rotate(m, ao_rotation(basis, symbols, frame.rotation).T)


# ------------------------------------------------------------ symmetrizing
def _axial_projection(m: np.ndarray, basis: str, symbols: Sequence[str]) -> np.ndarray:
    """Average of ``D(Rz(φ)) m D^T`` over φ: exact with 2 lmax + 1 equally spaced angles."""
    lmax = max(element_layout(basis, s).lmax for s in symbols)
    n = 2 * lmax + 1
    out = np.zeros_like(m)
    for k in range(n):
        phi = 2 * np.pi * k / n
        c, s = np.cos(phi), np.sin(phi)
        out += _rotate(m, ao_rotation(basis, symbols, np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])))
    return out / n


def _spherical_projection(m: np.ndarray, basis: str, symbol: str) -> np.ndarray:
    """Rotation average of a one-atom AO matrix: each same-l shell pair block → (trace/(2l+1)) I."""
    starts = []
    i = 0
    for l, count in element_layout(basis, symbol).shells:
        for _ in range(count):
            starts.append((l, i))
            i += 2 * l + 1
    out = np.zeros_like(m)
    for l, i in starts:
        for ll, j in starts:
            if ll == l:
                n = 2 * l + 1
                block = m[..., i : i + n, j : j + n]
                tr = np.trace(block, axis1=-2, axis2=-1)[..., None, None]
                out[..., i : i + n, j : j + n] = tr / n * np.eye(n)
    return out


def symmetrize_matrix(m_frame: np.ndarray, frame: MolecularFrame, basis: str, symbols: Sequence[str]) -> np.ndarray:
    """Project a frame AO matrix onto the continuous symmetry the frame leaves free.

    ``'linear'``: average over rotations about the frame's z axis (exact, finite
    sum); ``'atom'``: average over all rotations; other kinds: unchanged. The
    exact operator of a linear molecule / atom has this symmetry, so this only
    removes grid error.
    """
    if frame.kind == "linear":
        return _axial_projection(np.asarray(m_frame, dtype=np.float64), basis, symbols)
    if frame.kind == "atom":
        return _spherical_projection(np.asarray(m_frame, dtype=np.float64), basis, symbols[0])
    return np.asarray(m_frame, dtype=np.float64)


def frame_averaged(fn: Callable[[System], np.ndarray], system: System, basis: str) -> np.ndarray:
    """An AO matrix built in the molecule's frame(s), in the laboratory frame.

    ``mean over frames f of D(Q_f)^T S_f[fn(to_frame(system, f))] D(Q_f)``, with
    S_f :func:`symmetrize_matrix`. If ``fn`` is covariant under O_h (true of any
    PySCF-grid-based AO matrix) and under atom permutations, the result is
    equivariant under rotations, inversion, translations and permutations to
    round-off. Calls ``fn`` once per frame: once for molecules without an axis of
    order >= 3, several times for symmetric and spherical tops (e.g. NH3: 3, CH4: 12).

    Args:
        fn: molecule → (nao, nao) AO matrix, PySCF AO order, in ``basis``.
        system: a molecule, Ångström.
        basis: PySCF basis name of ``fn``'s AOs.

    Returns:
        (nao, nao) float64 matrix for ``system`` as given.
    """
    frames = molecular_frames(system)
    total = 0.0
    for f in frames:
        m = symmetrize_matrix(np.asarray(fn(to_frame(system, f))), f, basis, system.symbols)
        total = total + from_frame_matrix(m, f, basis, system.symbols)
    return total / len(frames)


def frame_covariant(own: Callable[[], np.ndarray], fn: Callable[[System], np.ndarray], system: System,
                    basis: str) -> np.ndarray:
    """``fn`` of a molecule already in its own frame (:func:`to_frame`), made covariant.

    A molecule whose frame is unique (no degenerate moments) needs nothing more:
    ``own()`` (``fn(system)``, possibly from integrals the caller already has). A
    symmetric or spherical top, a linear molecule or an atom gets
    :func:`frame_averaged` (``fn`` once per candidate frame).
    """
    if not molecular_frame(system).degenerate:
        return np.asarray(own())
    return frame_averaged(fn, system, basis)
