""" Model building shared by the MoD families, as timm's `_builder`: the families' default cfg, timm's builder, and
clear errors for missing weights and for weights that do not fit (named in MoD terms by `_helpers`)."""
from typing import Any, Dict, Optional, Type, TypeVar

import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, load_state_dict, resolve_pretrained_cfg

from ._helpers import describe_state_dict_mismatch
from ._timm_private import load_state_dict_from_hf, load_state_dict_from_path, resolve_pretrained_source

ModelT = TypeVar('ModelT', bound=nn.Module)

PAPER_ID = 'arXiv:2409.17016'


def mod_cfg(**kwargs: Any) -> Dict[str, Any]:
    """ ImageNet defaults of the paper's recipe (paper Appendix A.1); no weight source until weights exist."""
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'paper_ids': PAPER_ID, 'license': 'apache-2.0',
        **kwargs,
    }


def require_weight_source(variant: str, pretrained_cfg: Optional[Dict], pretrained_cfg_overlay: Optional[Dict]) -> None:
    """ Fail before building when `pretrained=True` has nothing to load, saying how to give weights."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    load_from, _ = resolve_pretrained_source(cfg.to_dict())
    if not load_from:
        raise RuntimeError(
            f'No pretrained weights are published for {variant!r} yet, so pretrained=True has nothing to load. '
            f'Give a weight source: timm.create_model({variant!r}, pretrained=True, '
            f'pretrained_cfg_overlay=dict(file="path/to/model.safetensors or checkpoint.pth.tar")), '
            f'timm.create_model("local-dir:/path/to/folder", pretrained=True), '
            f'or timm.create_model("hf-hub:ORG/NAME", pretrained=True); or use pretrained=False for random init.')


def build_mod_model(
        model_cls: Type[ModelT],
        variant: str,
        pretrained: bool = False,
        **kwargs: Any,
) -> ModelT:
    """ `build_model_with_cfg`, with clear errors for a missing weight source and for weights that do not fit."""
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    require_weight_source(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except RuntimeError as error:
        if 'Error(s) in loading state_dict' not in str(error):
            raise
        location, state_dict = _pretrained_state_dict(variant, kwargs)
        model = build_model_with_cfg(model_cls, variant, False, **kwargs)
        detail = describe_state_dict_mismatch(model, state_dict) if isinstance(model, nn.Module) else ''
        raise RuntimeError(
            f'The weights from {location} do not fit {variant!r}: '
            f'{detail or str(error)[:600]}. Create the model the weights were trained as.') from error


def _pretrained_state_dict(variant: str, kwargs: Dict[str, Any]):
    """ The state dict timm tried to load (an error path only: the weights are read a second time)."""
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    )
    load_from, location = resolve_pretrained_source(cfg.to_dict())
    if load_from == 'state_dict':
        return 'the given state dict', location
    if load_from == 'file':
        return location, load_state_dict(location)
    if load_from == 'local-dir':
        return location, load_state_dict_from_path(location)
    if isinstance(location, tuple):  # (hub id, file name)
        return f'hf-hub:{location[0]}', load_state_dict_from_hf(*location)
    return f'hf-hub:{location}', load_state_dict_from_hf(location)
