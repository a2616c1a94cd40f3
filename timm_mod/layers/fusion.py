""" How a MoD block puts its processed channels back (paper Section 3.3, Table 10).

Two fusions, one form each per real constraint:
- `fuse_channels` adds them to the first (or last) k channels, the paper's MoD. In PyTorch it is one
  out-of-place `index_add`, which eager autograd, `torch.compile` (Inductor's freezing too) and TorchScript all
  run; exporters get an add of a 1x1 convolution with a constant one-hot weight (`_fuse_by_conv`), the form
  onnxruntime and OpenVINO run in their own layout.
- `fuse_at_indices` adds them back where they were gathered from (Table 10's comparison), one `index_put`
  that every path, exporters included, runs.

Forms measured against these and dropped in 0.3 (A/B in one process, round-robin medians of 9 rounds, 2-vCPU Xeon,
torch 2.14.1): a custom autograd Function (a copy plus an in-place add on k channels) ran within
0.7 % of `index_add` in inference and training (resnet50_mod b1/b16 at 224 px, 1 thread; mobilenetv2_mod b16;
training resnet18_mod b128 at 32 px and resnet50_mod b16 at 224 px, 2 threads); an opt-in add into the block's
input saved 2.3-3.9 % of resnet50_mod's inference and nothing on mobilenetv2_mod, at the price of changing a
tensor that hooks and feature extractors hold; TorchScript scripts `index_add`, so its concat of slices went too.
"""
import warnings
from typing import Optional

import torch
import torch.nn as nn
from timm.layers import register_notrace_function

from .routing import is_exporting

__all__ = [
    'FUSION_TARGETS', 'SCORE_SCALINGS', 'check_fusion', 'check_score_scaling', 'fusion_scale', 'fuse', 'fuse_channels',
    'fuse_at_indices']

FUSION_TARGETS = ('first', 'last', 'original')
""" Where a MoD block adds its processed channels: the first k channels (the paper's MoD), the last k (MoD-lk), or
the channels they were gathered from (Table 10's comparison, which the paper finds worse at every c)."""


SCORE_SCALINGS = ('multiply', 'straight_through')
""" How the selector's scores enter the fused update: 'multiply' scales it by them (the paper's MoD); 'straight_through'
adds it unscaled and gives the scores the gradient they would get if they scaled it. The paper's scale is one a slim
block's last norm layer can absorb (a block that wants its update twice as large when every score is 0.5 just learns
it), so with 'straight_through' the scores can change only which channels are routed, and are pushed by how much each
routed channel's update helps."""


def check_fusion(fusion: str) -> None:
    if fusion not in FUSION_TARGETS:
        raise ValueError(f'Unknown MoD fusion {fusion!r}; choose one of {FUSION_TARGETS}.')


def check_score_scaling(score_scaling: str) -> None:
    if score_scaling not in SCORE_SCALINGS:
        raise ValueError(f'Unknown MoD score_scaling {score_scaling!r}; choose one of {SCORE_SCALINGS}.')


def fusion_scale(scores: Optional[torch.Tensor], score_scaling: str, training: bool) -> Optional[torch.Tensor]:
    """ What multiplies the update for `score_scaling` (`SCORE_SCALINGS`); None leaves it unscaled. Straight-through
    is `scores - scores.detach() + 1`: exactly 1 in value (a float minus itself is 0), the scores' gradient in the
    backward pass; in eval mode, where nothing flows back, and so in every export, the update is simply unscaled."""
    if scores is None or score_scaling == 'multiply':
        return scores
    return scores - scores.detach() + 1.0 if training else None


def _fixed_size(x: torch.Tensor, dim: int) -> int:
    """ A dimension the model fixes (a channel count) as a plain int, also in a trace, where sizes are traced values
    and a constant built from them would be computed in the exported graph (Shape, EyeLike, Pad, ...) at run time."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', torch.jit.TracerWarning)  # a constant is what is wanted here
        return int(x.shape[dim])


@torch.jit.unused  # exporters only: a scripted model never captures a graph for another runtime
def _fuse_by_conv(x: torch.Tensor, scaled: torch.Tensor, into_last: bool) -> torch.Tensor:
    """ The fusion for exported graphs: `x` plus a 1x1 convolution that places the k scaled planes on the first
    (or last) k channels with a constant one-hot weight (exact for finite values: each output sums one plane
    and zeros).

    onnxruntime and OpenVINO fuse the add into the convolution and run it in their blocked or channels-last
    layout, where a ScatterND or a Concat needs the map in plain NCHW, one more reorder of the whole map per block
    (and the TorchScript-based ONNX exporter drops an in-place add altogether). Exports of resnet50_mod and
    mobilenetv2_mod timed side by side with their identity bounds (batch 1 and 16, 1 thread, one run each, about
    2 points of noise) ran 1-9 points of the bound's speed faster than with a ScatterND, and no slower than with a
    Concat. Its k x C multiply-adds per pixel are 0.9 % of resnet50_mod's.
    """
    channels, k = _fixed_size(x, 1), _fixed_size(scaled, 1)
    start = channels - k if into_last else 0
    # padded last, from a (k, k, 1, 1) eye: exporters fold constants only from small inputs
    eye = torch.eye(k, dtype=x.dtype, device=x.device).view(k, k, 1, 1)
    placement = nn.functional.pad(eye, (0, 0, 0, 0, 0, 0, start, channels - start - k))
    return x + nn.functional.conv2d(scaled, placement)


@register_notrace_function
def fuse_channels(
        x: torch.Tensor,
        update: torch.Tensor,
        scores: Optional[torch.Tensor] = None,
        into_last: bool = False,
) -> torch.Tensor:
    """ Add `scores * update` (update (B, k, H, W), scores (B, k)) to the first (or last) k channels of `x`.

    The other channels pass through and `x` is left as it was: it is the previous block's output, which forward
    hooks, Grad-CAM and feature extractors still hold. Inductor turns the `index_add` into an add in place where
    `x` is not used afterwards, inside the compiled graph, where no hook can see it.
    """
    k = update.shape[1]
    scaled = update.to(x.dtype)
    if scores is not None:
        scaled = scaled * scores.view(scores.shape[0], k, 1, 1).to(x.dtype)
    if is_exporting():
        return _fuse_by_conv(x, scaled, into_last)
    start = x.shape[1] - k if into_last else 0
    return x.index_add(1, torch.arange(start, start + k, device=x.device), scaled)


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


def fuse(
        fusion: str,
        x: torch.Tensor,
        selected: torch.Tensor,
        update: torch.Tensor,
        indices: torch.Tensor,
        scores: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """ The block's output for its `fusion` target (`FUSION_TARGETS`): `x` with `scores * update` added where
    that target puts it; `selected` is `x` gathered at `indices`."""
    if fusion == 'original':
        return fuse_at_indices(x, selected, update, indices, scores)
    return fuse_channels(x, update, scores, fusion == 'last')
