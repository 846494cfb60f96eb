"""The public surface of `coordinator.fsm` (STYLE lesson 10): `__all__` is sorted (ruff
RUF022 order), every name resolves, nothing unlisted or private is bound publicly."""

from __future__ import annotations

import types

import pytest

from coordinator import fsm

PUBLIC = list(fsm.__all__)


def _isort_key(name: str) -> tuple[int, str]:
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2), name


def test_all_is_sorted_and_unique() -> None:
    assert sorted(PUBLIC, key=_isort_key) == PUBLIC
    assert len(set(PUBLIC)) == len(PUBLIC)


@pytest.mark.parametrize("name", PUBLIC)
def test_every_exported_name_resolves(name: str) -> None:
    assert not name.startswith("_")
    value = getattr(fsm, name)
    assert not isinstance(value, types.ModuleType)


def test_the_package_binds_no_unlisted_public_name() -> None:
    bound = {
        name
        for name, value in vars(fsm).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert bound == set(PUBLIC), f"not in __all__: {sorted(bound - set(PUBLIC))}"
