"""Using a trained model from Python: load a run, predict, seed PySCF.

Example:
    >>> import vardft
    >>> model = vardft.load("runs/water")                     # doctest: +SKIP
    >>> pred = model.predict(vardft.System.from_atoms(atoms))   # doctest: +SKIP
    >>> pred.hamiltonian.shape, pred.energy                     # doctest: +SKIP
    >>> mf.kernel(dm0=vardft.initial_guess("runs/water", mol))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from basis.errors import CheckpointError, InputError
from basis.integrals import DEFAULT_GRID_LEVEL, build_integrals
from basis.system import System
from solvers.eigen import canonical_orthogonalizer, solve_hamiltonian
from solvers.energy import total_energy
from vardft import checkpoint as ckpt


@dataclasses.dataclass(frozen=True)
class Prediction:
    """A predicted Hamiltonian and what follows from it (PySCF AO order, Hartree).

    Attributes:
        hamiltonian: (nao, nao) H.
        overlap: (nao, nao) S.
        density_matrix: (nao, nao) closed-shell P from the occupied eigenvectors of H.
        mo_energy: (nmo,) eigenvalues of H C = S C ε.
        mo_coeff: (nao, nmo) eigenvectors.
        energy: variational total energy E[P] with the run's functional, Hartree.
        system: the input.
    """

    hamiltonian: np.ndarray
    overlap: np.ndarray
    density_matrix: np.ndarray
    mo_energy: np.ndarray
    mo_coeff: np.ndarray
    energy: float
    system: System

    @property
    def homo(self) -> float:
        return float(self.mo_energy[self.system.n_electrons_all // 2 - 1])

    @property
    def lumo(self) -> float:
        return float(self.mo_energy[self.system.n_electrons_all // 2])


def model_config_from_dict(d: dict):
    """Rebuild a :class:`vardft.model.ModelConfig` from its ``to_dict`` (JSON lists → tuples)."""
    import dataclasses as dc

    from vardft.model import ModelConfig

    known = {f.name for f in dc.fields(ModelConfig)}
    return ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in known})


class Model:
    """A trained (or untrained, ``--steps 0``) Hamiltonian model from a run directory."""

    def __init__(self, run_dir: str):
        from vardft.model import init_params
        from vardft.train import TrainConfig

        self.run_dir = run_dir
        saved = ckpt.load_config(run_dir)
        self.config = TrainConfig.from_dict(saved["train"])
        self.model_config = model_config_from_dict(saved["model"])
        template = {
            "params": init_params(jax.random.PRNGKey(0), self.model_config),
        }
        state = ckpt.load_state_dict(run_dir)
        try:
            from flax import serialization

            self.params = serialization.from_state_dict(template["params"], state["params"])
        except Exception as exc:
            raise CheckpointError(f"checkpoint in {run_dir} does not match its config: {exc}") from None
        self.step = int(state.get("step", 0))

    @property
    def xc(self) -> str:
        return self.config.xc

    @property
    def basis(self) -> str:
        return self.config.basis

    def _check_elements(self, system: System) -> None:
        unknown = sorted(set(system.symbols) - set(self.model_config.elements))
        if unknown:
            raise InputError(
                f"the model in {self.run_dir} knows elements {', '.join(self.model_config.elements)}; "
                f"got {', '.join(unknown)}"
            )

    def hamiltonians(self, systems: Sequence[System]) -> list[np.ndarray]:
        """Predicted H (nao, nao) for each system, Hartree, PySCF AO order."""
        return [self._hamiltonian(System.from_any(system)) for system in systems]

    def _hamiltonian(self, system: System, ints=None) -> np.ndarray:
        """H of one system; ``ints`` (at the training grid level) are reused for the baseline."""
        from vardft.hamiltonian import predict_hamiltonian, prepare_batch, unpad
        from vardft.train import baseline_hamiltonian

        self._check_elements(system)
        system.require_closed_shell()
        batch = prepare_batch([system], self.model_config)
        delta = np.asarray(self.config.output_scale * unpad(predict_hamiltonian(self.params, batch), batch, 0))
        if self.config.baseline == "none":
            return delta
        if ints is None:
            ints = build_integrals(system, self.xc, self.basis, self.config.grid_level)
        return np.asarray(baseline_hamiltonian(ints, self.config.baseline)) + delta

    def predict(self, system) -> Prediction:
        """Hamiltonian, orbitals, density and variational energy of one system.

        The energy is evaluated on PySCF's grid level 3; the baseline of H on the run's
        training grid (the same integrals when the two levels agree).
        """
        system = System.from_any(system)
        ints = build_integrals(system, self.xc, self.basis, DEFAULT_GRID_LEVEL)
        H = self._hamiltonian(system, ints if self.config.grid_level == DEFAULT_GRID_LEVEL else None)
        X = canonical_orthogonalizer(np.asarray(ints.overlap))
        res = solve_hamiltonian(jnp.asarray(H), jnp.asarray(X), ints.n_electrons)
        energy = float(jax.jit(total_energy)(res.density, ints))
        return Prediction(
            hamiltonian=H,
            overlap=np.asarray(ints.overlap),
            density_matrix=np.asarray(res.density),
            mo_energy=np.asarray(res.mo_energy),
            mo_coeff=np.asarray(res.mo_coeff),
            energy=energy,
            system=system,
        )


def load(run_dir: str) -> Model:
    """Load the model of a run directory written by ``vardft train``."""
    return Model(run_dir)


def initial_guess(run_dir_or_model, mol) -> np.ndarray:
    """Density matrix (nao, nao) for ``mf.kernel(dm0=...)`` from a model's prediction.

    Args:
        run_dir_or_model: a run directory or a loaded :class:`Model`.
        mol: a built ``pyscf.gto.Mole`` in the model's basis.
    """
    model = run_dir_or_model if isinstance(run_dir_or_model, Model) else load(run_dir_or_model)
    if mol.nao != 0 and str(mol.basis).lower() != model.basis.lower():
        raise InputError(f"mol uses basis {mol.basis!r}; the model predicts {model.basis!r}")
    return model.predict(System.from_mole(mol)).density_matrix
