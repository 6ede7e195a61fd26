"""Hamiltonian blocks ↔ irreps, AO-matrix assembly and padded batches.

The model predicts one square *block* per atom (diagonal block) and one per
ordered atom pair within the cutoff (off-diagonal block). Every block uses a
common *canonical* shell layout for the model's basis and elements (for each
``l``, the largest number of ``l`` shells any element has; shells sorted by
``l``), so blocks of all atoms and pairs have one shape ``(nc, nc)``; an
element's real AOs occupy a subset of the slots (:attr:`BlockLayout.element_slots`).

A block is written in irreps by the Clebsch–Gordan expansion
``l1 ⊗ l2 → ⊕_L L`` (parity ``(-1)^(l1+l2)``) of each shell pair, after the
PySCF ↔ e3nn change of basis of :mod:`basis.layout`; :func:`irreps_to_block`
and :func:`block_to_irreps` are exact inverses (an orthogonal map).

:func:`prepare_batch` pads molecules into fixed-shape buckets and precomputes,
in numpy, the edge list and the gather index that places block entries into
the AO matrix, so the jitted assembly has no Python loop over atoms or pairs
and one compiled function serves every molecule in a bucket.

Crystals (a :class:`~basis.system.System` with a cell) use the same model on a
*periodic graph*: edges ``(i, j, R)`` join atom ``i`` of the home cell to atom
``j`` of the cell shifted by the integer lattice vector ``R`` within the
cutoff (also ``i = j`` for ``R != 0``), each with its Cartesian shift
``edge_shift = R · lattice`` (Bohr). The output is then the real-space
Hamiltonian ``H(R)`` (B, nR, N, N) for every ``R`` that has an edge (``R = 0``
first; :attr:`Batch.lattice_shift`), symmetrised as
``H(R) = (M(R) + M(−R)ᵀ) / 2`` so that ``H(−R) = H(R)ᵀ`` exactly;
:func:`bloch_sum_batch` gives ``H(k) = Σ_R e^{ik·T_R} H(R)`` (PySCF's
convention, :mod:`solvers.bands`).

Example:
    >>> import jax
    >>> from basis.system import System
    >>> from vardft.model import ModelConfig, init_params
    >>> from vardft.hamiltonian import prepare_batch, unpad
    >>> from vardft.model import predict_hamiltonian
    >>> cfg = ModelConfig.preset("S", basis="def2-svp", elements=("H", "O"))
    >>> water = System(("O", "H", "H"), [[0, 0, 0.12], [0, 0.76, -0.47], [0, -0.76, -0.47]])
    >>> batch = prepare_batch([water], cfg)
    >>> params = init_params(jax.random.PRNGKey(0), cfg)
    >>> H = predict_hamiltonian(params, batch)
    >>> unpad(H, batch, 0).shape
    (24, 24)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import e3nn_jax as e3nn
import flax.struct
import jax.numpy as jnp
import numpy as np

from basis.crystal import lattice_neighbours
from basis.errors import BasisError
from basis.layout import e3nn_to_pyscf, element_layout
from basis.system import System, canonical_symbol
from basis.units import BOHR_ANGSTROM

__all__ = [
    "BlockLayout",
    "block_layout",
    "irreps_to_block",
    "block_to_irreps",
    "Batch",
    "prepare_batch",
    "bucket_size",
    "assemble",
    "unpad",
    "unpad_real_space",
    "bloch_sum_batch",
]


CG_ORTHOGONALITY_TOL = 1e-12


# ----------------------------------------------------------------- layout
@dataclasses.dataclass(frozen=True, eq=False)
class _Group:
    """All shell pairs with angular momenta (l1, l2) in a canonical block."""

    l1: int
    l2: int
    irreps_index: np.ndarray  # (n1*n2, d1*d2) positions in the irreps vector, columns (L, M)
    block_index: np.ndarray  # (n1*n2, d1*d2) positions in the flattened block, columns (m1, m2)
    cg: np.ndarray  # (d1*d2, d1*d2) orthogonal: block entries (m1, m2) = cg @ irreps (L, M)


@dataclasses.dataclass(frozen=True, eq=False)
class BlockLayout:
    """Canonical block layout for one basis and a set of elements.

    Attributes:
        basis: PySCF basis name.
        elements: element symbols, in the order used for species indices.
        counts: ``counts[l]`` canonical shells of angular momentum ``l``.
        nc: side of a canonical block, ``sum(counts[l] * (2l + 1))``.
        element_slots: per element, (nao_e,) int slot of each of its AOs (PySCF order).
        irreps: e3nn irreps string of a block (dimension ``nc**2``), sorted by (L, parity).
        groups: per shell-pair type ``(l1, l2)``: index maps and the orthogonal
            Clebsch–Gordan matrix (PySCF orientation) between block entries and irreps.
        lmax: largest ``l`` of the basis over the elements; blocks need ``L <= 2 lmax``.
    """

    basis: str
    elements: tuple[str, ...]
    counts: tuple[int, ...]
    nc: int
    element_slots: tuple[np.ndarray, ...]
    irreps: str
    groups: tuple[_Group, ...]

    @property
    def lmax(self) -> int:
        return len(self.counts) - 1

    @functools.cached_property
    def padded_maps(self):
        """Index maps and Clebsch–Gordan matrices for one batched block ↔ irreps map.

        Every shell pair ``q`` (all groups together, ``Q`` of them) is padded to
        ``dmax**2`` entries, ``dmax = 2 lmax + 1``. Returns ``(irreps_index (Q, dmax²),
        cg (Q, dmax², dmax²), block_position (nc²,), block_index (Q, dmax²),
        irreps_position (nc²,))``; index ``nc²`` means the zero pad.
        """
        dmax2 = (2 * self.lmax + 1) ** 2
        nc2 = self.nc * self.nc
        irr_idx, blk_idx, cgs = [], [], []
        for g in self.groups:
            q, d = g.irreps_index.shape
            irr_idx.append(np.pad(g.irreps_index, ((0, 0), (0, dmax2 - d)), constant_values=nc2))
            blk_idx.append(np.pad(g.block_index, ((0, 0), (0, dmax2 - d)), constant_values=nc2))
            cgs.append(np.broadcast_to(np.pad(g.cg, ((0, dmax2 - d), (0, dmax2 - d))), (q, dmax2, dmax2)))
        irr_idx, blk_idx, cg = np.concatenate(irr_idx), np.concatenate(blk_idx), np.concatenate(cgs)
        blk_pos = np.zeros(nc2, dtype=np.int64)
        irr_pos = np.zeros(nc2, dtype=np.int64)
        flat_b, flat_i = blk_idx.reshape(-1), irr_idx.reshape(-1)
        blk_pos[flat_b[flat_b < nc2]] = np.nonzero(flat_b < nc2)[0]
        irr_pos[flat_i[flat_i < nc2]] = np.nonzero(flat_i < nc2)[0]
        return irr_idx, np.ascontiguousarray(cg), blk_pos, blk_idx, irr_pos

    @property
    def element_nao(self) -> np.ndarray:
        """(n_elements,) AOs per element."""
        return np.array([len(s) for s in self.element_slots], dtype=np.int64)

    def species_index(self, symbols: Sequence[str]) -> np.ndarray:
        """(natom,) int32 index of each symbol in :attr:`elements`."""
        lookup = {s: k for k, s in enumerate(self.elements)}
        out = []
        for s in symbols:
            s = canonical_symbol(s)
            if s not in lookup:
                raise BasisError(f"element {s} is not one of the model's elements {self.elements}")
            out.append(lookup[s])
        return np.asarray(out, dtype=np.int32)


def _parity(l: int) -> str:
    return "e" if l % 2 == 0 else "o"


def _cg_matrix(l1: int, l2: int) -> np.ndarray:
    """Orthogonal (d1 d2, d1 d2): PySCF block entries (m1, m2) from irreps (L, M), L ascending."""

    q1, q2 = e3nn_to_pyscf(l1), e3nn_to_pyscf(l2)
    cols = []
    for L in range(abs(l1 - l2), l1 + l2 + 1):
        c = np.asarray(e3nn.clebsch_gordan(l1, l2, L), dtype=np.float64)  # numpy, float64
        c = np.einsum("ia,jb,abm->ijm", q1, q2, c).reshape((2 * l1 + 1) * (2 * l2 + 1), 2 * L + 1)
        cols.append(c / np.linalg.norm(c, axis=0, keepdims=True))
    u = np.concatenate(cols, axis=1)
    if np.abs(u.T @ u - np.eye(u.shape[0])).max() > CG_ORTHOGONALITY_TOL:
        raise RuntimeError(f"Clebsch-Gordan change of basis for {l1}x{l2} is not orthogonal")
    return u


@functools.lru_cache(maxsize=None)
def block_layout(basis: str, elements: tuple[str, ...]) -> BlockLayout:
    """Canonical block layout for ``basis`` and ``elements`` (cached).

    Args:
        basis: PySCF basis name.
        elements: tuple of element symbols (order defines species indices).

    Raises:
        BasisError: unknown basis or an element it lacks; duplicate elements.
    """
    elements = tuple(canonical_symbol(s) for s in elements)
    if len(set(elements)) != len(elements) or not elements:
        raise BasisError(f"elements must be distinct and non-empty, got {elements}")
    lays = [element_layout(basis, s) for s in elements]
    lmax = max(lay.lmax for lay in lays)
    counts = tuple(max(lay.count(l) for lay in lays) for l in range(lmax + 1))
    dims = [2 * l + 1 for l in range(lmax + 1)]
    offset_l = np.concatenate([[0], np.cumsum([c * d for c, d in zip(counts, dims)])]).astype(np.int64)
    nc = int(offset_l[-1])

    slots = []
    for lay in lays:
        seen = [0] * (lmax + 1)
        idx = []
        for l, c in lay.shells:
            for _ in range(c):
                start = offset_l[l] + seen[l] * dims[l]
                idx.extend(range(start, start + dims[l]))
                seen[l] += 1
        s = np.asarray(idx, dtype=np.int64)
        s.flags.writeable = False
        slots.append(s)

    # irreps of a block: chunk (L, parity) holds one irrep per (l1, l2, k1, k2) that produces it
    chunk_members: dict[tuple[int, str], list[tuple[int, int, int]]] = {}
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            for q in range(counts[l1] * counts[l2]):
                for L in range(abs(l1 - l2), l1 + l2 + 1):
                    chunk_members.setdefault((L, _parity(l1 + l2)), []).append((l1, l2, q))
    keys = sorted(chunk_members, key=lambda k: (k[0], k[1] == "o"))
    irreps = "+".join(f"{len(chunk_members[k])}x{k[0]}{k[1]}" for k in keys)
    position: dict[tuple[int, int, int, int], int] = {}
    offset = 0
    for L, p in keys:
        for u, (l1, l2, q) in enumerate(chunk_members[(L, p)]):
            position[(l1, l2, q, L)] = offset + u * (2 * L + 1)
        offset += len(chunk_members[(L, p)]) * (2 * L + 1)
    assert offset == nc * nc

    groups = []
    for l1 in range(lmax + 1):
        for l2 in range(lmax + 1):
            n1, n2, d1, d2 = counts[l1], counts[l2], dims[l1], dims[l2]
            if n1 * n2 == 0:
                continue
            irr = np.array(
                [
                    np.concatenate([position[(l1, l2, q, L)] + np.arange(2 * L + 1) for L in range(abs(l1 - l2), l1 + l2 + 1)])
                    for q in range(n1 * n2)
                ],
                dtype=np.int64,
            )
            k1, k2 = np.divmod(np.arange(n1 * n2), n2)
            rows = offset_l[l1] + k1[:, None] * d1 + np.arange(d1)[None, :]  # (q, d1)
            cols = offset_l[l2] + k2[:, None] * d2 + np.arange(d2)[None, :]  # (q, d2)
            blk = (rows[:, :, None] * nc + cols[:, None, :]).reshape(n1 * n2, d1 * d2)
            groups.append(_Group(l1, l2, irr, blk, _cg_matrix(l1, l2)))
    return BlockLayout(basis, elements, counts, nc, tuple(slots), irreps, tuple(groups))


def irreps_to_block(x, layout: BlockLayout):
    """Irreps coefficients → square blocks in PySCF orientation.

    Args:
        x: (..., nc**2) array laid out as ``layout.irreps`` (e3nn basis).
        layout: :class:`BlockLayout`.

    Returns:
        (..., nc, nc) blocks; rows/columns are the canonical slots.
    """
    x = jnp.asarray(x)
    irr_idx, cg, blk_pos, _, _ = layout.padded_maps
    x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (1,), x.dtype)], axis=-1)[..., irr_idx]
    y = jnp.einsum("...qc,qrc->...qr", x, jnp.asarray(cg, x.dtype))
    y = y.reshape(*y.shape[:-2], -1)[..., blk_pos]
    return y.reshape(*x.shape[:-2], layout.nc, layout.nc)


def block_to_irreps(block, layout: BlockLayout):
    """Square blocks → irreps coefficients; the exact inverse of :func:`irreps_to_block`.

    Args:
        block: (..., nc, nc) blocks in canonical slots, PySCF orientation.

    Returns:
        (..., nc**2) array laid out as ``layout.irreps``.
    """
    block = jnp.asarray(block)
    _, cg, _, blk_idx, irr_pos = layout.padded_maps
    flat = block.reshape(*block.shape[:-2], -1)
    flat = jnp.concatenate([flat, jnp.zeros(flat.shape[:-1] + (1,), flat.dtype)], axis=-1)[..., blk_idx]
    y = jnp.einsum("...qr,qrc->...qc", flat, jnp.asarray(cg, flat.dtype))
    return y.reshape(*y.shape[:-2], -1)[..., irr_pos]


# ------------------------------------------------------------------ batch
@flax.struct.dataclass
class Batch:
    """Padded molecules with precomputed indices (numpy or jax arrays).

    ``B`` molecules, ``A`` atom slots, ``E`` edge slots, ``N`` AO slots each;
    shapes are fixed per bucket. Positions are in **Bohr**.

    Attributes:
        species: (B, A) int32 index into ``config.elements`` (0 for padding).
        positions: (B, A, 3) float, Bohr (0 for padding).
        atom_mask: (B, A) bool, real atoms.
        edge_index: (B, E, 2) int32 local atom indices ``(i, j)`` of ordered pairs
            within the cutoff, both directions present; padding ``(0, 0)``.
        edge_shift: (B, E, 3) float, Bohr: lattice shift of atom ``j``, so that
            ``r_ij = positions[j] + edge_shift - positions[i]``; zero for molecules.
        edge_mask: (B, E) bool, real edges.
        ao_gather: (B, N*N) int32 into the per-molecule flattened blocks
            ``[A diagonal blocks | E edge blocks | one zero]`` of ``nc*nc`` entries each.
        ao_mask: (B, N) bool, real AOs (they come first, in PySCF order).
        nao: (B,) int32 real AOs per molecule.
        config: the model's :class:`vardft.model.ModelConfig` (static).

    Crystals only (``None`` for molecules); ``nR`` lattice-vector slots:
        lattice_shift: (B, nR, 3) int32 integer shift ``R`` of each output block
            ``H(R)``; ``R = 0`` in slot 0; padding slots zero.
        shift_inverse: (B, nR) int32 slot of ``−R`` (padding slots: themselves).
        shift_mask: (B, nR) bool, real slots.
        lattice: (B, 3, 3) float, lattice vectors as rows, Bohr.
        For crystals ``ao_gather`` is (B, nR*N*N), one ``N x N`` matrix ``M(R)`` per slot.
    """

    species: Any
    positions: Any
    atom_mask: Any
    edge_index: Any
    edge_shift: Any
    edge_mask: Any
    ao_gather: Any
    ao_mask: Any
    nao: Any
    config: Any = flax.struct.field(pytree_node=False)
    lattice_shift: Any = None
    shift_inverse: Any = None
    shift_mask: Any = None
    lattice: Any = None

    @property
    def is_periodic(self) -> bool:
        """True for a batch of crystals (output H(R), (B, nR, N, N))."""
        return self.shift_inverse is not None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, A, E, N) padded sizes (crystals: see also ``shift_mask.shape[1]`` = nR)."""
        b, a = self.species.shape
        return b, a, self.edge_index.shape[1], self.ao_mask.shape[1]

    def with_positions(self, positions) -> "Batch":
        """Same batch (edges, indices) with new positions, (B, A, 3) Bohr.

        The edge list is kept: pairs that were beyond the cutoff stay absent.
        """
        return self.replace(positions=positions)


