""" CNN Mixture-of-Depths (MoD) adapter

Paper: `CNN Mixture-of-Depths` - https://arxiv.org/abs/2409.17016 (Cakaj, Mehnert, Yang, ACCV 2024)

A MoD block scores the C channels of its input, gathers the top k = C // c of them, runs them through a
slim copy of the block it replaces (the same timm block class, built at width k), scales the result by
the scores and adds it to the first (or last) k channels; the other channels pass through untouched.
Every tensor shape depends only on the input shape, so the graph is static: no custom kernels, and
TorchScript, FX, `torch.compile(fullgraph=True)`, `torch.export` and ONNX all see one graph.

The adapter knows nothing about model families. A family says where MoD goes and how to build its slim
block (a `ModFamily`, declared in each family module); `apply_mod` builds every registered model and `to_mod`
converts a plain one. `mod_every_second_block` does the same for a stage of a model of one's own.
"""
import warnings
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
import torch.nn as nn

from timm.layers import register_notrace_function

__all__ = [
    'FUSION_TARGETS', 'ROUTING_MODES', 'SlimBlockFn',
    'ChannelSelector', 'MoDBlock', 'check_mod_options', 'mod_width', 'top_k_channels', 'gather_channels',
    'random_channel_indices', 'fixed_channel_indices', 'fuse_channels', 'fuse_at_indices', 'set_in_place_fusion',
    'block_in_channels', 'norm_layer_of', 'mod_every_second_block', 'mod_block_for',
    'ModFamily', 'MOD_FAMILIES', 'UnsupportedModelError', 'register_family', 'find_family', 'mod_positions',
    'default_c', 'apply_mod', 'to_mod',
]

FUSION_TARGETS = ('first', 'last', 'original')
ROUTING_MODES = ('learned', 'random')

SlimBlockFn = Callable[[nn.Module, int], nn.Module]
""" Builds the slim block for MoD: (the dense block being replaced, width k) -> block mapping k to k channels."""


def _require_positive_int(value: Any, meaning: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'MoD {meaning} {name} must be a positive integer, got {name}={value!r}.')


def check_mod_options(c: int, r: int = 16, fusion: str = 'first', routing: str = 'learned') -> None:
    """ A clear ValueError naming a bad MoD argument and its choices, before any block is built."""
    _require_positive_int(c, 'channel divisor', 'c')
    _require_positive_int(r, 'selector reduction', 'r')
    if fusion not in FUSION_TARGETS:
        raise ValueError(f'Unknown MoD fusion {fusion!r}; choose one of {FUSION_TARGETS}.')
    if routing not in ROUTING_MODES:
        raise ValueError(f'Unknown MoD routing {routing!r}; choose one of {ROUTING_MODES}.')


def mod_width(channels: int, c: int) -> int:
    """ Number of channels a MoD block processes, k = floor(C / c), validated so a bad c fails early."""
    _require_positive_int(c, 'channel divisor', 'c')
    k = channels // c
    if k < 1:
        raise ValueError(
            f'MoD with c={c} leaves k = floor({channels} / {c}) = 0 channels for a block with {channels} input '
            f'channels; choose c <= {channels}.')
    return k


