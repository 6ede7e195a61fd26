"""E(3)-equivariant network from species and positions to the AO Hamiltonian.

Architecture (flax.linen; spherical harmonics, Clebsch–Gordan coefficients and
irreps from e3nn-jax):

1. Species embedding: scalar node features.
2. ``num_layers`` message-passing layers: messages ``h_j ⊗ Y(r̂_ij)`` whose
   spherical harmonics are weighted per channel and degree by an MLP of a
   Bessel radial basis times a smooth polynomial envelope (zero at the cutoff),
   summed over neighbours, mixed linearly with a species-indexed
   self-interaction, then a gated nonlinearity. Hidden features carry
   ``l <= lmax_hidden``; the last layer lifts them to ``l <= 2 lmax(basis)``
   (4 for def2-SVP, 6 with f functions), both parities.
3. Diagonal blocks: a species-indexed linear map of node features onto the
   block irreps, plus a per-species scalar bias.
4. Off-diagonal blocks for every ordered pair within the cutoff: pair features
   ``(A h_i) ⊗ (B h_j)`` and ``(C h_i + D h_j) ⊗ Y(r̂_ij)``, radially weighted
   and gated, then a species-pair-indexed linear map onto the block irreps,
   times the envelope.
5. Blocks from irreps by the Clebsch–Gordan expansion
   (:func:`vardft.hamiltonian.irreps_to_block`), placed in the AO matrix by a
   precomputed gather and symmetrised, ``H = (M + M^T) / 2``: ``H_ji = H_ij^T``
   by construction, and ``H(Rx + t) = D(R) H(x) D(R)^T`` exactly.

Features use a *uniform-channel* layout, an array ``(..., channels, dim)`` in
which each irrep ``(l, parity)`` appears once; tensor products are single
dense contractions with precomputed Clebsch–Gordan tensors (with learnable
per-path, per-channel weights). This keeps the compiled program small (fast
compilation on CPU) at the cost of some multiplications by zero.

Example:
    >>> import jax
    >>> from vardft.model import ModelConfig, init_params, count_params
    >>> cfg = ModelConfig.preset("S", basis="def2-svp", elements=("H", "O"))
    >>> params = init_params(jax.random.PRNGKey(0), cfg)
    >>> count_params(params) > 0
    True
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from basis.system import System, canonical_symbol
from basis.units import BOHR_ANGSTROM
from vardft.hamiltonian import Batch, assemble, block_layout, irreps_to_block, prepare_batch

__all__ = ["ModelConfig", "HamiltonianModel", "init_params", "count_params", "PRESETS"]

ENVELOPE_DERIVATIVES = (5, 2)
"""Vanishing derivatives of the polynomial envelope at r = 0 and at the cutoff."""

PRESETS: dict[str, dict[str, Any]] = {
    "S": dict(num_layers=2, channels=16, lmax_hidden=2),
    "M": dict(num_layers=3, channels=32, lmax_hidden=2),
    "L": dict(num_layers=3, channels=48, lmax_hidden=3),
}
"""Size presets for :meth:`ModelConfig.preset`."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model (frozen, hashable; static under jit).

    Attributes:
        basis: PySCF basis name of the predicted H, e.g. ``"def2-svp"``.
        elements: element symbols the model knows; their order defines species indices.
        cutoff: radius in Ångström for message passing and off-diagonal blocks;
            blocks of pairs beyond it are zero, and go to zero smoothly at it.
        num_layers: message-passing layers.
        channels: channels of every irrep of the node and pair features.
        lmax_hidden: largest ``l`` of hidden node features (the last layer and the
            readout use ``2 lmax(basis)``).
        num_radial: Bessel radial basis functions.
        radial_hidden: width of the radial MLPs.
        avg_neighbors: summed messages are divided by ``sqrt(avg_neighbors)``.
        dtype: ``"float64"`` (default) or ``"float32"`` for parameters and
            activations; H is returned in float64 either way.
    """

    basis: str = "def2-svp"
    elements: tuple[str, ...] = ("H", "C", "N", "O", "F")
    cutoff: float = 8.0
    num_layers: int = 2
    channels: int = 16
    lmax_hidden: int = 2
    num_radial: int = 8
    radial_hidden: int = 32
    avg_neighbors: float = 8.0
    dtype: str = "float64"

    def __post_init__(self):
        object.__setattr__(self, "elements", tuple(canonical_symbol(s) for s in self.elements))
        object.__setattr__(self, "basis", str(self.basis).strip().lower())
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")
        if not (self.cutoff > 0 and self.num_layers >= 1 and self.channels >= 1 and self.lmax_hidden >= 1):
            raise ValueError("cutoff, num_layers, channels and lmax_hidden must be positive")

    @classmethod
    def preset(cls, name: str, **overrides) -> "ModelConfig":
        """A size preset ``"S"``, ``"M"`` or ``"L"``; keyword overrides (basis, cutoff, ...) win.

        >>> ModelConfig.preset("S", basis="def2-tzvp").num_layers
        2
        """
        key = str(name).upper()
        if key not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
        return cls(**{**PRESETS[key], **overrides})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``ModelConfig(**d)`` rebuilds the config."""
        d = dataclasses.asdict(self)
        d["elements"] = list(self.elements)
        return d

    @property
    def layout(self):
        """The canonical :class:`vardft.hamiltonian.BlockLayout` of basis and elements."""
        return block_layout(self.basis, self.elements)

    @property
    def jnp_dtype(self):
        return jnp.float64 if self.dtype == "float64" else jnp.float32