def bucket_size(n: int, minimum: int = 1) -> int:
    """Round ``n`` up to a bucket size: at most ~25% padding, few distinct sizes.

    Sizes are ``m * 2**k`` with ``m`` in 4..7 (1..8 exact), so molecules of
    similar size share one compiled function.
    """
    n = max(int(n), minimum)
    if n <= 8:
        return n
    step = 2 ** (int(math.floor(math.log2(n))) - 2)
    return int(math.ceil(n / step) * step)


def _ao_map(species, layout: BlockLayout):
    nao_atom = layout.element_nao[species]
    ao_atom = np.repeat(np.arange(len(species)), nao_atom)
    ao_slot = np.concatenate([layout.element_slots[s] for s in species])
    return ao_atom, ao_slot


def _molecule_graph(system: System, layout: BlockLayout, cutoff_bohr: float) -> "_Graph":
    """Edges (i, j) within the cutoff; a molecule is a graph with the single shift R = 0."""
    species = layout.species_index(system.symbols)
    pos = np.asarray(system.positions, dtype=np.float64) / BOHR_ANGSTROM
    natom = len(species)
    dist = np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)
    within = (dist < cutoff_bohr) & ~np.eye(natom, dtype=bool)
    ei, ej = np.nonzero(within)
    edges = np.stack([ei, ej], axis=1).astype(np.int32)
    ao_atom, ao_slot = _ao_map(species, layout)
    return _Graph(
        species, pos, np.eye(3), edges, np.zeros(len(edges), np.int64),
        np.zeros((1, 3), np.int64), np.zeros(1, np.int64), ao_atom, ao_slot,
    )