class ChannelSelector(nn.Module):
    """ Scores every channel of a feature map in (0, 1).

    Squeeze-and-excitation shaped (pool -> FC -> ReLU -> FC -> sigmoid) but bias-free: the bias-free layers
    are what reproduces the paper's parameter counts to the published digit (SPEC.md section 1). It returns
    the scores instead of rescaling the input, since MoD uses them to pick and to weight channels.
    """

    def __init__(
            self,
            channels: int,
            r: int = 16,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            channels: Number of input channels C.
            r: Reduction of the hidden layer, C // r units (at least one).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        _require_positive_int(r, 'selector reduction', 'r')
        self.r = r
        hidden = max(1, channels // r)
        self.fc1 = nn.Linear(channels, hidden, bias=False, **dd)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=False, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sum / HW, not mean: mean's backward writes a full-size (B, C, H, W) tensor of grad / HW, while the
        # sum's is a stride-0 expansion of a (B, C) one that the gradient accumulation reads in place
        pooled = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
        return torch.sigmoid(self.fc2(self.act(self.fc1(pooled))))


def _is_onnx_export() -> bool:
    if torch.jit.is_scripting():
        return False
    return torch.onnx.is_in_onnx_export()


def _is_exporting() -> bool:
    """ Whether a graph is being captured for another runtime: torch.export or either ONNX exporter."""
    if torch.jit.is_scripting():
        return False
    return torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export() or torch.jit.is_tracing()


@register_notrace_function
def top_k_channels(scores: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """ (values, indices) of the k highest scores per sample, highest first, equal scores by lower channel index.

    `topk` leaves the order of equal scores to the backend: the CPU, CUDA, Inductor and onnxruntime each pick
    differently. Equal scores are common: a selector whose one-unit hidden layer has its ReLU off scores every
    channel sigmoid(0) = 0.5, and bf16 rounds close scores together. So `topk` runs on a key that orders by
    score and then by channel, the same in every runtime (a stable sort would too, but ONNX cannot export one).
    Scores are selector outputs in [0, 1] (or integer noise): in float32 `score * 2**40` is an exact integer
    for every score above 1e-5, so the key keeps their order exactly; only smaller scores tie.
    """
    if _is_onnx_export():  # ONNX's TopK breaks ties by the lower index itself, and OpenVINO runs int64 as int32
        values, indices = scores.topk(k, dim=1)
        return values, indices
    channels = scores.shape[1]
    rank = (scores.float() * 2.0 ** 40).long() if scores.is_floating_point() else scores
    key = torch.arange(channels - 1, -1, -1, device=scores.device).add(rank, alpha=channels)
    indices = key.topk(k, dim=1).indices
    return scores.gather(1, indices), indices


@register_notrace_function
def gather_channels(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """ Per-sample channel gather: (B, C, H, W) at indices (B, k) -> (B, k, H, W), in index order.

    On a contiguous (NCHW) map each selected channel is one contiguous plane, so a single `index_select`
    over the (B * C) planes copies whole planes (several times faster than an element-wise `gather`, whose
    backward is also a dense scatter); exported graphs keep that one gather for every batch size. A
    channels_last map has no planes but contiguous pixels: gathering along the last dim of its (B, H, W, C)
    view is fastest there and keeps the result channels_last (`index_select` along dim 1 of it is ~100x slower).
    """
    batch, channels, k = x.shape[0], x.shape[1], indices.shape[1]
    if x.is_contiguous():
        if not _is_exporting() and batch == 1:  # an exported graph must not bake in the batch size
            return x.index_select(1, indices.view(-1))
        planes = indices + torch.arange(batch, device=x.device)[:, None] * channels
        return x.flatten(0, 1).index_select(0, planes.flatten()).view(batch, k, x.shape[2], x.shape[3])
    index = indices[:, None, None, :].expand(-1, x.shape[2], x.shape[3], -1)
    return torch.gather(x.permute(0, 2, 3, 1), 3, index).permute(0, 3, 1, 2)


@register_notrace_function
def random_channel_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """ k distinct channels per sample from torch's RNG, uniform over all subsets (the top-k of i.i.d. noise);
    reproducible under `torch.manual_seed`."""
    return top_k_channels(torch.rand(x.shape[0], x.shape[1], device=x.device), k)[1]


@register_notrace_function
def fixed_channel_indices(x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """ The same k channels (k,) for every sample of `x`, as (B, k) indices."""
    return channels.expand(x.shape[0], channels.shape[0])


def _add_scaled(target: torch.Tensor, update: torch.Tensor, scores: Optional[torch.Tensor]) -> None:
    """ target += scores * update, in place (unscaled without scores: random routing)."""
    if scores is None:
        target.add_(update)
    else:
        target.addcmul_(update, scores)


class _FuseChannels(torch.autograd.Function):
    """ out = x, with `scores * update` added to channels [start, start + k): a copy of `x` and one in-place
    `addcmul` on the k channels, in either memory format.

    Autograd's own version (split, multiply-add, concat) copies the full map twice forward and its backward
    concatenates the gradient back into a new full-size tensor. Here the gradient of `x` is the incoming
    gradient itself, and only the k fused channels are touched.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, update: torch.Tensor, scores: Optional[torch.Tensor], start: int):
        out = x.clone()
        _add_scaled(out.narrow(1, start, update.shape[1]), update, scores)
        ctx.start = start
        ctx.save_for_backward(update, scores)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        update, scores = ctx.saved_tensors
        grad_target = grad_out.narrow(1, ctx.start, update.shape[1])
        grad_x = grad_out if ctx.needs_input_grad[0] else None
        grad_update = grad_scores = None
        if ctx.needs_input_grad[1]:
            grad_update = grad_target if scores is None else grad_target * scores
        if scores is not None and ctx.needs_input_grad[2]:
            grad_scores = (grad_target * update).sum((2, 3), keepdim=True)
        return grad_x, grad_update, grad_scores, None


def _fuse_by_concat(x: torch.Tensor, update: torch.Tensor, scores: Optional[torch.Tensor], start: int) -> torch.Tensor:
    """ The fusion as slices and one concat, what TorchScript can script (it cannot call an autograd.Function)."""
    k = update.shape[1]
    target = x.narrow(1, start, k)
    fused = target + update if scores is None else torch.addcmul(target, update, scores)
    pieces: List[torch.Tensor] = []
    if start > 0:
        pieces.append(x.narrow(1, 0, start))
    pieces.append(fused)
    if start + k < x.shape[1]:
        pieces.append(x.narrow(1, start + k, x.shape[1] - start - k))
    return torch.cat(pieces, dim=1)


def _fixed_size(x: torch.Tensor, dim: int) -> int:
    """ A dimension the model fixes (a channel count) as a plain int, also in a trace, where sizes are traced values
    and a constant built from them would be computed in the exported graph (Shape, EyeLike, Pad, ...) at run time."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)  # a constant is what is wanted here
        return int(x.shape[dim])


def _fuse_by_conv(x: torch.Tensor, update: torch.Tensor, scores: Optional[torch.Tensor], into_last: bool
                  ) -> torch.Tensor:
    """ The fusion for exported graphs: `x` plus a 1x1 convolution that places the k scaled planes on the first
    (or last) k channels with a constant one-hot weight (exact for finite values: each output sums one plane
    and zeros).

    onnxruntime and OpenVINO fuse the add into the convolution and run it in their blocked or channels-last
    layout, where a ScatterND or a Concat needs the map in plain NCHW, one more reorder of the whole map per block.
    Exports of resnet50_mod and mobilenetv2_mod timed side by side with their identity bounds (batch 1 and 16,
    1 thread, one run each, about 2 points of noise) ran 1-9 points of the bound's speed faster than with a
    ScatterND, and no slower than with a Concat. Its k x C multiply-adds per pixel are 0.9 % of resnet50_mod's.
    """
    channels, k = _fixed_size(x, 1), _fixed_size(update, 1)
    start = channels - k if into_last else 0
    scaled = update if scores is None else update * scores
    # padded last, from a (k, k, 1, 1) eye: exporters fold constants only from small inputs
    eye = torch.eye(k, dtype=x.dtype, device=x.device).view(k, k, 1, 1)
    placement = nn.functional.pad(eye, (0, 0, 0, 0, 0, 0, start, channels - start - k))
    return x + nn.functional.conv2d(scaled, placement)


def _fuse_functional(x: torch.Tensor, update: torch.Tensor, scores: Optional[torch.Tensor], start: int) -> torch.Tensor:
    """ The fusion as one out-of-place `index_add`, for compiled inference: Inductor's freezing
    (torch._inductor.config.freezing) fails on an in-place add, and Inductor itself makes this an add on the k
    channels in place wherever `x` is not used afterwards (inside the compiled graph, so hooks are safe)."""
    k = update.shape[1]
    scaled = update if scores is None else update * scores
    return x.index_add(1, torch.arange(start, start + k, device=x.device), scaled)


def _fuse_in_place(x: torch.Tensor, update: torch.Tensor, scores: Optional[torch.Tensor], start: int) -> torch.Tensor:
    """ The fusion added into `x` itself: opt-in (`set_in_place_fusion`), for inference where nothing else holds
    the block's input (no forward hooks, no feature extraction)."""
    _add_scaled(x.narrow(1, start, update.shape[1]), update, scores)
    return x


@register_notrace_function
def fuse_channels(
        x: torch.Tensor,
        update: torch.Tensor,
        scores: Optional[torch.Tensor] = None,
        into_last: bool = False,
        in_place: bool = False,
) -> torch.Tensor:
    """ Add `scores * update` (update (B, k, H, W), scores (B, k)) to the first (or last) k channels of `x`.

    The other channels pass through and `x` is left as it was: it is the previous block's output, which forward
    hooks, Grad-CAM and feature extractors still hold. Each runtime gets the form it runs best, chosen here:
    TorchScript a concat of slices (`_fuse_by_concat`), exporters an add of a 1x1 convolution with a one-hot
    weight (`_fuse_by_conv`; an in-place add on a channel slice exports as a ScatterND between three full-map
    transposes, and the TorchScript-based ONNX exporter loses it altogether), compiled inference an out-of-place
    `index_add` that Inductor makes in place, eager PyTorch a copy of `x` and an add on its k channels
    (`_FuseChannels`, whose backward passes the gradient of `x` through without a copy). `in_place` adds into
    `x` itself in eager no-grad inference (see `set_in_place_fusion` for what it saves).
    """
    k = update.shape[1]
    start = x.shape[1] - k if into_last else 0
    if update.dtype != x.dtype:
        update = update.to(x.dtype)
    if scores is not None:
        scores = scores.view(scores.shape[0], k, 1, 1)
        if scores.dtype != x.dtype:
            scores = scores.to(x.dtype)
    if torch.jit.is_scripting():  # TorchScript cannot call an autograd.Function
        return _fuse_by_concat(x, update, scores, start)
    if _is_exporting():
        return _fuse_by_conv(x, update, scores, into_last)
    if not torch.is_grad_enabled() and not x.requires_grad:
        if torch.compiler.is_compiling():
            return _fuse_functional(x, update, scores, start)
        if in_place:
            return _fuse_in_place(x, update, scores, start)
    return _FuseChannels.apply(x, update, scores, start)


@register_notrace_function
def fuse_at_indices(
        x: torch.Tensor,
        selected: torch.Tensor,
        update: torch.Tensor,
        indices: torch.Tensor,
        scores: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ Table 10's 'original' fusion: each processed channel is added back to the channel it was gathered from.

    out[b, indices[b, j]] = selected[b, j] + scores[b, j] * update[b, j], the other channels pass through, where
    `selected` is x gathered at `indices`. The k indices of a sample are distinct, so writing the fused planes with
    one `index_put` is the add, and it leaves `x` as it was. That one form serves every path: autograd (the
    gradient reaches `x` both where it passes through and through `selected`), `torch.compile`, TorchScript, either
    memory format, and exporters, where it is one ScatterND indexed by (sample, channel).
    """
    if update.dtype != x.dtype:
        update = update.to(x.dtype)
    fused = selected + update if scores is None else torch.addcmul(
        selected, update, scores.view(scores.shape[0], update.shape[1], 1, 1).to(x.dtype))
    samples = torch.arange(x.shape[0], device=x.device)[:, None].expand_as(indices)
    return x.index_put((samples, indices), fused)


class MoDBlock(nn.Module):
    """ Mixture-of-Depths block: a slim block processes the k top-scored channels, fused into k fixed ones.

    out[:, :k] = x[:, :k] + scores[:k] * slim_block(x[:, top_k])   (fusion 'first'; 'last' uses the last k)
    out[:, k:] = x[:, k:]                                          ('original' adds back at top_k instead)
    """

    def __init__(
            self,
            in_channels: int,
            make_block: Callable[[int], nn.Module],
            c: int,
            r: int = 16,
            fusion: str = 'first',
            routing: str = 'learned',
            drop_path: Optional[nn.Module] = None,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            in_channels: Channels C of the feature map (MoD blocks keep C in and out).
            make_block: Builds the slim block for width k; it must map k channels to k channels.
            c: Channel divisor, the block processes k = C // c channels.
            r: Reduction of the channel selector's hidden layer.
            fusion: 'first' adds the processed channels to the first k channels (the paper's MoD),
                'last' to the last k (the paper's MoD-lk variant), 'original' back to the channels they were
                gathered from (Table 10's comparison, which the paper finds worse at every c).
            routing: 'learned' scores channels with a selector; 'random' draws k channels uniformly per
                sample with scores fixed at 1 and has no selector (the paper's "MoD50 rand."). In eval
                mode it processes one fixed random set of k channels (`eval_channels`, drawn at init
                and kept in the state dict), so a sample's output never depends on its batch, the
                runtime or `torch.compile`.
            drop_path: Stochastic depth on the block's update; the slim block gets none of its own, so
                a drop removes the whole MoD contribution as it would remove a dense block's.
        """
        super().__init__()
        check_mod_options(c, r, fusion, routing)
        self.in_channels = in_channels
        self.c = c
        self.k = mod_width(in_channels, c)
        self.fusion = fusion
        self.selector = ChannelSelector(in_channels, r, device=device, dtype=dtype) if routing == 'learned' else None
        # a per-sample draw in eval would have to hash the sample's values, and float sums round differently
        # with the batch size, the runtime and the compiler: a fixed draw is the same everywhere
        self.register_buffer(
            'eval_channels', None if self.selector is not None else torch.randperm(in_channels, device=device)[:self.k])
        self.block = make_block(self.k)
        self.drop_path = drop_path if drop_path is not None else nn.Identity()
        self.in_place_fusion = False  # see set_in_place_fusion

    @property
    def routing(self) -> str:
        return 'random' if self.selector is None else 'learned'

    def route(self, x: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """ Channel indices (B, k) to process, highest score first, and their scores (None when random)."""
        if self.selector is None:
            if self.training:
                return random_channel_indices(x, self.k), None
            return fixed_channel_indices(x, self.eval_channels), None
        scores, indices = top_k_channels(self.selector(x), self.k)
        return indices, scores

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, scores = self.route(x)
        selected = gather_channels(x, indices)
        update = self.drop_path(self.block(selected))  # per-sample drop commutes with scaling
        if self.fusion == 'original':
            return fuse_at_indices(x, selected, update, indices, scores)
        return fuse_channels(x, update, scores, self.fusion == 'last', self.in_place_fusion)

    def extra_repr(self) -> str:
        return f'in_channels={self.in_channels}, c={self.c}, k={self.k}, fusion={self.fusion}, routing={self.routing}'


def set_in_place_fusion(model: nn.Module, enabled: bool = True) -> nn.Module:
    """ Let every MoD block of `model` add into its input in eager no-grad inference instead of into a copy.

    Off by default: the input is the previous block's output, and forward hooks, Grad-CAM and timm's feature
    extractors hold it, so adding into it changes what they hold (by up to 0.5 in resnet18_mod's layer1.0, 1.0
    in mobilenetv2_mod's blocks.1.0). The copy costs little. Eager CPU inference at 224 px, 1 thread, median of
    7 alternating rounds in one process (2-vCPU Xeon, torch 2.14.1): resnet50_mod 61.6 ms in place vs 63.2 ms
    with the copy at batch 1 (+2.5 %), 1090 vs 1126 ms at batch 16 (+3.3 %); mobilenetv2_mod 14.4 vs 13.9 ms
    and 302 vs 303 ms (within noise). Turn it on only where nothing else holds block outputs; gradients,
    compiled models, TorchScript, exports and fusion='original' are unaffected (they never fuse in place).
    """
    for block in model.modules():
        if isinstance(block, MoDBlock):
            block.in_place_fusion = enabled
    return model


def block_in_channels(block: nn.Module) -> int:
    """ Input width of a conv block: the in_channels of its first convolution (timm registers it first)."""
    first_conv = next((m for m in block.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        raise TypeError(f'{type(block).__name__} has no convolution, so MoD cannot tell its width.')
    return first_conv.in_channels


def norm_layer_of(norm: nn.Module) -> Callable[..., nn.Module]:
    """ A factory for norm layers like `norm` (its class and eps), so a slim block normalises as the dense one."""
    eps = getattr(norm, 'eps', None)
    return type(norm) if eps is None else partial(type(norm), eps=eps)


def mod_every_second_block(
        stage: nn.Module,
        make_slim_block: SlimBlockFn,
        c: int,
        r: int = 16,
        fusion: str = 'first',
        routing: str = 'learned',
        device=None,
        dtype=None,
) -> None:
    """ Replace the blocks at the odd indices of a stage (the paper's placement) with MoD blocks, in place.

    The first block of a stage changes resolution and width, so it stays dense; after it dense and MoD
    blocks alternate. Each MoD block takes over the stochastic-depth module of the block it replaces.

    Args:
        stage: A module whose children are the stage's blocks in order (an `nn.Sequential` or a container
            like RegNet's stage); every block at an odd index must keep its width from input to output.
        make_slim_block: Builds the slim block from the dense block it replaces and the width k.
        c, r, fusion, routing: See `MoDBlock`.
    """
    for name, dense in list(stage.named_children())[1::2]:
        setattr(stage, name, mod_block_for(dense, make_slim_block, c, r, fusion, routing, device=device, dtype=dtype))


def mod_block_for(
        dense: nn.Module,
        make_slim_block: SlimBlockFn,
        c: int,
        r: int = 16,
        fusion: str = 'first',
        routing: str = 'learned',
        device=None,
        dtype=None,
) -> MoDBlock:
    """ The MoD block that replaces `dense`: its width, a slim copy of it, and its stochastic depth."""
    return MoDBlock(
        block_in_channels(dense),
        lambda width: make_slim_block(dense, width),
        c=c,
        r=r,
        fusion=fusion,
        routing=routing,
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
    return [(stage, name, block)
            for stage in family.stages(model) for name, block in list(stage.named_children())[1::2]]


class UnsupportedModelError(TypeError, ValueError):
    """ A model, or one of its blocks, that MoD cannot convert (raised with the reason). A TypeError for
    `to_mod`'s callers, a ValueError so that commands report it as a one-line error."""



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
        c: int,
        r: int = 16,
        fusion: str = 'first',
        routing: str = 'learned',
        init_block: Optional[Callable[[nn.Module], None]] = None,
) -> nn.Module:
    """ Put MoD blocks into a model of `family` in place. Every MoD block is built before the first one goes in,
    so a bad c or a block the family cannot rebuild raises and leaves the model as it was.

    `init_block` replaces the family's slim-block init, for a model built with other init options (timm's
    `zero_init_last=False`).
    """
    check_mod_options(c, r, fusion, routing)
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
            block = mod_block_for(dense, partial(family.slim_block, **dd), c, r, fusion, routing, **dd)
            init_block(block.block)
            return block.train(dense.training)
        built.append((stage, name, _family_call(family, path, dense, build)))
    for stage, name, block in built:
        setattr(stage, name, block)
    return model


def to_mod(
        model: nn.Module,
        c: Optional[int] = None,
        r: int = 16,
        fusion: str = 'first',
        routing: str = 'learned',
) -> nn.Module:
    """ Turn a timm CNN into its Mixture-of-Depths version, in place, and return it.

    Every block at an odd index of each stage becomes a MoD block over a slim block of the same class and
    configuration at width k = C // c (freshly initialised, as the family initialises it); every other
    module, weights included, stays as it was, so a trained model keeps its stem, head and kept blocks.
    Like `timm.layers.convert_sync_batchnorm` it changes `model` itself: deep-copy first to keep the original.

    Args:
        model: A model from `timm.create_model` of a supported family (`MOD_FAMILIES`).
        c: Channel divisor; None takes the family default (`default_c`).
        r, fusion, routing: See `MoDBlock`.
    """
    if any(isinstance(m, MoDBlock) for m in model.modules()):
        raise ValueError(
            f'This {type(model).__name__} already has MoD blocks; to_mod converts a plain model once. '
            f'To change c or r, convert the plain model again.')
    family = find_family(model)
    if not mod_positions(model, family):
        raise ValueError(
            f'This {type(model).__name__} has no stage with a second block, so there is nowhere to put MoD.')
    return apply_mod(model, family, default_c(model) if c is None else c, r, fusion, routing)
