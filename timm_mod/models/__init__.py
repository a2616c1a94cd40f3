""" The MoD model families, declared as timm declares its own, and their machinery: where MoD goes (`_family`),
the builder, the zoo's published figures, checkpoints, Hub folders and dense-prediction heads. Importing this
package registers every `*_mod` model with timm."""
from ._builder import create_mod_model, is_mod_model_name, require_registered
from ._family import (
    MOD_FAMILIES, ModFamily, SlimBlockFn, UnsupportedModelError, apply_mod, block_in_channels, default_c,
    every_second_block, find_family, mod_block_for, mod_every_second_block, mod_positions, norm_layer_of,
    register_family, to_mod)
from .convnext import MoDConvNeXt
from .efficientnet import MoDEfficientNet
from .regnet import MoDRegNet
from .resnet import MoDResNet
from .zoo import OUR_MODELS, PAPER_MODELS, baseline_of, count_params_and_macs, measure

__all__ = [
    'MOD_FAMILIES', 'MoDConvNeXt', 'MoDEfficientNet', 'MoDRegNet', 'MoDResNet', 'ModFamily', 'OUR_MODELS',
    'PAPER_MODELS', 'SlimBlockFn', 'UnsupportedModelError', 'apply_mod', 'baseline_of', 'block_in_channels',
    'count_params_and_macs', 'create_mod_model', 'default_c', 'every_second_block', 'find_family',
    'is_mod_model_name', 'measure', 'mod_block_for', 'mod_every_second_block', 'mod_positions', 'norm_layer_of',
    'register_family', 'require_registered', 'to_mod',
]
