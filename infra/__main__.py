"""Pulumi entry point (`pulumi up` in infra/): everything lives in importable modules."""

from infra.program import run

run()
