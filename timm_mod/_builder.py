""" Model building shared by the MoD families: timm's builder, plus a clear stop for missing weights."""
from typing import Any, Dict, Optional, Type, TypeVar

import torch.nn as nn
from timm.models import build_model_with_cfg, resolve_pretrained_cfg
from timm.models._builder import _resolve_pretrained_source

ModelT = TypeVar('ModelT', bound=nn.Module)

PAPER_ID = 'arXiv:2409.17016'


def mod_cfg(**kwargs: Any) -> Dict[str, Any]:
    """ ImageNet defaults of the paper's recipe (SPEC.md section 5); no weight source until weights exist."""
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': (0.485, 0.456, 0.406), 'std': (0.229, 0.224, 0.225),
        'paper_ids': PAPER_ID, 'license': 'apache-2.0',
        **kwargs,
    }


def require_weight_source(variant: str, pretrained_cfg: Optional[Dict], pretrained_cfg_overlay: Optional[Dict]) -> None:
    """ Fail before building when `pretrained=True` has nothing to load, saying how to give weights."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    load_from, _ = _resolve_pretrained_source(cfg.to_dict())
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
        source = (kwargs.get('pretrained_cfg_overlay') or {}).get('file') or 'the pretrained source'
        raise RuntimeError(
            f'The weights in {source} do not fit {variant!r}: they come from another architecture or other model '
            f'arguments (c, r, num_classes, ...). Create the model the checkpoint was trained as. '
            f'PyTorch says: {str(error)[:600]}') from error
