""" ResNet-MoD: timm's ResNet with a Mixture-of-Depths block at every second position of each stage

Paper: `CNN Mixture-of-Depths` - https://arxiv.org/abs/2409.17016 (Tables 1, 2, 7, 8)

The dense blocks, the stem, the head and the whole model API are timm's `ResNet`; the MoD blocks wrap
timm's own `BasicBlock` / `Bottleneck` built at width k. The module is named after timm's `resnet` so
that timm's registry files these models with the ResNets they extend.
"""
from functools import partial
from typing import Any, Dict, Tuple, Type, Union

import torch.nn as nn
from timm.models import register_model, generate_default_cfgs
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..layers import ModArgs
from ._builder import build_mod_model, mod_cfg
from ._family import ModFamily, UnsupportedModelError, apply_mod, norm_layer_of, register_family

__all__ = ['MoDResNet', 'RESNET_FAMILY', 'resnet_block_config', 'slim_resnet_block']

ResNetBlock = Union[Type[BasicBlock], Type[Bottleneck]]


def resnet_block_config(dense: nn.Module) -> Dict[str, Any]:
    """ The settings a timm BasicBlock / Bottleneck was built with, read back from the block itself.

    Grouped widths follow timm's rule, width = floor(planes * base_width / 64) * cardinality.
    """
    if isinstance(dense, Bottleneck):
        width, cardinality = dense.conv2.out_channels, dense.conv2.groups
        planes = dense.conv3.out_channels // Bottleneck.expansion
        base_width = width // cardinality * 64 // planes
    elif isinstance(dense, BasicBlock):
        width, cardinality, base_width = dense.conv2.out_channels, 1, 64
    else:
        raise UnsupportedModelError(f'A timm ResNet block is a BasicBlock or Bottleneck, not {type(dense).__name__}.')
    return dict(
        cardinality=cardinality,
        base_width=base_width,
        reduce_first=width // dense.conv1.out_channels,
        act_layer=type(dense.act1),
        norm_layer=norm_layer_of(dense.bn1),
        attn_layer=None if dense.se is None else type(dense.se),
    )


