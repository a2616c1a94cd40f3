""" timm-mod: CNN Mixture-of-Depths models for timm. Importing the package registers the zoo in timm."""
from .convnext import MoDConvNeXt
from .efficientnet import MoDEfficientNet
from .mod import (
    ChannelSelector, MoDBlock, ModFamily, default_c, fuse_channels, gather_channels, mod_every_second_block, mod_width,
    to_mod)
from .regnet import MoDRegNet
from .resnet import MoDResNet

__all__ = [
    'ChannelSelector', 'MoDBlock', 'MoDConvNeXt', 'MoDEfficientNet', 'MoDRegNet', 'MoDResNet', 'ModFamily',
    'default_c', 'fuse_channels', 'gather_channels', 'mod_every_second_block', 'mod_width', 'to_mod',
]
__version__ = '0.2.0'
