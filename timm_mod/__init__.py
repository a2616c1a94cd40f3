""" timm-mod: CNN Mixture-of-Depths models for timm. Importing the package registers the zoo in timm.

Floors, each importing only those below it: `timm_mod.layers` (the MoD idea: ModArgs, selector, routing, fusion,
block) <- `timm_mod.models` (families and their machinery: to_mod, building, loading, the paper's table) <-
`timm_mod.experiments` (what the commands do: train, compare, convert, publish, benchmark, runtimes, quantize, ...)
<- `timm_mod.commands` (the CLI); `timm_mod.utils` (files, folders, tables, timing; nothing of MoD) serves all.
0.3's module paths that moved (`models.hub`, `models.checkpoint`, `models.zoo`, `utils.runtimes`,
`utils.in_memory_data`) remain as deprecated aliases until 0.5, the only imports against the floors.
"""
from .layers import ChannelSelector, ModArgs, MoDBlock, fuse_channels, gather_channels, mod_width
from .models import (
    MoDConvNeXt, MoDEfficientNet, MoDRegNet, MoDResNet, ModFamily, UnsupportedModelError, default_c,
    mod_every_second_block, to_mod)

__all__ = [
    'ChannelSelector', 'ModArgs', 'MoDBlock', 'MoDConvNeXt', 'MoDEfficientNet', 'MoDRegNet', 'MoDResNet', 'ModFamily',
    'UnsupportedModelError', 'default_c', 'fuse_channels', 'gather_channels', 'mod_every_second_block', 'mod_width',
    'to_mod',
]
__version__ = '0.3.0'