# ------------------------------------------------- uniform-channel irreps
@dataclasses.dataclass(frozen=True)
class _Layout:
    """Each irrep ``(l, parity)`` once; features are ``(..., channels, dim)``."""

    irreps: tuple[tuple[int, int], ...]

    @functools.cached_property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum([2 * l + 1 for l, _ in self.irreps])]).astype(np.int64)

    @property
    def dim(self) -> int:
        return int(self.offsets[-1])

    @functools.cached_property
    def irrep_of(self) -> np.ndarray:
        """(dim,) index of the irrep of each component."""
        return np.repeat(np.arange(len(self.irreps)), [2 * l + 1 for l, _ in self.irreps])

    @functools.cached_property
    def expand(self) -> np.ndarray:
        """(n_irreps, dim) 0/1 matrix: ``w @ expand`` repeats one value per irrep over its components."""
        return np.eye(len(self.irreps))[self.irrep_of].T.copy()

    def find(self, ir: tuple[int, int]) -> int:
        return self.irreps.index(ir) if ir in self.irreps else -1

    def component_slice(self, k: int) -> slice:
        return slice(int(self.offsets[k]), int(self.offsets[k + 1]))


def _layout(lmax: int, unnatural: bool) -> _Layout:
    """``l <= lmax`` with natural parity ``(-1)^l``, plus unnatural parity for ``l >= 1`` if asked."""
    irreps = []
    for l in range(lmax + 1):
        irreps.append((l, (-1) ** l))
        if unnatural and l > 0:
            irreps.append((l, -((-1) ** l)))
    return _Layout(tuple(irreps))


@functools.lru_cache(maxsize=None)
def _tp_tensor(a: _Layout, b: _Layout, out: _Layout):
    """Dense Clebsch–Gordan tensor (Da, Db, Dout) of all allowed paths and the path id of each entry.

    Each path ``(l1 p1) ⊗ (l2 p2) → (L, p1 p2)`` uses e3nn's coefficients scaled
    to unit component variance; outputs are divided by sqrt(number of paths into them).
    """
    t = np.zeros((a.dim, b.dim, out.dim))
    path = np.zeros((a.dim, b.dim, out.dim), dtype=np.int32)
    n_paths = 0
    into = np.zeros(len(out.irreps))
    for i, (l1, p1) in enumerate(a.irreps):
        for j, (l2, p2) in enumerate(b.irreps):
            for k, (l3, p3) in enumerate(out.irreps):
                if p3 != p1 * p2 or not abs(l1 - l2) <= l3 <= l1 + l2:
                    continue
                cg = np.asarray(e3nn.clebsch_gordan(l1, l2, l3)) * math.sqrt(2 * l3 + 1)
                sa, sb, sk = a.component_slice(i), b.component_slice(j), out.component_slice(k)
                t[sa, sb, sk] = cg
                path[sa, sb, sk] = n_paths
                n_paths += 1
                into[k] += 1
    t = t / np.sqrt(np.maximum(into, 1))[out.irrep_of][None, None, :]
    return t, path, n_paths


