""" timm-mod: CNN Mixture-of-Depths models for timm. Importing the package registers the zoo in timm.

Layers: `timm_mod.layers` (the MoD idea: selector, routing, fusion, block) <- `timm_mod.models` (families, to_mod,
zoo, checkpoints, Hub) <- `timm_mod.experiments` (train, compare, benchmark, quantize, ...) <- `timm_mod.commands`
(the CLI); `timm_mod.utils` serves all of them.
"""
from .layers import ChannelSelector, MoDBlock, fuse_channels, gather_channels, mod_width
from .models import (
    MoDConvNeXt, MoDEfficientNet, MoDRegNet, MoDResNet, ModFamily, UnsupportedModelError, default_c,
    mod_every_second_block, to_mod)

__all__ = [
    'ChannelSelector', 'MoDBlock', 'MoDConvNeXt', 'MoDEfficientNet', 'MoDRegNet', 'MoDResNet', 'ModFamily',
    'UnsupportedModelError', 'default_c', 'fuse_channels', 'gather_channels', 'mod_every_second_block', 'mod_width',
    'to_mod',
]
__version__ = '0.3.0'
