""" timm-mod: CNN Mixture-of-Depths models for timm. Importing the package registers the zoo in timm."""
from .mod import ChannelSelector, MoDBlock, fuse_channels, gather_channels, mod_every_second_block, mod_width
from .efficientnet import MoDEfficientNet
from .resnet import MoDResNet

__version__ = '0.1.0'
