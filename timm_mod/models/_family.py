""" Where MoD goes in a timm model and how it gets there: family declarations, the conversion machinery and `to_mod`.

A family says where MoD goes and how to build its slim block (a `ModFamily`, declared in each family module);
`apply_mod` builds every registered model and `to_mod` converts a plain one. `mod_every_second_block` does the
same for a stage of a model of one's own.
"""
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Type, Union

import torch.nn as nn

from ..layers import ModArgs, MoDBlock, has_mod_blocks, mod_width

__all__ = [
    'SlimBlockFn', 'UnsupportedModelError', 'block_in_channels', 'norm_layer_of', 'every_second_block',
    'mod_every_second_block', 'mod_block_for', 'ModFamily', 'MOD_FAMILIES', 'register_family', 'find_family',
    'mod_positions', 'default_c', 'apply_mod', 'to_mod', 'SelectorsWithoutDecay',
]

SlimBlockFn = Callable[[nn.Module, int], nn.Module]
""" Builds the slim block for MoD: (the dense block being replaced, width k) -> block mapping k to k channels."""


class UnsupportedModelError(TypeError, ValueError):
    """ A model, or one of its blocks, that MoD cannot convert (raised with the reason). A TypeError for
    `to_mod`'s callers, a ValueError so that commands report it as a one-line error."""


