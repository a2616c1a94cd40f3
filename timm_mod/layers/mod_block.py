""" The Mixture-of-Depths block: a selector scores the channels, the top k are processed by a slim copy of the
block MoD replaces, and the result is fused back (paper Section 3, Figure 2).

Paper: `CNN Mixture-of-Depths` - https://arxiv.org/abs/2409.17016 (Cakaj, Mehnert, Yang, ACCV 2024)

Every tensor shape depends only on the input shape, so the graph is static: no custom kernels, and
TorchScript, FX, `torch.compile(fullgraph=True)`, `torch.export` and ONNX all see one graph. The block knows
nothing about model families: `timm_mod.models` declares where MoD goes and builds the slim blocks.
"""
import json
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable, Dict, Iterator, Optional, Tuple, Union

import torch
import torch.nn as nn

from .fusion import FUSION_TARGETS, SCORE_SCALINGS, check_fusion, check_score_scaling, fuse, fusion_scale
from .routing import (
    ROUTING_MODES, check_routing, fixed_channel_indices, gather_channels, random_channel_indices, top_k_channels)
from .selector import ChannelSelector, check_selector_act, check_selector_gain, require_positive_int

__all__ = [
    'FUSION_TARGETS', 'ROUTING_MODES', 'SCORE_SCALINGS', 'SHAPELESS_ARGS', 'SHAPELESS_ARGS_KEY', 'ModArgs', 'MoDBlock',
    'check_mod_options', 'decode_shapeless_args', 'is_shapeless_args_record', 'mod_width', 'mod_blocks',
    'has_mod_blocks', 'selector_blocks', 'routing_hooks',
]


# meaningless without a selector (random routing)
SELECTOR_ARGS = ('r', 'selector_act', 'selector_decay', 'score_scaling', 'selector_gain', 'selector_norm')
# arguments that change what a trained model computes without changing a weight's shape: every MoD block keeps
# them with its weights (`MoDBlock.get_extra_state`), so that loading them into a model built otherwise is not silent
SHAPELESS_ARGS = ('fusion', 'routing', 'selector_act', 'score_scaling', 'selector_gain', 'selector_norm')

SHAPELESS_ARGS_KEY = '_extra_state'  # where torch's state_dict() keeps a module's get_extra_state()


def is_shapeless_args_record(key: str) -> bool:
    """ Whether a state-dict key holds a MoD block's record of its shapeless arguments."""
    return key == SHAPELESS_ARGS_KEY or key.endswith(f'.{SHAPELESS_ARGS_KEY}')


