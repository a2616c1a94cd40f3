""" Creating models by name, as timm's `_factory`: registered MoD models, and plain timm models converted by
`to_mod` with the MoD arguments taken from the same keyword arguments."""
from dataclasses import fields
from typing import Any

import timm
import torch.nn as nn
from timm.models import model_entrypoint

from ..layers import ModArgs
from ._family import to_mod

__all__ = ['create_mod_model', 'is_mod_model_name', 'require_registered']


def require_registered(model_name: str) -> str:
    """ The name, or a clear error for a model timm does not know (a typo, or timm-mod not imported)."""
    if not timm.is_model(model_name):
        raise ValueError(f'Unknown model {model_name!r}; `timm-mod list` shows the MoD zoo, timm.list_models() all.')
    return model_name


def is_mod_model_name(model_name: str) -> bool:
    """ Whether timm-mod registered this model (as opposed to a plain timm model)."""
    return model_entrypoint(require_registered(model_name)).__module__.startswith('timm_mod.')


def create_mod_model(model_name: str, **kwargs: Any) -> nn.Module:
    """ `timm.create_model` for a registered MoD model; any other timm model of a supported family comes
    converted by `to_mod`, with the MoD arguments (`ModArgs`) taken from kwargs as the registered models take
    them, and the rest (pretrained, num_classes, ...) going to `timm.create_model`."""
    if is_mod_model_name(model_name):
        return timm.create_model(model_name, **kwargs)
    mod_args = {name: kwargs.pop(name) for name in (f.name for f in fields(ModArgs)) if name in kwargs}
    return to_mod(timm.create_model(model_name, **kwargs), **mod_args)
