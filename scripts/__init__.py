"""Operator CLIs behind the `splitrelay` console script."""