@dataclasses.dataclass(frozen=True)
class _Graph:
    """Graph of one molecule or crystal (numpy, unpadded); molecules have one shift, R = 0."""

    species: np.ndarray  # (natom,)
    positions: np.ndarray  # (natom, 3) Bohr
    lattice: np.ndarray  # (3, 3) Bohr, rows
    edges: np.ndarray  # (E, 2) int32 (i, j)
    edge_slot: np.ndarray  # (E,) slot of the edge's lattice shift in ``shifts``
    shifts: np.ndarray  # (nR, 3) int, zero first
    inverse: np.ndarray  # (nR,) slot of −R
    ao_atom: np.ndarray
    ao_slot: np.ndarray


def _crystal_graph(system: System, layout: BlockLayout, cutoff_bohr: float) -> _Graph:
    """Edges (i, j, R) with |x_j + R·lattice − x_i| < cutoff, except (i, i, 0)."""
    species = layout.species_index(system.symbols)
    pos = np.asarray(system.positions, dtype=np.float64) / BOHR_ANGSTROM
    lattice = np.asarray(system.cell, dtype=np.float64) / BOHR_ANGSTROM
    ei, ej, en, _ = lattice_neighbours(pos, lattice, cutoff_bohr)
    other = (ei != ej) | np.any(en != 0, axis=1)
    ei, ej, en = ei[other], ej[other], en[other]
    # the shifts in use and zero, ordered: zero first, then by |n|_1, then lexicographically
    used, slot = np.unique(np.concatenate([en, np.zeros((1, 3), np.int64)]), axis=0, return_inverse=True)
    order = np.lexsort((used[:, 2], used[:, 1], used[:, 0], np.abs(used).sum(axis=1)))
    shifts = used[order]
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    lookup = {tuple(n): q for q, n in enumerate(shifts)}
    inverse = np.array([lookup[tuple(-n)] for n in shifts], dtype=np.int64)
    edges = np.stack([ei, ej], axis=1).astype(np.int32)
    ao_atom, ao_slot = _ao_map(species, layout)
    return _Graph(species, pos, lattice, edges, rank[slot.ravel()[:len(en)]], shifts, inverse, ao_atom, ao_slot)


