"""Helpers that build small, real artefacts for tests and benchmarks (no mocks)."""
