"""Pure JAX electronic-structure physics: eigensolver, energy, Fock, SCF, bands."""

import jax

jax.config.update("jax_enable_x64", True)