def _pad_graphs(graphs: Sequence[_Graph], config, layout: BlockLayout, batch_size, pad_to, periodic: bool,
                gather: bool = True) -> Batch:
    """Pad graphs into one :class:`Batch`; crystals keep the shift axis R, molecules (R = 0 only) drop it.
    ``gather=False``: no AO gather indices (``ao_gather`` (B, 1) zeros): for blocks only."""
    nc2 = layout.nc * layout.nc
    need = (
        max(len(g.species) for g in graphs),
        max(len(g.edges) for g in graphs),
        max(len(g.ao_atom) for g in graphs),
        max(len(g.shifts) for g in graphs),
    )
    if pad_to is None:
        pad_to = tuple(bucket_size(v) for v in need[:3])
    if periodic:
        if len(pad_to) == 3:
            pad_to = tuple(pad_to) + (bucket_size(need[3]),)
        a_max, e_max, n_max, r_max = (int(v) for v in pad_to)
        labels = " (atoms, edges, aos, shifts)"
    else:
        a_max, e_max, n_max = (int(v) for v in pad_to)
        r_max, labels, need = 1, "", need[:3]
    if any(p < q for p, q in zip((a_max, e_max, n_max, r_max), need)):
        raise ValueError(f"pad_to={pad_to} is smaller than needed {need}{labels}")
    b = len(graphs) if batch_size is None else int(batch_size)
    if b < len(graphs):
        raise ValueError(f"batch_size={b} < {len(graphs)} systems")

    species = np.zeros((b, a_max), np.int32)
    positions = np.zeros((b, a_max, 3), np.float64)
    atom_mask = np.zeros((b, a_max), bool)
    edge_index = np.zeros((b, e_max, 2), np.int32)
    edge_shift = np.zeros((b, e_max, 3), np.float64)
    edge_mask = np.zeros((b, e_max), bool)
    zero = (a_max + e_max) * nc2
    ao_gather = np.full((b, r_max, n_max, n_max) if gather else (b, 1), zero, np.int64)
    ao_mask = np.zeros((b, n_max), bool)
    nao = np.zeros((b,), np.int32)
    lattice_shift = np.zeros((b, r_max, 3), np.int32)
    shift_inverse = np.tile(np.arange(r_max, dtype=np.int32), (b, 1))
    shift_mask = np.zeros((b, r_max), bool)
    lattice = np.tile(np.eye(3), (b, 1, 1))
    for k, g in enumerate(graphs):
        natom, nedge, n, nr = len(g.species), len(g.edges), len(g.ao_atom), len(g.shifts)
        species[k, :natom] = g.species
        positions[k, :natom] = g.positions
        atom_mask[k, :natom] = True
        edge_index[k, :nedge] = g.edges
        edge_shift[k, :nedge] = g.shifts[g.edge_slot] @ g.lattice
        edge_mask[k, :nedge] = True
        ao_mask[k, :n] = True
        nao[k] = n
        lattice_shift[k, :nr] = g.shifts
        shift_inverse[k, :nr] = g.inverse
        shift_mask[k, :nr] = True
        lattice[k] = g.lattice
        if not gather:
            continue
        block_of = np.full((nr, natom, natom), -1, np.int64)
        block_of[0, np.arange(natom), np.arange(natom)] = np.arange(natom)
        block_of[g.edge_slot, g.edges[:, 0], g.edges[:, 1]] = a_max + np.arange(nedge)
        blk = block_of[:, g.ao_atom[:, None], g.ao_atom[None, :]]
        idx = blk * nc2 + g.ao_slot[None, :, None] * layout.nc + g.ao_slot[None, None, :]
        ao_gather[k, :nr, :n, :n] = np.where(blk >= 0, idx, zero)
    if zero + 1 >= 2**31:
        raise ValueError("batch too large for int32 gather indices")
    common = dict(
        species=species,
        positions=positions,
        atom_mask=atom_mask,
        edge_index=edge_index,
        edge_shift=edge_shift,
        edge_mask=edge_mask,
        ao_gather=ao_gather.reshape(b, -1).astype(np.int32),
        ao_mask=ao_mask,
        nao=nao,
        config=config,
    )
    if not periodic:
        return Batch(**common)
    return Batch(**common, lattice_shift=lattice_shift, shift_inverse=shift_inverse, shift_mask=shift_mask, lattice=lattice)


