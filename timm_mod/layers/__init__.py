""" The MoD idea, readable on its own: the selector, the routing (top-k, gather), the fusion and the block."""
from .fusion import FUSION_TARGETS, SCORE_SCALINGS, fuse, fuse_at_indices, fuse_channels
from .mod_block import (
    ModArgs, MoDBlock, check_mod_options, has_mod_blocks, mod_blocks, mod_width, routing_hooks, selector_blocks)
from .routing import ROUTING_MODES, fixed_channel_indices, gather_channels, random_channel_indices, top_k_channels
from .selector import ChannelSelector

__all__ = [
    'ChannelSelector', 'FUSION_TARGETS', 'ModArgs', 'MoDBlock', 'ROUTING_MODES', 'SCORE_SCALINGS', 'check_mod_options',
    'fixed_channel_indices', 'fuse', 'fuse_at_indices', 'fuse_channels', 'gather_channels', 'has_mod_blocks',
    'mod_blocks', 'mod_width', 'random_channel_indices', 'routing_hooks', 'selector_blocks', 'top_k_channels',
]
