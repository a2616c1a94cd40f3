""" The MoD model families, declared as timm declares its own: one public module per family, which registers its
models, and the private machinery they share (`_family`: where MoD goes and `to_mod`; `_factory`, `_builder`,
`_helpers`: creating, building and loading, as timm's modules of those names; `_zoo`: the paper's table;
`_timm_private`: the private timm names used). `dense_prediction` puts them under torchvision's heads.
Importing this package registers every `*_mod` model with timm."""
from ._builder import build_mod_model, mod_cfg
from ._factory import create_mod_model, is_mod_model_name, require_registered
from ._family import (
    MOD_FAMILIES, ModFamily, SlimBlockFn, UnsupportedModelError, apply_mod, block_in_channels, default_c,
    every_second_block, find_family, mod_block_for, mod_every_second_block, mod_positions, norm_layer_of,
    register_family, to_mod)
from ._helpers import (
    Checkpoint, describe_state_dict_mismatch, infer_num_classes, load_checkpoint_file, load_trained_model,
    model_from_checkpoint)
from ._zoo import (
    OUR_MODELS, PAPER_BASELINE_GMACS, PAPER_MODELS, ZOO_COLUMNS, PaperModel, ZooRow, baseline_of,
    count_params_and_macs, describe_zoo, measure, zoo_table_rows)
from .convnext import MoDConvNeXt
from .efficientnet import MoDEfficientNet
from .regnet import MoDRegNet
from .resnet import MoDResNet

__all__ = [
    'Checkpoint', 'MOD_FAMILIES', 'MoDConvNeXt', 'MoDEfficientNet', 'MoDRegNet', 'MoDResNet', 'ModFamily',
    'OUR_MODELS', 'PAPER_BASELINE_GMACS', 'PAPER_MODELS', 'PaperModel', 'SlimBlockFn', 'UnsupportedModelError',
    'ZOO_COLUMNS', 'ZooRow', 'apply_mod', 'baseline_of', 'block_in_channels', 'build_mod_model',
    'count_params_and_macs', 'create_mod_model', 'default_c', 'describe_state_dict_mismatch', 'describe_zoo',
    'every_second_block', 'find_family', 'infer_num_classes', 'is_mod_model_name', 'load_checkpoint_file',
    'load_trained_model', 'measure', 'mod_block_for', 'mod_cfg', 'mod_every_second_block', 'mod_positions',
    'model_from_checkpoint', 'norm_layer_of', 'register_family', 'require_registered', 'to_mod', 'zoo_table_rows',
]
