"""Strict JAX semantics for every test: silent rank promotion (a broadcasting bug) raises."""

import jax

jax.config.update("jax_numpy_rank_promotion", "raise")