def _init_value(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The one initialisation rule (numpy): path weights 1, biases 0, embeddings N(0, 1),
    every other weight N(0, 1/fan_in) with ``fan_in = shape[-2]``."""
    if name == "path_w":
        return np.ones(shape)
    if name.endswith("bias"):
        return np.zeros(shape)
    if name == "embedding":
        return rng.normal(size=shape)
    return rng.normal(size=shape) / math.sqrt(shape[-2])


def _init(name: str):
    """flax initializer following :func:`_init_value` (used by ``HamiltonianModel.init``)."""

    def init(key, shape, dtype=jnp.float64):
        if name == "path_w":
            return jnp.ones(shape, dtype)
        if name.endswith("bias"):
            return jnp.zeros(shape, dtype)
        z = jax.random.normal(key, shape, dtype)
        return z if name == "embedding" else z / math.sqrt(shape[-2])

    return init


def _dense(features: int, dtype, name=None):
    return nn.Dense(features, use_bias=False, param_dtype=dtype, dtype=dtype, kernel_init=_init("kernel"), name=name)


class _Linear(nn.Module):
    """Equivariant channel mixing ``(..., C_in, D_in) → (..., C_out, D_out)``, one matrix per irrep.

    With ``num_types``, item ``n`` uses the weights of type ``types[n]``
    (``x``: (N, C_in, D_in), ``types``: (N,) int). Output irreps absent from the
    input are zero. One gather and one batched matmul, whatever the irreps.
    """

    layout_in: _Layout
    layout_out: _Layout
    channels_out: int
    num_types: int = 0
    dtype: Any = jnp.float64

    @nn.compact
    def __call__(self, x, types=None):
        c_in = x.shape[-2]
        common = [k for k, ir in enumerate(self.layout_out.irreps) if self.layout_in.find(ir) >= 0]
        shape = (len(common), c_in, self.channels_out)
        if self.num_types:
            shape = (self.num_types,) + shape
        w = self.param("w", _init("w"), shape, self.dtype)
        # per output component: its input component (or the zero pad) and its weight matrix (or zero)
        in_idx = np.full(self.layout_out.dim, self.layout_in.dim, dtype=np.int32)
        w_idx = np.full(self.layout_out.dim, len(common), dtype=np.int32)
        for j, k in enumerate(common):
            l, p = self.layout_out.irreps[k]
            src = self.layout_in.component_slice(self.layout_in.find((l, p)))
            dst = self.layout_out.component_slice(k)
            in_idx[dst] = np.arange(src.start, src.stop)
            w_idx[dst] = j
        real = in_idx < self.layout_in.dim
        n_real = int(real.sum())
        if np.array_equal(in_idx[:n_real], np.arange(n_real)) and not real[n_real:].any():
            x = jnp.pad(x[..., :n_real], [(0, 0)] * (x.ndim - 1) + [(0, self.layout_out.dim - n_real)])
        else:
            x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (1,), x.dtype)], axis=-1)[..., in_idx]
        w = jnp.concatenate([w, jnp.zeros(w.shape[:-3] + (1,) + w.shape[-2:], w.dtype)], axis=-3)
        if self.num_types:
            return jnp.einsum("nud,nduv->nvd", x, w[types[:, None], w_idx[None, :]])
        return jnp.einsum("...ud,duv->...vd", x, w[w_idx])


class _TensorProduct(nn.Module):
    """Equivariant product of per-channel features with a few shared "basis" features.

    ``out[e,u,k] = sum_g coeff[e,u,g] sum_{a,b} x[e,u,a] basis[e,g,b] T[a,b,k]``, where
    ``T`` holds the Clebsch–Gordan coefficients of every allowed path times a
    learnable weight per path. ``coeff`` is scalar (e.g. radial), so the product
    is equivariant; contracting ``basis`` with ``T`` first, once per edge and
    basis feature rather than per channel, keeps it cheap.

    Args (call):
        x: (E, C, Da) features in ``layout_a``.
        basis: (E, G, Db) features in ``layout_b``, or (E, Db) spherical harmonics
            when ``by_degree``: then basis feature ``g`` is the degree-``g`` part.
        coeff: (E, C, G) scalar coefficients.
    """

    layout_a: _Layout
    layout_b: _Layout
    layout_out: _Layout
    by_degree: bool = False
    dtype: Any = jnp.float64

    @nn.compact
    def __call__(self, x, basis, coeff):
        t, path, n_paths = _tp_tensor(self.layout_a, self.layout_b, self.layout_out)
        w = self.param("path_w", _init("path_w"), (n_paths,), self.dtype)
        tw = jnp.asarray(t, self.dtype) * w[path]
        if self.by_degree:
            parts = []
            for k in range(len(self.layout_b.irreps)):
                sl = self.layout_b.component_slice(k)
                parts.append(jnp.einsum("eb,abk->eak", basis[:, sl], tw[:, sl, :]))
            m = jnp.stack(parts, axis=1)
        else:
            m = jnp.einsum("egb,abk->egak", basis, tw)
        return jnp.einsum("eua,eug,egak->euk", x, coeff, m)


class _Gate(nn.Module):
    """Scalars through SiLU; each other irrep times a sigmoid gate computed from the scalars."""

    layout: _Layout
    dtype: Any = jnp.float64

    @nn.compact
    def __call__(self, x):
        assert self.layout.irreps[0] == (0, 1)
        s = x[..., 0]
        n_gated = len(self.layout.irreps) - 1
        if n_gated == 0:
            return jax.nn.silu(s)[..., None]
        c = x.shape[-2]
        g = jax.nn.sigmoid(_dense(c * n_gated, self.dtype)(s)).reshape(*s.shape[:-1], n_gated, c)
        g = jnp.swapaxes(g, -1, -2) @ jnp.asarray(self.layout.expand[1:, 1:], x.dtype)
        return jnp.concatenate([jax.nn.silu(s)[..., None], x[..., 1:] * g], axis=-1)


class _RadialMLP(nn.Module):
    """Radial basis (E, n) → weights (E, channels, n_out); bias-free, so zero where the basis is zero."""

    hidden: int
    channels: int
    n_out: int
    dtype: Any = jnp.float64

    @nn.compact
    def __call__(self, radial):
        z = jax.nn.silu(_dense(self.hidden, self.dtype)(radial))
        z = _dense(self.channels * self.n_out, self.dtype)(z) / math.sqrt(self.hidden)
        return z.reshape(*radial.shape[:-1], self.channels, self.n_out)


class _BlockReadout(nn.Module):
    """Type-indexed linear map from features (E, C, D) to block irreps vectors (E, nc**2).

    ``types``: (E,) int. Chunks ``mul x (L, p)`` of the block irreps are padded
    to a common multiplicity and dimension so that the map is one batched matmul.
    """

    layout_in: _Layout
    block_irreps: str
    num_types: int
    dtype: Any = jnp.float64

    @nn.compact
    def __call__(self, x, types):
        c = x.shape[-2]
        chunks = [(mul, ir) for mul, ir in e3nn.Irreps(self.block_irreps)]
        j_max = max(mul for mul, _ in chunks)
        m_max = max(ir.dim for _, ir in chunks)
        ws, comp, out_idx = [], [], []
        for k, (mul, ir) in enumerate(chunks):
            kin = self.layout_in.find((ir.l, ir.p))
            if kin < 0:
                raise ValueError(f"readout features lack {ir}")
            w = self.param(f"w_{ir}", _init("w"), (self.num_types, c, mul), self.dtype)
            ws.append(jnp.pad(w, ((0, 0), (0, 0), (0, j_max - mul))))
            sl = self.layout_in.component_slice(kin)
            comp.append(np.pad(np.arange(sl.start, sl.stop), (0, m_max - ir.dim), constant_values=self.layout_in.dim))
            j, m = np.meshgrid(np.arange(mul), np.arange(ir.dim), indexing="ij")
            out_idx.append(((k * j_max + j) * m_max + m).reshape(-1))
        w = jnp.stack(ws, axis=1)  # (T, K, C, J)
        x = jnp.concatenate([x, jnp.zeros(x.shape[:-1] + (1,), x.dtype)], axis=-1)[..., np.stack(comp)]
        y = jnp.einsum("eukm,ekuj->ekjm", x, w[types])  # (E, K, J, M)
        return y.reshape(y.shape[0], -1)[:, np.concatenate(out_idx)]


# ------------------------------------------------------------------ model
class HamiltonianModel(nn.Module):
    """Species and positions → H, (B, N, N) float64 Hartree in PySCF AO order
    (crystals: real-space blocks H(R), (B, nR, N, N), see :class:`vardft.hamiltonian.Batch`).

    Call with a :class:`vardft.hamiltonian.Batch` prepared for the same config:
    ``HamiltonianModel(cfg).apply(params, batch)`` (or
    :func:`predict_hamiltonian`, which is jitted).
    """

    config: ModelConfig
    blocks_only: bool = False
    """Return ``(diag (B, A, nc, nc), edge (B, E, nc, nc))`` blocks instead of the AO
    matrix: what :func:`predict_blocks` gives, for cells too large for dense H(R)."""
    edge_chunk: int | None = None
    """Edges per chunk of the per-edge work (messages, pair blocks), the chunks computed one
    after the other in a loop, so that memory holds one chunk's intermediates instead of all
    edges' (the same function up to summation order; for inference on large cells; applying
    only, never initialising). None: all edges at once, as in training."""

    @nn.compact
    def __call__(self, batch: Batch):
        cfg = self.config
        if batch.config != cfg:
            raise ValueError("the batch was prepared for a different ModelConfig")
        layout = cfg.layout
        dt = cfg.jnp_dtype
        n_el = len(cfg.elements)
        c = cfg.channels
        lmax_out = 2 * layout.lmax
        b, a = batch.species.shape
        e = batch.edge_index.shape[1]
        n = b * a
        cutoff = cfg.cutoff / BOHR_ANGSTROM

        # ---- geometry of the flattened graph (all molecules of the batch)
        species = jnp.asarray(batch.species).reshape(n)
        pos = jnp.asarray(batch.positions).astype(dt).reshape(n, 3)
        base = (jnp.arange(b, dtype=jnp.int32) * a)[:, None]
        dst = (jnp.asarray(batch.edge_index)[..., 0] + base).reshape(-1)  # i: block row, receiver
        src = (jnp.asarray(batch.edge_index)[..., 1] + base).reshape(-1)  # j: block column, sender
        edge_mask = jnp.asarray(batch.edge_mask).reshape(-1)
        vec = pos[src] - pos[dst] + jnp.asarray(batch.edge_shift).astype(dt).reshape(-1, 3)
        # padding edges get a harmless unit vector so that norms and gradients stay finite
        vec = jnp.where(edge_mask[:, None], vec, jnp.array([0.0, 0.0, 1.0], dt))
        r = jnp.sqrt(jnp.sum(vec**2, axis=-1))
        envelope = e3nn.poly_envelope(*ENVELOPE_DERIVATIVES, cutoff)(r) * edge_mask
        radial = e3nn.bessel(r, cfg.num_radial, cutoff) * envelope[:, None]
        sh = e3nn.spherical_harmonics(
            e3nn.Irreps.spherical_harmonics(max(lmax_out, cfg.lmax_hidden)), vec, normalize=True, normalization="component"
        ).array  # (E, (max(lmax_out, lmax_hidden) + 1)^2), e3nn basis; hidden layers may exceed 2·lmax(basis)

        chunked = self.edge_chunk is not None and not self.is_initializing()
        params = self.variables["params"] if chunked else None

        def sub(cls, name, *fields):
            """Submodule ``name``: bound as usual, or (chunked edges) a pure function of its
            parameters, callable inside the loop over chunks."""
            if not chunked:
                return cls(*fields, name=name)
            return functools.partial(cls(*fields, parent=None).apply, {"params": params[name]})

        def edge_arrays(ids):
            """src, dst, radial, sh, envelope of the edges ``ids`` (None: all edges)."""
            if ids is None:
                return src, dst, radial, sh, envelope
            return tuple(a[ids] for a in padded_edges)

        if chunked:  # one more, null edge (zero radial basis and envelope) fills the last chunk
            total = e * b
            n_chunks = -(-total // self.edge_chunk)
            chunk_ids = jnp.minimum(jnp.arange(n_chunks * self.edge_chunk).reshape(n_chunks, -1), total)
            padded_edges = tuple(
                jnp.concatenate([a, jnp.zeros((1,) + a.shape[1:], a.dtype)]) for a in (src, dst, radial, sh, envelope)
            )

        def edge_sum(f, shape):
            """Σ over edges of f(edge ids) summed into each edge's receiving atom, (n, *shape)."""
            if not chunked:
                return jax.ops.segment_sum(f(None), dst, num_segments=n)

            def step(acc, ids):
                return acc + jax.ops.segment_sum(f(ids), padded_edges[1][ids], num_segments=n), None

            return jax.lax.scan(step, jnp.zeros((n,) + shape, dt), chunk_ids)[0]

        def edge_map(f):
            """f(edge ids) of every edge, in edge order."""
            if not chunked:
                return f(None)
            out = jax.lax.map(f, chunk_ids)
            return out.reshape((-1,) + out.shape[2:])[: e * b]

        def sh_product(layout_in, lmax, layout_out, name):
            """(x per edge, radial, sh) → x ⊗ Y(r̂), weighted per channel and harmonic degree
            by a radial MLP."""
            mlp = sub(_RadialMLP, f"{name}_radial", cfg.radial_hidden, c, lmax + 1, dt)
            tp = sub(_TensorProduct, name, layout_in, _layout(lmax, False), layout_out, True, dt)
            return lambda x, rad, harmonics: tp(x, harmonics[:, : (lmax + 1) ** 2], mlp(rad))

        hidden = _layout(cfg.lmax_hidden, True)
        final = _layout(lmax_out, True)

        # ---- 1. embedding, 2. message passing
        h = nn.Embed(n_el, c, param_dtype=dt, dtype=dt, embedding_init=_init("embedding"), name="embed")(species)[..., None]
        h_layout = _Layout(((0, 1),))
        for t in range(cfg.num_layers):
            target = final if t == cfg.num_layers - 1 else hidden
            lsh = lmax_out if t == cfg.num_layers - 1 else cfg.lmax_hidden
            x = _Linear(h_layout, h_layout, c, dtype=dt, name=f"pre_{t}")(h)
            message = sh_product(h_layout, lsh, target, f"tp_{t}")

            def messages(ids, x=x, message=message):
                j, _, rad, harmonics, _ = edge_arrays(ids)
                return message(x[j], rad, harmonics)

            agg = edge_sum(messages, (c, target.dim)) / math.sqrt(cfg.avg_neighbors)
            u = _Linear(target, target, c, dtype=dt, name=f"post_{t}")(agg)
            u = u + _Linear(h_layout, target, c, n_el, dt, name=f"self_{t}")(h, species)
            h, h_layout = _Gate(target, dt, name=f"gate_{t}")(u), target

        block_irreps = layout.irreps

        # ---- 3. diagonal blocks
        d = _BlockReadout(final, block_irreps, n_el, dt, name="diag")(h, species)
        n_scalar = e3nn.Irreps(block_irreps)[0].mul
        bias = self.param("diag_bias", _init("diag_bias"), (n_el, n_scalar), dt)
        d = d.at[:, :n_scalar].add(bias[species])
        diag = irreps_to_block(d, layout).reshape(b, a, layout.nc, layout.nc)

        # ---- 4. off-diagonal blocks
        left = _Linear(final, hidden, c, dtype=dt, name="pair_left")(h)
        heads = max(2, c // 4)
        right = _Linear(final, hidden, heads, dtype=dt, name="pair_right")(h)
        node_coeff = sub(_RadialMLP, "pair_tp_nodes_radial", cfg.radial_hidden, c, heads, dt)
        node_tp = sub(_TensorProduct, "pair_tp_nodes", hidden, hidden, final, False, dt)
        s_i = _Linear(final, hidden, c, dtype=dt, name="pair_i")(h)
        s_j = _Linear(final, hidden, c, dtype=dt, name="pair_j")(h)
        sh_tp = sh_product(hidden, lmax_out, final, "pair_tp_sh")
        mix_nodes = sub(_Linear, "pair_mix_nodes", final, final, c, 0, dt)
        mix_sh = sub(_Linear, "pair_mix_sh", final, final, c, 0, dt)
        pair_radial = sub(_RadialMLP, "pair_radial", cfg.radial_hidden, c, len(final.irreps), dt)
        pair_gate = sub(_Gate, "pair_gate", final, dt)
        readout = sub(_BlockReadout, "offdiag", final, block_irreps, n_el * n_el, dt)

        def pair_blocks(ids):
            j, i, rad, harmonics, env = edge_arrays(ids)
            f1 = node_tp(left[i], right[j], node_coeff(rad))
            f2 = sh_tp(s_i[i] + s_j[j], rad, harmonics)
            f = mix_nodes(f1) + mix_sh(f2)
            f = pair_gate(f * (pair_radial(rad) @ jnp.asarray(final.expand, dt)))
            o = readout(f, species[i] * n_el + species[j])
            return irreps_to_block(o * env[:, None], layout)

        off = edge_map(pair_blocks).reshape(b, e, layout.nc, layout.nc)

        if self.blocks_only:
            return diag.astype(jnp.float64), off.astype(jnp.float64)

        # ---- 5. AO matrix
        # crystals: H(R) per lattice shift, (B, nR, N, N), H(−R) = H(R)^T
        shift_inverse = None if batch.shift_inverse is None else jnp.asarray(batch.shift_inverse)
        return assemble(diag, off, jnp.asarray(batch.ao_gather), shift_inverse).astype(jnp.float64)


@jax.jit
def predict_hamiltonian(params, batch: Batch):
    """H for every molecule of a batch (jitted; one compilation per bucket shape).

    Args:
        params: model parameters from :func:`vardft.model.init_params`.
        batch: :class:`Batch` from :func:`prepare_batch`; ``batch.config`` is static.

    Returns:
        (B, N, N) Kohn–Sham matrices in Hartree, PySCF AO order, padded AOs
        zero. Differentiable w.r.t. ``params`` and ``batch.positions``.
        For crystals: real-space blocks H(R), (B, nR, N, N), for the shifts
        ``batch.lattice_shift`` (padding slots zero).
    """
    return HamiltonianModel(batch.config).apply(params, batch)


@functools.partial(jax.jit, static_argnames=("edge_chunk",))
def predict_blocks(params, batch: Batch, edge_chunk: int | None = None):
    """The network's blocks before they are placed into AO matrices (jitted): diagonal
    blocks (B, A, nc, nc) and one block per edge (B, E, nc, nc), in the padded slots of
    ``batch.config.layout`` (PySCF AO order within each element's slots), unsymmetrised:
    :func:`predict_hamiltonian` gives H = (M + Mᵀ)/2 of them. ``batch`` may be prepared
    without AO gather indices (``prepare_batch(..., gather=False)``). ``edge_chunk``:
    :attr:`HamiltonianModel.edge_chunk` (memory of large cells)."""
    return HamiltonianModel(batch.config, blocks_only=True, edge_chunk=edge_chunk).apply(params, batch)


def _dummy_batch(config: ModelConfig) -> Batch:
    """A homonuclear dimer (even electron count) used only to create parameters."""
    s = config.elements[0]
    return prepare_batch([System((s, s), np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))], config)


def init_params(key: jax.Array, config: ModelConfig):
    """Random untrained parameters of :class:`HamiltonianModel`.

    Drawn with numpy from a seed taken from ``key`` (same distribution as
    ``HamiltonianModel(config).init``, see :func:`_init_value`) so that no XLA
    program has to be compiled; deterministic for a given key.

    Args:
        key: a ``jax.random.PRNGKey`` (raw or typed key).
        config: :class:`ModelConfig`.

    Returns:
        flax parameter pytree (float64 unless ``config.dtype == "float32"``); its
        shapes depend only on the config, not on the molecules it is applied to.
    """
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    rng = np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())
    shapes = jax.eval_shape(HamiltonianModel(config).init, jax.random.PRNGKey(0), _dummy_batch(config))
    leaves, tree = jax.tree_util.tree_flatten_with_path(shapes)
    values = [
        jnp.asarray(_init_value(rng, str(path[-1].key), leaf.shape), dtype=leaf.dtype) for path, leaf in leaves
    ]
    return jax.tree_util.tree_unflatten(tree, values)


def count_params(params) -> int:
    """Number of scalar parameters in a pytree."""
    return int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params)))
