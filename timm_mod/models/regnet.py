""" RegNet-MoD: timm's RegNet with a MoD block at every second position of each stage (ours, not the paper's)

Paper: `CNN Mixture-of-Depths` - https://arxiv.org/abs/2409.17016
RegNet: `Designing Network Design Spaces` - https://arxiv.org/abs/2003.13678

The stem, dense blocks, head and model API are timm's `RegNet` (X and Y, from timm's own model configs);
each MoD block wraps timm's RegNet `Bottleneck` rebuilt at width k from the block it replaces.
"""
from functools import partial
from typing import Any, Dict

import torch.nn as nn
from timm.layers import SEModule
from timm.models import register_model, generate_default_cfgs
from timm.models.regnet import Bottleneck, RegNet, RegStage, _init_weights, model_cfgs

from ..layers import ModArgs
from ._builder import build_mod_model, mod_cfg
from ._family import ModFamily, UnsupportedModelError, apply_mod, norm_layer_of, register_family

__all__ = ['MoDRegNet', 'REGNET_FAMILY', 'regnet_block_config']


def regnet_block_config(dense: nn.Module, width: int) -> Dict[str, Any]:
    """ The settings of a timm RegNet Bottleneck at width k, read back from the block.

    The slim block keeps the dense block's number of groups (as a slim ResNeXt block keeps its cardinality),
    so its group width is the dense one divided by c.
    """
    if not isinstance(dense, Bottleneck):
        raise UnsupportedModelError(
            f'MoD for RegNet wraps its Bottleneck (RegNetX, RegNetY), not {type(dense).__name__}.')
    channels = dense.conv1.conv.in_channels
    bottle_ratio = dense.conv1.conv.out_channels / channels
    groups = dense.conv2.conv.groups
    return dict(
        bottle_ratio=bottle_ratio,
        group_size=max(1, int(round(width * bottle_ratio)) // groups),
        se_ratio=dense.se.fc1.out_channels / channels if isinstance(dense.se, SEModule) else 0.,
        linear_out=isinstance(dense.act3, nn.Identity),
        act_layer=type(dense.conv1.bn.act),
        norm_layer=norm_layer_of(dense.conv1.bn),
        dilation=(dense.conv2.conv.dilation[0],) * 2,
    )


def _regnet_slim_width_ok(dense: nn.Module, width: int) -> bool:
    """ The slim bottleneck width must hold the dense block's groups exactly."""
    regnet_block_config(dense, width)  # a clear error for blocks other than Bottleneck (RegNetV's PreBottleneck)
    bottleneck_width = int(round(width * dense.conv1.conv.out_channels / dense.conv1.conv.in_channels))
    groups = dense.conv2.conv.groups
    return bottleneck_width >= groups and bottleneck_width % groups == 0


def _init_regnet_block(block: nn.Module, zero_init_last: bool = True) -> None:
    """ timm's RegNet init (by default with a zeroed last norm), on one block."""
    block.apply(partial(_init_weights, zero_init_last=zero_init_last))


REGNET_FAMILY = register_family(ModFamily(
    name='RegNet',
    model_types=(RegNet,),
    stages=lambda model: [stage for stage in model.children() if isinstance(stage, RegStage)],
    slim_block=lambda dense, width, **dd: Bottleneck(width, width, **regnet_block_config(dense, width), **dd),
    slim_width_ok=_regnet_slim_width_ok,
    init_block=_init_regnet_block,
    preferred_c=16,
))


class MoDRegNet(RegNet):
    """ RegNet whose blocks at odd indices of every stage are MoD blocks over slim RegNet bottlenecks."""

    def __init__(
            self,
            zero_init_last: bool = True,
            **kwargs: Any,
    ) -> None:
        """
        Args:
            zero_init_last: As timm's `RegNet`; the slim blocks are initialised the same way.
            **kwargs: The MoD arguments (`timm_mod.layers.ModArgs`, c 16 by default) and timm's
                `RegNet` arguments (cfg, num_classes, drop_path_rate, ...).
        """
        mod_args = ModArgs.pop_from(kwargs, c=REGNET_FAMILY.preferred_c)
        super().__init__(zero_init_last=zero_init_last, **kwargs)
        apply_mod(self, REGNET_FAMILY, mod_args,
                  init_block=partial(_init_regnet_block, zero_init_last=zero_init_last))


def _create_mod_regnet(variant: str, pretrained: bool = False, **kwargs: Any) -> MoDRegNet:
    """ The architecture comes from timm's own config of the plain model."""
    return build_mod_model(MoDRegNet, variant, pretrained, cfg=model_cfgs[variant.removesuffix('_mod')], **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    """ timm's RegNet defaults."""
    return mod_cfg(interpolation='bicubic', first_conv='stem.conv', classifier='head.fc', **kwargs)


default_cfgs = generate_default_cfgs({
    'regnety_016_mod': _cfg(),
})


@register_model
def regnety_016_mod(pretrained: bool = False, **kwargs) -> MoDRegNet:
    """RegNetY-1.6GF-MoD (ours): timm's regnety_016 with MoD, c=12 (keeps its groups whole)."""
    return _create_mod_regnet('regnety_016_mod', pretrained, **dict(dict(c=12), **kwargs))
