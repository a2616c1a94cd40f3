""" MobileNetV2-MoD: timm's EfficientNet (MobileNetV2 layout) with MoD at every second block of each stage

Paper: `CNN Mixture-of-Depths` - https://arxiv.org/abs/2409.17016 (Tables 1 and 6)
MobileNetV2: `MobileNetV2: Inverted Residuals and Linear Bottlenecks` - https://arxiv.org/abs/1801.04381

The stem, the dense blocks, the head and the model API are timm's `EfficientNet`, built from arch-def
strings by `decode_arch_def` and `EfficientNetBuilder`; the MoD blocks wrap timm's `InvertedResidual`
built at width k by the same builder settings. The module is named after timm's `efficientnet`, where
timm's own MobileNetV2 lives.
"""
from copy import deepcopy
from functools import partial
from typing import Any, Dict, List, Optional

import torch.nn as nn
from timm.layers import LayerType
from timm.models import register_model, generate_default_cfgs
from timm.models._efficientnet_blocks import SqueezeExcite
from timm.models._efficientnet_builder import (
    BlockArgs, EfficientNetBuilder, decode_arch_def, efficientnet_init_weights, resolve_act_layer, resolve_bn_args,
    round_channels)
from timm.models.efficientnet import EfficientNet

from ._builder import build_mod_model, mod_cfg, mod_default_cfgs
from .mod import MoDBlock, mod_every_second_block

__all__ = ['MoDEfficientNet', 'slim_efficientnet_block']


def slim_efficientnet_block(
        dense: nn.Module,
        width: int,
        builder: EfficientNetBuilder,
        block_args: Dict[str, Any],
) -> nn.Module:
    """ The dense block rebuilt by timm's builder from its own arch-def args, at width k in and out.

    InvertedResidual(k, k, exp_ratio=6) is 1x1 k -> 6k, depthwise 3x3, 1x1 6k -> k (timm rounds the
    expanded width to a multiple of 8, as it does for every dense block).
    """
    builder.in_chs = width
    slim_args = dict(deepcopy(block_args), out_chs=width, stride=1, dilation=dense.conv_dw.dilation[0])
    return builder._make_block(slim_args, 0, 1)


class MoDEfficientNet(EfficientNet):
    """ EfficientNet-family model whose blocks at odd indices of every multi-block stage are MoD blocks."""

    def __init__(
            self,
            block_args: BlockArgs,
            c: int = 16,
            r: int = 16,
            fusion: str = 'first',
            routing: str = 'learned',
            output_stride: int = 32,
            pad_type: str = '',
            act_layer: Optional[LayerType] = None,
            norm_layer: Optional[LayerType] = None,
            aa_layer: Optional[LayerType] = None,
            se_layer: Optional[LayerType] = None,
            device=None,
            dtype=None,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            block_args, output_stride, pad_type, act_layer, norm_layer, aa_layer, se_layer: As timm's
                `EfficientNet`; the slim blocks are built with the same settings.
            c: Channel divisor; MoD blocks process k = C // c channels (16 in the paper).
            r: Reduction of the channel selector (16 in the paper).
            fusion: 'first' (MoD) or 'last' (MoD-lk) k channels receive the processed channels.
            routing: 'learned' (selector) or 'random' (MoD rand.).
            **kwargs: The rest of timm's `EfficientNet` arguments (num_classes, in_chans, drop_path_rate, ...).
        """
        dd = {'device': device, 'dtype': dtype}
        stage_args: List[List[Dict[str, Any]]] = deepcopy(block_args)  # timm's builder edits block_args in place
        super().__init__(
            block_args=block_args,
            output_stride=output_stride,
            pad_type=pad_type,
            act_layer=act_layer,
            norm_layer=norm_layer,
            aa_layer=aa_layer,
            se_layer=se_layer,
            **dd,
            **kwargs,
        )
        slim_builder = EfficientNetBuilder(
            output_stride=output_stride,
            pad_type=pad_type,
            round_chs_fn=lambda chs: chs,  # a slim block is exactly k wide
            act_layer=act_layer or nn.ReLU,
            norm_layer=norm_layer or nn.BatchNorm2d,
            aa_layer=aa_layer,
            se_layer=se_layer or SqueezeExcite,
            **dd,
        )
        for stage, args in zip(self.blocks, stage_args):
            if len(stage) > 1:
                mod_every_second_block(
                    stage,
                    partial(slim_efficientnet_block, builder=slim_builder, block_args=args[1]),
                    c=c,
                    r=r,
                    fusion=fusion,
                    routing=routing,
                    **dd,
                )
        for module in self.modules():
            if isinstance(module, MoDBlock):  # timm's init assumes biased Linear layers, so only the slim blocks
                efficientnet_init_weights(module.block)


def _create_mod_mobilenetv2(
        variant: str,
        arch_def: List[List[str]],
        pretrained: bool = False,
        **kwargs: Any,
) -> MoDEfficientNet:
    """ MobileNetV2 settings as timm's `_gen_mobilenet_v2` (width 1.0): stem 32, head 1280, ReLU6."""
    model_kwargs = dict(
        block_args=decode_arch_def(arch_def),
        num_features=1280,
        stem_size=32,
        round_chs_fn=round_channels,
        norm_layer=kwargs.pop('norm_layer', None) or partial(nn.BatchNorm2d, **resolve_bn_args(kwargs)),
        act_layer=resolve_act_layer(kwargs, 'relu6'),
        **kwargs,
    )
    # timm's EfficientNetFeatures would rebuild the trunk without MoD, so features come from the model itself
    return build_mod_model(
        MoDEfficientNet, variant, pretrained, feature_cfg=dict(flatten_sequential=True), **model_kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    """ timm's mobilenetv2_100 defaults."""
    return mod_cfg(interpolation='bicubic', first_conv='conv_stem', classifier='classifier', **kwargs)


default_cfgs = generate_default_cfgs(mod_default_cfgs({
    'mobilenetv2_mod': _cfg(),
    'mobilenetv2_mod_l': _cfg(),
}))


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
    return _create_mod_mobilenetv2('mobilenetv2_mod', arch_def, pretrained, **dict(model_args, **kwargs))


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
    return _create_mod_mobilenetv2('mobilenetv2_mod_l', arch_def, pretrained, **dict(model_args, **kwargs))
