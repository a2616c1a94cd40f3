""" Every private timm name the package uses, in one place: these are what pin `timm<1.1` in pyproject.toml.

timm keeps the EfficientNet family's blocks and arch-def builder, and its pretrained-source resolution and Hub
loaders, in `_`-prefixed modules; the MoD families rebuild those blocks at width k and name the weights that do not
fit, so they import them. A timm release that moves one of these breaks this module alone.
"""
from timm.models._builder import _resolve_pretrained_source
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual, SqueezeExcite
from timm.models._efficientnet_builder import (
    BlockArgs, decode_arch_def, efficientnet_init_weights, resolve_act_layer, resolve_bn_args, round_channels)
from timm.models._hub import load_state_dict_from_hf, load_state_dict_from_path

__all__ = [
    'BlockArgs', 'DepthwiseSeparableConv', 'InvertedResidual', 'SqueezeExcite', 'decode_arch_def',
    'efficientnet_init_weights', 'load_state_dict_from_hf', 'load_state_dict_from_path', 'resolve_act_layer',
    'resolve_bn_args', 'resolve_pretrained_source', 'round_channels',
]

resolve_pretrained_source = _resolve_pretrained_source
