"""Checking results: Freivalds for matrix products, rule-based comparison of re-runs. Pure."""
