""" MobileNetV2-MoD: timm's EfficientNet (MobileNetV2 layout) with MoD at every second block of each stage

Paper: `CNN Mixture-of-Depths` - https://arxiv.org/abs/2409.17016 (Tables 1 and 6)
MobileNetV2: `MobileNetV2: Inverted Residuals and Linear Bottlenecks` - https://arxiv.org/abs/1801.04381

The stem, the dense blocks, the head and the model API are timm's `EfficientNet`, built from arch-def
strings by `decode_arch_def` and `EfficientNetBuilder`; the MoD blocks wrap timm's `InvertedResidual`
rebuilt at width k from the settings of the block each replaces. The module is named after timm's
`efficientnet`, where timm's own MobileNetV2 lives.
"""
from functools import partial
from typing import Any, Dict, List

import torch.nn as nn
from timm.layers import make_divisible
from timm.models import register_model, generate_default_cfgs
from timm.models.efficientnet import EfficientNet
from timm.models.mobilenetv3 import MobileNetV3

from ..layers import ModArgs
from ._builder import build_mod_model, mod_cfg
from ._family import ModFamily, UnsupportedModelError, apply_mod, norm_layer_of, register_family
from ._timm_private import (
    BlockArgs, DepthwiseSeparableConv, InvertedResidual, SqueezeExcite, decode_arch_def, efficientnet_init_weights,
    resolve_act_layer, resolve_bn_args, round_channels)

__all__ = ['EFFICIENTNET_FAMILY', 'MoDEfficientNet', 'efficientnet_block_config']

MOD_BLOCK_TYPES = (InvertedResidual, DepthwiseSeparableConv)


def _at_least_one(channels: float) -> int:
    """ Squeeze width of a slim block's SE: rounded like timm's, but never zero."""
    return max(1, round(channels))


def efficientnet_block_config(dense: nn.Module) -> Dict[str, Any]:
    """ The settings of a timm InvertedResidual / DepthwiseSeparableConv, read back from the block itself.

    Its SE keeps the dense block's squeeze ratio, activation and gate.
    """
    if not isinstance(dense, MOD_BLOCK_TYPES):
        raise UnsupportedModelError(
            f'MoD for the EfficientNet family wraps InvertedResidual and DepthwiseSeparableConv blocks, not '
            f'{type(dense).__name__}; this model has one where MoD would go.')
    dw_channels, dw_groups = dense.conv_dw.in_channels, dense.conv_dw.groups
    config = dict(
        dw_kernel_size=dense.conv_dw.kernel_size[0],
        dilation=dense.conv_dw.dilation[0],
        group_size=dw_channels // dw_groups if dw_groups > 1 else 0,
        pw_kernel_size=dense.conv_pw.kernel_size[0] if isinstance(dense, DepthwiseSeparableConv)
        else dense.conv_pwl.kernel_size[0],
        act_layer=type(dense.bn1.act),
        norm_layer=norm_layer_of(dense.bn1),
        se_layer=None,
    )
    if isinstance(dense.se, SqueezeExcite):
        config['se_layer'] = partial(
            type(dense.se),
            rd_ratio=dense.se.conv_reduce.out_channels / dense.se.conv_reduce.in_channels,
            rd_round_fn=_at_least_one,
            force_act_layer=type(dense.se.act1),
            gate_layer=type(dense.se.gate),
        )
    if isinstance(dense, InvertedResidual):
        config.update(exp_ratio=dense.conv_pw.out_channels / dense.conv_pw.in_channels,
                      exp_kernel_size=dense.conv_pw.kernel_size[0])
    else:
        config.update(pw_act=dense.has_pw_act)
    return config


def _efficientnet_slim_width_ok(dense: nn.Module, width: int) -> bool:
    """ Grouped (not depthwise) convolutions need the slim width to hold whole groups."""
    config = efficientnet_block_config(dense)
    dw_width = make_divisible(width * config.get('exp_ratio', 1.0))
    return config['group_size'] <= 1 or dw_width % config['group_size'] == 0


EFFICIENTNET_FAMILY = register_family(ModFamily(
    name='EfficientNet',
    model_types=(EfficientNet, MobileNetV3),
    stages=lambda model: list(model.blocks),
    slim_block=lambda dense, width, **dd: type(dense)(width, width, **efficientnet_block_config(dense), **dd),
    slim_width_ok=_efficientnet_slim_width_ok,
    init_block=efficientnet_init_weights,
    preferred_c=16,
))


