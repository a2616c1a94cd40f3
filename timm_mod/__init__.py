""" timm-mod: CNN Mixture-of-Depths models for timm. Importing the package registers the zoo in timm."""
from .efficientnet import MoDEfficientNet
from .mod import ChannelSelector, MoDBlock, fuse_channels, gather_channels, mod_every_second_block, mod_width
from .resnet import MoDResNet

__all__ = [
    'ChannelSelector', 'MoDBlock', 'MoDEfficientNet', 'MoDResNet', 'fuse_channels', 'gather_channels',
    'mod_every_second_block', 'mod_width',
]
__version__ = '0.1.0'