def prepare_batch(
    systems: Sequence[System],
    config,
    *,
    batch_size: int | None = None,
    pad_to: tuple[int, ...] | None = None,
    gather: bool = True,
) -> Batch:
    """Pad molecules (or crystals) into one fixed-shape :class:`Batch` (numpy; call outside jit).

    Args:
        systems: molecules (:class:`basis.system.System`, positions in Å).
        config: :class:`vardft.model.ModelConfig` (basis, elements, cutoff in Å).
        batch_size: pad the batch to this many molecules (default: ``len(systems)``);
            padding molecules have no atoms and give an all-zero H.
        pad_to: ``(atoms, edges, aos)`` slot counts, for crystals optionally
            ``(atoms, edges, aos, shifts)``; default: the bucket sizes
            (:func:`bucket_size`) of the largest molecule.
        gather: build the AO gather indices (N² per shift); ``False`` for
            :func:`vardft.model.predict_blocks` and :func:`real_space_blocks` only.

    Crystals (systems with a cell, all of them or none) give a periodic batch
    whose model output is H(R), (B, nR, N, N); see :class:`Batch`.

    Returns:
        :class:`Batch` with positions in Bohr.

    Raises:
        BasisError: an element outside ``config.elements`` or the basis.
        ValueError: ``pad_to`` or ``batch_size`` too small.
    """
    systems = [System.from_any(s) for s in systems]
    if not systems:
        raise ValueError("prepare_batch needs at least one system")
    layout = block_layout(config.basis, tuple(config.elements))
    periodic = {s.is_periodic for s in systems}
    if len(periodic) > 1:
        raise ValueError("a batch holds either molecules or crystals, not both")
    is_periodic = periodic.pop()
    make_graph = _crystal_graph if is_periodic else _molecule_graph
    graphs = [make_graph(s, layout, config.cutoff / BOHR_ANGSTROM) for s in systems]
    return _pad_graphs(graphs, config, layout, batch_size, pad_to, is_periodic, gather)


