"""Flax linen modules: pure functions of (variables, inputs)."""
