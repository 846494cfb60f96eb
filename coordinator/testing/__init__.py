"""Concord's test kit: the deterministic simulator, its checkers, and broken variants.

Importable and typed (like trio.testing) so tests and `python -m coordinator.testing.sim`
share it; nothing outside tests may import it (an import-linter contract says so).
"""
