"""Pulumi entry point (`pulumi up` in infra/): everything lives in importable modules."""

from splitrelay.infra.program import run

run()