def decode_shapeless_args(record: torch.Tensor) -> Dict[str, Any]:
    """ The shapeless arguments a MoD block's weights record (`MoDBlock.get_extra_state`). The record's bytes may
    come back as floats: timm's avg_checkpoints.py (and any cast of a whole state dict) turns every tensor into
    float32, which keeps byte values exactly."""
    values = record.detach().flatten().to(torch.float64)
    unreadable = ValueError(
        "These weights' record of the MoD arguments they were trained with (the state dict's '*._extra_state' "
        'entries) is unreadable: it was averaged over checkpoints trained with different MoD arguments, or changed '
        'by a tool. Average only checkpoints of one run, or drop those entries to load the weights without the '
        'record.')
    if not bool(((values == values.round()) & (values >= 0) & (values <= 255)).all()):
        raise unreadable
    try:
        return json.loads(bytes(values.to(torch.uint8).tolist()).decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise unreadable from error


@dataclass(frozen=True)
class ModArgs:
    """ The arguments of a MoD block, checked once, here. The registered models, `to_mod` and `create_mod_model`
    take them as keyword arguments (`timm.create_model('resnet18_mod', c=16, routing='random')`).

    Attributes:
        c: Channel divisor: the block processes k = C // c of its C channels (the paper's c, 64 for ResNets).
        r: Reduction of the selector's hidden layer, C // r units (16 in the paper).
        fusion: Where the processed channels are added (`FUSION_TARGETS`): 'first' k channels (the paper's MoD),
            'last' k (MoD-lk), or 'original', back where they were gathered from (Table 10).
        routing: How the k channels are picked (`ROUTING_MODES`): 'learned' by the selector, 'random' (no selector,
            scores fixed at 1; the paper's "MoD rand."), or 'fixed' (one random set for every image, also in
            training; no selector).
        selector_act: The selector's hidden activation, a timm name without parameters ('relu', the paper's).
        selector_decay: False leaves the selectors out of weight decay: the model's `no_weight_decay()` names
            them, which timm's optimizer factory (and so train.py) honours. Parameter counts stay the paper's.
        score_scaling: How the scores enter the fused update (`SCORE_SCALINGS`): 'multiply' scales it (the
            paper's), 'straight_through' adds it unscaled and passes the scores the gradient of scaling it.
        selector_gain: The selector computes with gain x its stored weights (stored at timm's initialisation /
            gain), so an optimizer moves it gain^2 (SGD) or gain (Adam-family) times as fast; 1.0 is the paper's.
        selector_norm: True standardises the selector's pooled input per image (over channels, no parameters).
    """
    c: int
    r: int = 16
    fusion: str = 'first'
    routing: str = 'learned'
    selector_act: str = 'relu'
    selector_decay: bool = True
    score_scaling: str = 'multiply'
    selector_gain: float = 1.0
    selector_norm: bool = False

    def __post_init__(self) -> None:
        require_positive_int(self.c, 'channel divisor', 'c')
        require_positive_int(self.r, 'selector reduction', 'r')
        check_fusion(self.fusion)
        check_routing(self.routing)
        check_selector_act(self.selector_act)
        if not isinstance(self.selector_decay, bool):
            raise ValueError(f'MoD selector_decay must be True or False, got {self.selector_decay!r}.')
        check_score_scaling(self.score_scaling)
        check_selector_gain(self.selector_gain)
        if not isinstance(self.selector_norm, bool):
            raise ValueError(f'MoD selector_norm must be True or False, got {self.selector_norm!r}.')

    @classmethod
    def pop_from(cls, kwargs: Dict[str, Any], **defaults: Any) -> 'ModArgs':
        """ The MoD arguments taken out of a model's `kwargs` (the rest stays for timm), over `defaults`."""
        given = {field.name: kwargs.pop(field.name) for field in fields(cls) if field.name in kwargs}
        return cls(**dict(defaults, **given))

    def as_kwargs(self) -> Dict[str, Any]:
        """ What rebuilds these arguments, as `to_mod` and the registered models take them: c, fusion, routing and
        r always (r only with a selector), the other options where they differ from their default."""
        defaults = ModArgs(self.c)
        kwargs = {name: value for name, value in asdict(self).items()
                  if name in ('c', 'r', 'fusion', 'routing') or value != getattr(defaults, name)}
        if self.routing != 'learned':
            kwargs = {name: value for name, value in kwargs.items() if name not in SELECTOR_ARGS}
        return kwargs


def check_mod_options(c: int, r: int = 16, fusion: str = 'first', routing: str = 'learned') -> None:
    """ A clear ValueError naming a bad MoD argument and its choices, before any block is built."""
    ModArgs(c, r, fusion, routing)


def mod_width(channels: int, c: int) -> int:
    """ Number of channels a MoD block processes, k = floor(C / c), validated so a bad c fails early."""
    require_positive_int(c, 'channel divisor', 'c')
    k = channels // c
    if k < 1:
        raise ValueError(
            f'MoD with c={c} leaves k = floor({channels} / {c}) = 0 channels for a block with {channels} input '
            f'channels; choose c <= {channels}.')
    return k


class MoDBlock(nn.Module):
    """ Mixture-of-Depths block: a slim block processes the k top-scored channels, fused into k fixed ones.

    out[:, :k] = x[:, :k] + scores[:k] * slim_block(x[:, top_k])   (fusion 'first'; 'last' uses the last k)
    out[:, k:] = x[:, k:]                                          ('original' adds back at top_k instead)
    """

    def __init__(
            self,
            in_channels: int,
            make_block: Callable[[int], nn.Module],
            c: Union[int, ModArgs],
            drop_path: Optional[nn.Module] = None,
            device=None,
            dtype=None,
            **mod_args: Any,
    ) -> None:
        """
        Args:
            in_channels: Channels C of the feature map (MoD blocks keep C in and out).
            make_block: Builds the slim block for width k; it must map k channels to k channels.
            c: The block's `ModArgs`, or the channel divisor c with the other MoD arguments as `mod_args`.
            drop_path: Stochastic depth on the block's update; the slim block gets none of its own, so
                a drop removes the whole MoD contribution as it would remove a dense block's.
        """
        super().__init__()
        self.args = c if isinstance(c, ModArgs) else ModArgs(c, **mod_args)
        self.in_channels = in_channels
        self.c = self.args.c
        self.k = mod_width(in_channels, self.c)
        self.fusion = self.args.fusion
        self.score_scaling = self.args.score_scaling
        learned = self.args.routing == 'learned'
        self.selector = ChannelSelector(
            in_channels, self.args.r, self.args.selector_act, self.args.selector_gain, self.args.selector_norm,
            device=device, dtype=dtype) if learned else None
        # random routing in eval mode: a per-sample draw would have to hash the sample's values, and float sums
        # round differently with the batch size, the runtime and the compiler: a fixed draw is the same everywhere
        self.register_buffer(
            'eval_channels', None if learned else torch.randperm(in_channels, device=device)[:self.k])
        self.routing = self.args.routing
        self.random_in_training = self.routing == 'random'
        self.block = make_block(self.k)
        self.drop_path = drop_path if drop_path is not None else nn.Identity()

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """ Channel indices (B, k) to process, highest score first, and their scores (None without a selector)."""
        if self.selector is None:
            if self.training and self.random_in_training:
                return random_channel_indices(x, self.k), None
            return fixed_channel_indices(x, self.eval_channels), None
        scores, indices = top_k_channels(self.selector(x), self.k)
        return indices, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, scores = self.route(x)
        selected = gather_channels(x, indices)
        update = self.drop_path(self.block(selected))  # per-sample drop commutes with scaling
        return fuse(self.fusion, x, selected, update, indices, fusion_scale(scores, self.score_scaling, self.training))

    def shapeless_args(self) -> Dict[str, Any]:
        """ The block's `SHAPELESS_ARGS` (without the selector's when it has none)."""
        return {name: getattr(self.args, name) for name in SHAPELESS_ARGS
                if self.selector is not None or name not in SELECTOR_ARGS}

    def get_extra_state(self) -> torch.Tensor:
        """ The shapeless arguments as UTF-8 JSON in a uint8 tensor: timm's checkpoints and safetensors keep
        tensors only."""
        return torch.tensor(list(json.dumps(self.shapeless_args()).encode()), dtype=torch.uint8)

    def set_extra_state(self, state: torch.Tensor) -> None:
        """ Weights trained with other shapeless arguments still load (a fine-tune may change them on purpose),
        but not silently: timm's stock scripts build the model from `--model-kwargs` alone."""
        trained = decode_shapeless_args(state)
        built = self.shapeless_args()
        differ = {name: value for name, value in trained.items() if built.get(name, value) != value}
        if differ:
            given = ' '.join(f'{name}={value}' for name, value in differ.items())
            warnings.warn(
                f'These MoD weights were trained with {", ".join(f"{n}={v!r}" for n, v in differ.items())}, but the '
                f'model is built with {", ".join(f"{n}={built[n]!r}" for n in differ)} and computes something '
                f'else. Build it as trained (train.py, validate.py: --model-kwargs {given}).', UserWarning,
                stacklevel=2)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs) -> None:
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        recorded = prefix + SHAPELESS_ARGS_KEY
        if recorded not in state_dict and recorded in missing_keys:  # weights saved before timm-mod 0.4
            missing_keys.remove(recorded)

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, c={self.c}, k={self.k}, fusion={self.fusion}, routing={self.routing}'


def mod_blocks(model: nn.Module) -> Dict[str, MoDBlock]:
    """ The MoD blocks of `model` by name, in model order (none in a plain model)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, MoDBlock)}


def has_mod_blocks(model: nn.Module) -> bool:
    return any(isinstance(module, MoDBlock) for module in model.modules())


def selector_blocks(model: nn.Module) -> Dict[str, MoDBlock]:
    """ The MoD blocks of `model` that route with a selector, by name, in model order (none in a plain model or
    with random routing)."""
    return {name: block for name, block in mod_blocks(model).items() if block.selector is not None}


@contextmanager
def routing_hooks(blocks: Dict[str, MoDBlock], record: Callable[[str, torch.Tensor], None]) -> Iterator[None]:
    """ Inside the block, every forward pass calls `record(block name, channels routed (B, k))` for each of
    `blocks` (forward hooks on their selectors, removed on exit; the model itself is left as it is)."""
    def hook(name: str, block: MoDBlock):
        def on_scores(_module: nn.Module, _inputs, scores: torch.Tensor) -> None:
            record(name, top_k_channels(scores, block.k)[1])
        return on_scores

    handles = [block.selector.register_forward_hook(hook(name, block)) for name, block in blocks.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
