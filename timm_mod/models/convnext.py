""" ConvNeXt-MoD: timm's ConvNeXt with a MoD block at every second position of each stage (ours, not the paper's)

Paper: `CNN Mixture-of-Depths` - https://arxiv.org/abs/2409.17016 (MoD "can be integrated into ... ConvNext")
ConvNeXt: `A ConvNet for the 2020s` - https://arxiv.org/abs/2201.03545

The paper names ConvNeXt but never builds it. The stem, downsampling, dense blocks, head and model API are
timm's `ConvNeXt`; each MoD block wraps timm's `ConvNeXtBlock` rebuilt at width k from the block it replaces.
"""
from typing import Any, Dict

import torch.nn as nn
from timm.layers import GlobalResponseNormMlp
from timm.models import register_model, generate_default_cfgs
from timm.models.convnext import ConvNeXt, ConvNeXtBlock, _init_weights

from ..layers import ModArgs
from ._builder import build_mod_model, mod_cfg
from ._family import ModFamily, UnsupportedModelError, apply_mod, norm_layer_of, register_family

__all__ = ['CONVNEXT_FAMILY', 'MoDConvNeXt', 'convnext_block_config']


def convnext_block_config(dense: nn.Module) -> Dict[str, Any]:
    """ The settings of a timm ConvNeXtBlock, read back from the block (layer scale starts at timm's 1e-6)."""
    if not isinstance(dense, ConvNeXtBlock):
        raise UnsupportedModelError(f'MoD for ConvNeXt wraps ConvNeXtBlock, not {type(dense).__name__}.')
    fc1 = dense.mlp.fc1.weight
    return dict(
        kernel_size=dense.conv_dw.kernel_size[0],
        dilation=dense.conv_dw.dilation[0],
        mlp_ratio=fc1.shape[0] / fc1.shape[1],
        conv_mlp=dense.use_conv_mlp,
        conv_bias=dense.conv_dw.bias is not None,
        use_grn=isinstance(dense.mlp, GlobalResponseNormMlp),
        ls_init_value=None if dense.gamma is None else 1e-6,
        act_layer=type(dense.mlp.act),
        norm_layer=norm_layer_of(dense.norm),
    )


CONVNEXT_FAMILY = register_family(ModFamily(
    name='ConvNeXt',
    model_types=(ConvNeXt,),
    stages=lambda model: [stage.blocks for stage in model.stages],
    slim_block=lambda dense, width, **dd: ConvNeXtBlock(width, width, **convnext_block_config(dense), **dd),
    slim_width_ok=lambda dense, width: True,
    init_block=lambda block: block.apply(_init_weights),
    preferred_c=16,
))


class MoDConvNeXt(ConvNeXt):
    """ ConvNeXt whose blocks at odd indices of every stage are MoD blocks over slim ConvNeXt blocks."""

    def __init__(
            self,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            **kwargs: The MoD arguments (`timm_mod.layers.ModArgs`, c 16 by default) and timm's
                `ConvNeXt` arguments (depths, dims, conv_mlp, num_classes, drop_path_rate, ...).
        """
        mod_args = ModArgs.pop_from(kwargs, c=CONVNEXT_FAMILY.preferred_c)
        super().__init__(**kwargs)
        apply_mod(self, CONVNEXT_FAMILY, mod_args)


def _create_mod_convnext(variant: str, pretrained: bool = False, **kwargs: Any) -> MoDConvNeXt:
    return build_mod_model(
        MoDConvNeXt, variant, pretrained, feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    """ timm's ConvNeXt defaults."""
    return mod_cfg(interpolation='bicubic', first_conv='stem.0', classifier='head.fc', **kwargs)


default_cfgs = generate_default_cfgs({
    'convnext_nano_mod': _cfg(),
    'convnext_tiny_mod': _cfg(),
})


@register_model
def convnext_nano_mod(pretrained: bool = False, **kwargs) -> MoDConvNeXt:
    """ConvNeXt-Nano-MoD (ours): timm's convnext_nano with MoD, c=16."""
    model_args = dict(depths=(2, 2, 8, 2), dims=(80, 160, 320, 640), conv_mlp=True, c=16)
    return _create_mod_convnext('convnext_nano_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def convnext_tiny_mod(pretrained: bool = False, **kwargs) -> MoDConvNeXt:
    """ConvNeXt-Tiny-MoD (ours): timm's convnext_tiny with MoD, c=16."""
    model_args = dict(depths=(3, 3, 9, 3), dims=(96, 192, 384, 768), c=16)
    return _create_mod_convnext('convnext_tiny_mod', pretrained, **dict(model_args, **kwargs))