def slim_resnet_block(dense: nn.Module, width: int, **block_kwargs: Any) -> nn.Module:
    """ The dense block's own class at width k: Bottleneck(k, k // 4) is 1x1 k -> k/4, 3x3, 1x1 k/4 -> k.

    A ResNeXt block keeps its cardinality, so its groups shrink with k as they do from stage to stage.
    """
    block_cls = type(dense)
    expansion = block_cls.expansion
    if width % expansion:
        raise ValueError(
            f'MoD width k={width} is not a multiple of the {block_cls.__name__} expansion {expansion}, so a slim '
            f'{block_cls.__name__} cannot map k channels to k; choose c so that every stage width // c is a '
            f'multiple of {expansion} (the paper uses c=64).')
    cardinality, base_width = block_kwargs.get('cardinality', 1), block_kwargs.get('base_width', 64)
    if (width // expansion) * base_width < 64:
        raise ValueError(
            f'MoD width k={width} gives a slim {block_cls.__name__} with {cardinality} groups of '
            f'floor({width // expansion} * {base_width} / 64) = 0 channels; choose a smaller c.')
    return block_cls(width, width // expansion, dilation=dense.dilation, **block_kwargs)


def _resnet_slim_width_ok(dense: nn.Module, width: int) -> bool:
    expansion = type(dense).expansion
    return width % expansion == 0 and (width // expansion) * resnet_block_config(dense)['base_width'] >= 64


def _init_resnet_block(block: nn.Module, zero_init_last: bool = True) -> None:
    """ timm's ResNet init (Kaiming normal convs, by default a zeroed last norm), on one block."""
    ResNet.init_weights(block, zero_init_last=zero_init_last)


RESNET_FAMILY = register_family(ModFamily(
    name='ResNet',
    model_types=(ResNet,),
    stages=lambda model: [model.layer1, model.layer2, model.layer3, model.layer4],
    slim_block=lambda dense, width, **dd: slim_resnet_block(dense, width, **resnet_block_config(dense), **dd),
    slim_width_ok=_resnet_slim_width_ok,
    init_block=_init_resnet_block,
    preferred_c=64,
))


class MoDResNet(ResNet):
    """ ResNet whose blocks at odd indices of every stage are MoD blocks over slim copies of themselves."""

    def __init__(
            self,
            block: Union[ResNetBlock, Tuple[ResNetBlock, ...]],
            layers: Tuple[int, ...],
            zero_init_last: bool = True,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            block, layers, zero_init_last: As timm's `ResNet`; the slim blocks are initialised the same way.
            **kwargs: The MoD arguments (`timm_mod.layers.ModArgs`, c 64 by default as in the paper) and
                the rest of timm's `ResNet` arguments (channels, cardinality, block_args, num_classes,
                drop_path_rate, ...); the slim blocks are rebuilt from the dense blocks these make.
        """
        mod_args = ModArgs.pop_from(kwargs, c=RESNET_FAMILY.preferred_c)
        super().__init__(block=block, layers=layers, zero_init_last=zero_init_last, **kwargs)
        apply_mod(self, RESNET_FAMILY, mod_args,
                  init_block=partial(_init_resnet_block, zero_init_last=zero_init_last))


def _create_mod_resnet(variant: str, pretrained: bool = False, **kwargs: Any) -> MoDResNet:
    return build_mod_model(MoDResNet, variant, pretrained, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return mod_cfg(**dict(dict(first_conv='conv1', classifier='fc'), **kwargs))


default_cfgs = generate_default_cfgs({
    'resnet18_mod': _cfg(),
    'resnet26_mod': _cfg(),
    'resnet34_mod': _cfg(),
    'resnet42_mod': _cfg(),
    'resnet50_mod': _cfg(),
    'resnet75_mod': _cfg(),
    'resnet86_mod': _cfg(),
    'resnet101_mod': _cfg(),
    'resnet152_mod': _cfg(),
    'resnet50_mod_rand': _cfg(),
    'resnet50_mod_lk': _cfg(),
    'resnet75_mod_lk': _cfg(),
    'resnet86_mod_lk': _cfg(),
    'resnet50d_mod': _cfg(first_conv='conv1.0'),
    'seresnext50_32x4d_mod': _cfg(),
})


@register_model
def resnet18_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet18-MoD (paper Table 2)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 2, 2), c=64)
    return _create_mod_resnet('resnet18_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet26_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet26-MoD (paper Table 2)."""
    model_args = dict(block=BasicBlock, layers=(2, 2, 3, 4), c=64)
    return _create_mod_resnet('resnet26_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet34_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet34-MoD (paper Table 2)."""
    model_args = dict(block=BasicBlock, layers=(3, 4, 6, 3), c=64)
    return _create_mod_resnet('resnet34_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet42_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet42-MoD (paper Table 2)."""
    model_args = dict(block=BasicBlock, layers=(3, 3, 6, 6), c=64)
    return _create_mod_resnet('resnet42_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet50-MoD (paper Table 1)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), c=64)
    return _create_mod_resnet('resnet50_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet75_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet75-MoD (paper Table 1)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 14, 3), c=64)
    return _create_mod_resnet('resnet75_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet86_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet86-MoD (paper Table 1)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 18, 3), c=64)
    return _create_mod_resnet('resnet86_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet101_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet101-MoD (paper Table 1)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 23, 3), c=64)
    return _create_mod_resnet('resnet101_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet152_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet152-MoD (paper Table 1)."""
    model_args = dict(block=Bottleneck, layers=(3, 8, 36, 3), c=64)
    return _create_mod_resnet('resnet152_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_mod_rand(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet50-MoD with random routing, no selector ("MoD50 rand.", paper Table 1)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), c=64, routing='random')
    return _create_mod_resnet('resnet50_mod_rand', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50_mod_lk(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet50-MoD fusing into the last k channels ("R50-MoD-lk", paper Table 8)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), c=64, fusion='last')
    return _create_mod_resnet('resnet50_mod_lk', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet75_mod_lk(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet75-MoD fusing into the last k channels ("R75-MoD-lk", paper Table 8)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 14, 3), c=64, fusion='last')
    return _create_mod_resnet('resnet75_mod_lk', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet86_mod_lk(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet86-MoD fusing into the last k channels ("R86-MoD-lk", paper Table 8)."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 18, 3), c=64, fusion='last')
    return _create_mod_resnet('resnet86_mod_lk', pretrained, **dict(model_args, **kwargs))


@register_model
def resnet50d_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """ResNet50-D-MoD (ours): timm's resnet50d (deep stem, average-pool downsampling) with MoD, c=64."""
    model_args = dict(block=Bottleneck, layers=(3, 4, 6, 3), stem_width=32, stem_type='deep', avg_down=True, c=64)
    return _create_mod_resnet('resnet50d_mod', pretrained, **dict(model_args, **kwargs))


@register_model
def seresnext50_32x4d_mod(pretrained: bool = False, **kwargs) -> MoDResNet:
    """SE-ResNeXt50 (32x4d)-MoD (ours): c=4, the largest c whose slim blocks keep all 32 groups."""
    model_args = dict(
        block=Bottleneck, layers=(3, 4, 6, 3), cardinality=32, base_width=4, block_args=dict(attn_layer='se'), c=4)
    return _create_mod_resnet('seresnext50_32x4d_mod', pretrained, **dict(model_args, **kwargs))