class MoDEfficientNet(EfficientNet):
    """ EfficientNet-family model whose blocks at odd indices of every multi-block stage are MoD blocks."""

    def __init__(
            self,
            block_args: BlockArgs,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            block_args: As timm's `EfficientNet` (decoded arch-def).
            **kwargs: The MoD arguments (`timm_mod.layers.ModArgs`, c 16 by default as in the paper) and
                the rest of timm's `EfficientNet` arguments (num_classes, act_layer, se_layer,
                output_stride, drop_path_rate, ...); the slim blocks are rebuilt from the dense blocks these make.
        """
        mod_args = ModArgs.pop_from(kwargs, c=EFFICIENTNET_FAMILY.preferred_c)
        super().__init__(block_args=block_args, **kwargs)
        apply_mod(self, EFFICIENTNET_FAMILY, mod_args)


def _create_mod_efficientnet(
        variant: str,
        arch_def: List[List[str]],
        default_act: str,
        pretrained: bool = False,
        **kwargs: Any,
) -> MoDEfficientNet:
    """ The settings timm's `_gen_mobilenet_v2` and `_gen_efficientnet` use at multiplier 1.0: stem 32, head 1280,
    BatchNorm, `default_act` (relu6 for MobileNetV2, swish for EfficientNet) unless kwargs name another."""
    model_kwargs = dict(
        block_args=decode_arch_def(arch_def),
        num_features=1280,
        stem_size=32,
        round_chs_fn=round_channels,
        norm_layer=kwargs.pop('norm_layer', None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, default_act),
        **kwargs,
    )
    # timm's EfficientNetFeatures would rebuild the trunk without MoD, so features come from the model itself
    return build_mod_model(
        MoDEfficientNet, variant, pretrained, feature_cfg=dict(flatten_sequential=True), **model_kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    """ timm's mobilenetv2_100 defaults."""
    return mod_cfg(interpolation='bicubic', first_conv='conv_stem', classifier='classifier', **kwargs)


default_cfgs = generate_default_cfgs({
    'mobilenetv2_mod': _cfg(),
    'mobilenetv2_mod_l': _cfg(),
    'efficientnet_b0_mod': _cfg(),
})


@register_model
def mobilenetv2_mod(pretrained: bool = False, **kwargs) -> MoDEfficientNet:
    """MobileNetV2-MoD, width 1.0 (paper Table 1)."""
    arch_def = [
        ['ds_r1_k3_s1_c16'],
        ['ir_r2_k3_s2_e6_c24'],
        ['ir_r3_k3_s2_e6_c32'],
        ['ir_r4_k3_s2_e6_c64'],
        ['ir_r3_k3_s1_e6_c96'],
        ['ir_r3_k3_s2_e6_c160'],
        ['ir_r1_k3_s1_e6_c320'],
    ]
    model_args = dict(c=16)
    return _create_mod_efficientnet('mobilenetv2_mod', arch_def, 'relu6', pretrained, **dict(model_args, **kwargs))


@register_model
def mobilenetv2_mod_l(pretrained: bool = False, **kwargs) -> MoDEfficientNet:
    """MobileNetV2-MoD-L: stages 2-5 wider, same depth (paper Table 6)."""
    arch_def = [
        ['ds_r1_k3_s1_c16'],
        ['ir_r2_k3_s2_e6_c32'],
        ['ir_r3_k3_s2_e6_c64'],
        ['ir_r4_k3_s2_e6_c96'],
        ['ir_r3_k3_s1_e6_c128'],
        ['ir_r3_k3_s2_e6_c160'],
        ['ir_r1_k3_s1_e6_c320'],
    ]
    model_args = dict(c=16)
    return _create_mod_efficientnet('mobilenetv2_mod_l', arch_def, 'relu6', pretrained, **dict(model_args, **kwargs))


@register_model
def efficientnet_b0_mod(pretrained: bool = False, **kwargs) -> MoDEfficientNet:
    """EfficientNet-B0-MoD (ours): timm's efficientnet_b0 with MoD, c=6 (k >= 4 in every MoD stage)."""
    arch_def = [
        ['ds_r1_k3_s1_e1_c16_se0.25'],
        ['ir_r2_k3_s2_e6_c24_se0.25'],
        ['ir_r2_k5_s2_e6_c40_se0.25'],
        ['ir_r3_k3_s2_e6_c80_se0.25'],
        ['ir_r3_k5_s1_e6_c112_se0.25'],
        ['ir_r4_k5_s2_e6_c192_se0.25'],
        ['ir_r1_k3_s1_e6_c320_se0.25'],
    ]
    model_args = dict(c=6)
    return _create_mod_efficientnet('efficientnet_b0_mod', arch_def, 'swish', pretrained, **dict(model_args, **kwargs))
