""" Registers the timm-mod zoo whenever timm is imported, so unmodified scripts accept `--model *_mod`.

`timm_mod_autoload.pth` (installed next to this module) imports it at interpreter start-up. It uses the
standard library only and adds an import hook: nothing is imported until a program imports timm; right
after timm finishes loading, the hook imports `timm_mod`, whose import registers the models, and removes itself.
Set TIMM_MOD_AUTOREGISTER=0 to turn it off.
"""
import importlib
import importlib.abc
import importlib.machinery
import os
import sys
import warnings
from types import ModuleType
from typing import Optional, Sequence

ENV_VAR = 'TIMM_MOD_AUTOREGISTER'


class _RegisterAfterLoading(importlib.abc.Loader):
    """ Runs timm's own loader, then imports timm_mod; everything else is timm's loader."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def __getattr__(self, name: str):
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _remove_hooks()  # timm is loaded once per process
        try:
            importlib.import_module('timm_mod')
        except Exception as error:  # a broken plugin must not break `import timm`
            warnings.warn(f'timm-mod could not register its models with timm: {error!r}', stacklevel=2)


class TimmImportHook(importlib.abc.MetaPathFinder):
    """ Finds timm as usual, wrapping its loader so that timm_mod is imported right after it.

    It stays in place until timm is actually loaded: programs probe with `importlib.util.find_spec('timm')`
    (transformers' `is_timm_available`, accelerate, lightning) long before they import it.
    """

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None):
        if fullname != 'timm':
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _RegisterAfterLoading(spec.loader)
        return spec


def _remove_hooks() -> None:
    sys.meta_path[:] = [finder for finder in sys.meta_path if not isinstance(finder, TimmImportHook)]


def install() -> None:
    """ Add the hook unless it is switched off, timm is already imported, or the hook is already there."""
    if os.environ.get(ENV_VAR, '1').strip().lower() in ('0', 'false', 'no', 'off'):
        return
    if 'timm' in sys.modules or any(isinstance(finder, TimmImportHook) for finder in sys.meta_path):
        return
    sys.meta_path.insert(0, TimmImportHook())


install()