def block_in_channels(block: nn.Module) -> int:
    """ Input width of a conv block: the in_channels of its first convolution (timm registers it first)."""
    first_conv = next((m for m in block.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise UnsupportedModelError(f'{type(block).__name__} has no convolution, so MoD cannot tell its width.')
    return first_conv.in_channels


def norm_layer_of(norm: nn.Module) -> Callable[..., nn.Module]:
    """ A factory for norm layers like `norm` (its class and eps), so a slim block normalises as the dense one."""
    eps = getattr(norm, 'eps', None)
    return type(norm) if eps is None else partial(type(norm), eps=eps)


def every_second_block(stage: nn.Module) -> List[Tuple[str, nn.Module]]:
    """ (child name, block) at the odd indices of a stage: where the paper puts MoD blocks (Section 3.4). The first
    block of a stage changes resolution and width, so it stays dense; after it dense and MoD blocks alternate."""
    return list(stage.named_children())[1::2]


def mod_every_second_block(
        stage: nn.Module,
        make_slim_block: SlimBlockFn,
        c: Union[int, ModArgs],
        device=None,
        dtype=None,
        **mod_args: Any,
) -> None:
    """ Replace the blocks at the odd indices of a stage (the paper's placement) with MoD blocks, in place.

    Each MoD block takes over the stochastic-depth module of the block it replaces.

    Args:
        stage: A module whose children are the stage's blocks in order (an `nn.Sequential` or a container
            like RegNet's stage); every block at an odd index must keep its width from input to output.
        make_slim_block: Builds the slim block from the dense block it replaces and the width k.
        c: The `ModArgs`, or the channel divisor c with the other MoD arguments as `mod_args` (r, fusion, ...).
    """
    args = c if isinstance(c, ModArgs) else ModArgs(c, **mod_args)
    for name, dense in every_second_block(stage):
        setattr(stage, name, mod_block_for(dense, make_slim_block, args, device=device, dtype=dtype))


def mod_block_for(
        dense: nn.Module,
        make_slim_block: SlimBlockFn,
        args: ModArgs,
        device=None,
        dtype=None,
) -> MoDBlock:
    """ The MoD block that replaces `dense`: its width, a slim copy of it, and its stochastic depth."""
    return MoDBlock(
        block_in_channels(dense),
        lambda width: make_slim_block(dense, width),
        args,
        drop_path=getattr(dense, 'drop_path', None),
        device=device,
        dtype=dtype,
    )


@dataclass(frozen=True)
class ModFamily:
    """ How MoD fits one family of timm models; the family modules declare one each, `to_mod` uses them.

    Attributes:
        name: The family's name in messages and docs.
        model_types: timm model classes of the family.
        stages: The stages of a model, each a module whose children are its blocks in order.
        slim_block: The dense block's class rebuilt from its own settings at width k (k in, k out), called as
            slim_block(dense, k, device=..., dtype=...).
        slim_width_ok: Whether that slim block can be k wide (ResNeXt's groups, for example, need k large enough).
        init_block: The family's weight init, applied to each new slim block.
        preferred_c: Where the default c starts (the paper's c where it has one); see `default_c`.
    """
    name: str
    model_types: Tuple[Type[nn.Module], ...]
    stages: Callable[[nn.Module], List[nn.Module]]
    slim_block: Callable[..., nn.Module]
    slim_width_ok: Callable[[nn.Module, int], bool]
    init_block: Callable[[nn.Module], None]
    preferred_c: int

MOD_FAMILIES: List[ModFamily] = []

MIN_DEFAULT_WIDTH = 4  # the default c leaves every MoD block at least this many channels


def register_family(family: ModFamily) -> ModFamily:
    """ Make a family known to `to_mod` (each family module registers its own on import)."""
    MOD_FAMILIES.append(family)
    return family


def find_family(model: nn.Module) -> ModFamily:
    """ The family of a timm model, or a clear error naming its class and the supported ones."""
    for family in MOD_FAMILIES:
        if isinstance(model, family.model_types):
            return family
    supported = '; '.join(f'{f.name} ({", ".join(t.__name__ for t in f.model_types)})' for f in MOD_FAMILIES)
    raise UnsupportedModelError(
        f'to_mod does not support {type(model).__name__} models; supported timm model classes: {supported}. '
        f'Build a model of one of these with timm.create_model (not features_only), or declare a ModFamily.')


def mod_positions(model: nn.Module, family: ModFamily) -> List[Tuple[nn.Module, str, nn.Module]]:
    """ (stage, child name, dense block) for every block MoD replaces: odd indices of each stage."""
    return [(stage, name, block) for stage in family.stages(model) for name, block in every_second_block(stage)]


def _family_call(family: ModFamily, name: str, dense: nn.Module, call: Callable[[], Any]) -> Any:
    """ Run family code on a timm block; a block built from other layers than the family declares (MixNet's
    mixed convolutions, CondConv, group norms, ...) becomes a clear UnsupportedModelError naming it."""
    try:
        return call()
    except UnsupportedModelError as error:
        raise UnsupportedModelError(f'{name}: {error}') from error
    except Exception as error:
        raise UnsupportedModelError(
            f'MoD for {family.name} cannot rebuild the {type(dense).__name__} at {name} at a smaller width '
            f'({type(error).__name__}: {error}); this model uses layers the {family.name} declaration does not '
            f'cover.') from error


def _slim_width_ok(family: ModFamily, path: str, dense: nn.Module, width: int) -> bool:
    return width >= 1 and _family_call(family, path, dense, lambda: family.slim_width_ok(dense, width))


def _mod_sites(model: nn.Module, family: ModFamily) -> List[Tuple[nn.Module, str, nn.Module, str, int]]:
    """ `mod_positions` with each dense block's path in the model and its width C."""
    paths = {module: path for path, module in model.named_modules()}
    return [(stage, name, dense, paths[dense], block_in_channels(dense))
            for stage, name, dense in mod_positions(model, family)]


def _c_fits(family: ModFamily, sites: List[Tuple[nn.Module, str, nn.Module, str, int]], c: int,
            min_width: int = 1) -> bool:
    """ Whether c leaves every MoD block at least `min_width` channels (or all of a narrower block's) and a slim
    block the family can build."""
    return all(channels // c >= min(min_width, channels) and _slim_width_ok(family, path, dense, channels // c)
               for _, _, dense, path, channels in sites)


def default_c(model: nn.Module) -> int:
    """ The family's preferred c, lowered to the largest c that leaves every MoD block k >= 4 channels
    (`MIN_DEFAULT_WIDTH`, or all of a narrower block's) and a slim block the family can build at that k."""
    family = find_family(model)
    sites = _mod_sites(model, family)
    return next((c for c in range(family.preferred_c, 1, -1) if _c_fits(family, sites, c, MIN_DEFAULT_WIDTH)), 1)


def apply_mod(
        model: nn.Module,
        family: ModFamily,
        args: ModArgs,
        init_block: Optional[Callable[[nn.Module], None]] = None,
) -> nn.Module:
    """ Put MoD blocks into a model of `family` in place. Every MoD block is built before the first one goes in,
    so a bad c or a block the family cannot rebuild raises and leaves the model as it was.

    `init_block` replaces the family's slim-block init, for a model built with other init options (timm's
    `zero_init_last=False`).
    """
    c = args.c
    init_block = init_block or family.init_block
    sites = _mod_sites(model, family)
    for _, _, dense, path, channels in sites:
        k = mod_width(channels, c)
        if not _slim_width_ok(family, path, dense, k):
            valid = next((d for d in range(c, 0, -1) if _c_fits(family, sites, d)), None)
            raise ValueError(
                f'c={c} gives the MoD block at {path} k={k} of {channels} channels, which '
                f'a slim {type(dense).__name__} of the same configuration cannot have; '
                + (f'the largest c that works for this model is {valid}.' if valid else
                   'no c works for this model (its stage widths do not fit the block).'))
    built = []
    for stage, name, dense, path, _ in sites:
        weight = next(dense.parameters())
        dd = {'device': weight.device, 'dtype': weight.dtype}

        def build(dense: nn.Module = dense, dd: Dict[str, Any] = dd) -> MoDBlock:
            block = mod_block_for(dense, partial(family.slim_block, **dd), args, **dd)
            init_block(block.block)
            return block.train(dense.training)
        built.append((stage, name, _family_call(family, path, dense, build)))
    for stage, name, block in built:
        setattr(stage, name, block)
    if not args.selector_decay and args.routing == 'learned':
        model.no_weight_decay = SelectorsWithoutDecay(model)
    return model


class SelectorsWithoutDecay:
    """ A model's `no_weight_decay()` for `selector_decay=False`: what the model's class leaves out of weight decay
    (none in the supported families' timm classes), and every selector's parameters. timm's optimizer factory reads
    it, so train.py and compare honour the option. A plain object, so that models pickle and deep-copy."""

    def __init__(self, model: nn.Module) -> None:
        inherited = type(model).no_weight_decay(model) if hasattr(type(model), 'no_weight_decay') else ()
        self.names = frozenset(inherited) | {f'{path}.selector.*' for path, block in model.named_modules()
                                             if isinstance(block, MoDBlock) and block.selector is not None}

    def __call__(self) -> Set[str]:
        return set(self.names)


def to_mod(
        model: nn.Module,
        c: Optional[int] = None,
        **mod_args: Any,
) -> nn.Module:
    """ Turn a timm CNN into its Mixture-of-Depths version, in place, and return it.

    Every block at an odd index of each stage becomes a MoD block over a slim block of the same class and
    configuration at width k = C // c (freshly initialised, as the family initialises it); every other
    module, weights included, stays as it was, so a trained model keeps its stem, head and kept blocks.
    Like `timm.layers.convert_sync_batchnorm` it changes `model` itself: deep-copy first to keep the original.

    Args:
        model: A model from `timm.create_model` of a supported family (`MOD_FAMILIES`).
        c: Channel divisor; None takes the family default (`default_c`).
        **mod_args: The other MoD arguments (r, fusion, routing, ...): see `ModArgs`.
    """
    args = ModArgs(1 if c is None else c, **mod_args)  # checked before the model is looked at
    if has_mod_blocks(model):
        raise ValueError(
            f'This {type(model).__name__} already has MoD blocks; to_mod converts a plain model once. '
            f'To change c or r, convert the plain model again.')
    family = find_family(model)
    if not mod_positions(model, family):
        raise ValueError(
            f'This {type(model).__name__} has no stage with a second block, so there is nowhere to put MoD.')
    return apply_mod(model, family, args if c is not None else replace(args, c=default_c(model)))
