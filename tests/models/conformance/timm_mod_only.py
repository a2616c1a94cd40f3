""" pytest plugin for timm's own tests/test_models.py: register the MoD zoo, keep only its models.

Loaded with `-p timm_mod_only` before collection, so timm's parametrized model lists include the zoo;
every test that is not about a `*_mod` model is deselected.
"""
from typing import List

import pytest
import timm

import timm_mod  # noqa: F401  registers the zoo before test_models.py builds its model lists

MOD_MODELS = set(timm.list_models('*_mod*'))


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, 'callspec', None)
        model_name = callspec.params.get('model_name') if callspec is not None else None
        (keep if model_name in MOD_MODELS else drop).append(item)
    config.hook.pytest_deselected(items=drop)
    items[:] = keep