def real_space_blocks(diag, edge, batch: Batch, index: int):
    """The network's H(i, j, n) of crystal ``index`` as atom-pair blocks (numpy), symmetrised
    as :func:`assemble` does: H(i, j, n) = (M(i, j, n) + M(j, i, −n)ᵀ) / 2.

    Args:
        diag, edge: :func:`vardft.model.predict_blocks` of ``batch``.

    Returns:
        ``(pairs (P, 2), shifts (P, 3) int, blocks (P, m, m))`` with ``m`` the largest AO
        count of an element, each block in PySCF AO order (rows/columns beyond an atom's AO
        count zero); the on-site blocks (i, i, 0) first.
    """
    layout = block_layout(batch.config.basis, tuple(batch.config.elements))
    natom = int(np.asarray(batch.atom_mask)[index].sum())
    nedge = int(np.asarray(batch.edge_mask)[index].sum())
    species = np.asarray(batch.species)[index, :natom]
    edges = np.asarray(batch.edge_index)[index, :nedge]
    lattice = np.asarray(batch.lattice)[index]
    shifts = np.rint(np.asarray(batch.edge_shift)[index, :nedge] @ np.linalg.inv(lattice)).astype(np.int64)
    d = np.asarray(diag)[index, :natom]
    e = np.asarray(edge)[index, :nedge]
    key = {(int(i), int(j), tuple(n)): q for q, ((i, j), n) in enumerate(zip(edges, shifts))}
    reverse = np.array([key[(int(j), int(i), tuple(-n))] for (i, j), n in zip(edges, shifts)], dtype=np.int64)
    sym_diag = 0.5 * (d + np.swapaxes(d, 1, 2))
    sym_edge = 0.5 * (e + np.swapaxes(e[reverse], 1, 2))
    m = int(layout.element_nao.max())
    out = np.zeros((natom + nedge, m, m))
    atom_of = np.concatenate([np.arange(natom), edges[:, 0]]), np.concatenate([np.arange(natom), edges[:, 1]])
    for q, (blk, i, j) in enumerate(zip(np.concatenate([sym_diag, sym_edge]), *atom_of)):
        si, sj = layout.element_slots[species[i]], layout.element_slots[species[j]]
        out[q, : len(si), : len(sj)] = blk[np.ix_(si, sj)]
    pairs = np.stack(atom_of, axis=1)
    all_shifts = np.concatenate([np.zeros((natom, 3), np.int64), shifts])
    return pairs, all_shifts, out


