"""Helpers for the infra tests (Pulumi mocks, a synthetic edge bundle); tests: tests/unit/test_infra_*.py."""