def assemble(diag_blocks, edge_blocks, ao_gather, shift_inverse=None):
    """Place blocks into symmetric AO matrices (jit-able, differentiable).

    Args:
        diag_blocks: (B, A, nc, nc) one block per atom slot.
        edge_blocks: (B, E, nc, nc) block ``H_ij`` for each edge ``(i, j)``.
        ao_gather: (B, N*N) int indices from :func:`prepare_batch`;
            for crystals (B, nR*N*N).
        shift_inverse: ``None`` (molecules) or (B, nR) slot of ``−R`` for each ``R``.

    Returns:
        (B, N, N) ``(M + M^T) / 2`` of the gathered matrix ``M``; AOs without a
        block (padding, pairs beyond the cutoff) are exactly zero. Crystals:
        (B, nR, N, N) ``H(R) = (M(R) + M(−R)^T) / 2``.
    """
    b, n2 = ao_gather.shape
    if shift_inverse is not None:
        nr = shift_inverse.shape[1]
        n = int(round(math.sqrt(n2 // nr)))
        flat = jnp.concatenate(
            [diag_blocks.reshape(b, -1), edge_blocks.reshape(b, -1), jnp.zeros((b, 1), diag_blocks.dtype)], axis=1
        )
        m = jnp.take_along_axis(flat, ao_gather, axis=1).reshape(b, nr, n, n)
        m_neg = jnp.take_along_axis(m, jnp.asarray(shift_inverse)[:, :, None, None], axis=1)
        return 0.5 * (m + jnp.swapaxes(m_neg, 2, 3))
    n = int(round(math.sqrt(n2)))
    flat = jnp.concatenate(
        [
            diag_blocks.reshape(b, -1),
            edge_blocks.reshape(b, -1),
            jnp.zeros((b, 1), diag_blocks.dtype),
        ],
        axis=1,
    )
    m = jnp.take_along_axis(flat, ao_gather, axis=1).reshape(b, n, n)
    return 0.5 * (m + jnp.swapaxes(m, 1, 2))


def unpad(H, batch: Batch, index: int) -> np.ndarray:
    """(nao, nao) numpy H of molecule ``index`` of a batch, PySCF AO order."""
    n = int(np.asarray(batch.nao)[index])
    return np.asarray(H[index, :n, :n])


def unpad_real_space(H, batch: Batch, index: int) -> tuple[np.ndarray, np.ndarray]:
    """H(R) of crystal ``index`` of a periodic batch, numpy.

    Returns:
        ``(H_R (nR, nao, nao), shifts (nR, 3) int)``; ``R = 0`` first; the
        Cartesian translations are ``shifts @ lattice``.
    """
    n = int(np.asarray(batch.nao)[index])
    nr = int(np.asarray(batch.shift_mask)[index].sum())
    return np.asarray(H[index, :nr, :n, :n]), np.asarray(batch.lattice_shift)[index, :nr].astype(np.int64)


def bloch_sum_batch(H_R, batch: Batch, kpts):
    """H(k) = Σ_R e^{ik·T_R} H(R) for every crystal of a periodic batch (jit-able).

    Args:
        H_R: (B, nR, N, N) real-space blocks (the model's output).
        batch: the periodic :class:`Batch` they belong to.
        kpts: (B, nk, 3) or (nk, 3) Cartesian k-points, 1/Bohr.

    Returns:
        (B, nk, N, N) complex128, Hermitian; padding slots contribute nothing.
    """
    T = jnp.einsum("brx,bxy->bry", jnp.asarray(batch.lattice_shift, jnp.float64), jnp.asarray(batch.lattice))
    kpts = jnp.asarray(kpts, jnp.float64)
    if kpts.ndim == 2:
        kpts = jnp.broadcast_to(kpts, (T.shape[0],) + kpts.shape)
    phase = jnp.exp(1j * jnp.einsum("bkx,brx->bkr", kpts, T)) * jnp.asarray(batch.shift_mask)[:, None, :]
    return jnp.einsum("bkr,brij->bkij", phase, jnp.asarray(H_R).astype(jnp.complex128))
