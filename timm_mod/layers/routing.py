""" Which channels a MoD block processes: the top-k of the selector's scores with one tie rule for every runtime,
a random draw (the paper's "rand." routing, Table 9), and the per-sample gather of the chosen channels.
All shapes depend on the input shape only (paper Section 3.2): one static graph."""
from typing import Tuple

import torch
from timm.layers import register_notrace_function

__all__ = [
    'ROUTING_MODES', 'check_routing', 'is_exporting', 'top_k_channels', 'gather_channels', 'random_channel_indices',
    'fixed_channel_indices',
]

ROUTING_MODES = ('learned', 'random', 'fixed')
""" How a MoD block picks its k channels: the top k of a selector's scores (the paper's MoD), k drawn uniformly
per sample with no selector and scores fixed at 1 (the paper's "MoD rand.", Table 9), or one fixed random set of k
channels for every image, in training too, with no selector and scores 1 (static routing: the control for a
selector that has stopped telling images apart). Random routing processes the fixed set in eval mode
(`MoDBlock.eval_channels`)."""


def check_routing(routing: str) -> None:
    if routing not in ROUTING_MODES:
        raise ValueError(f'Unknown MoD routing {routing!r}; choose one of {ROUTING_MODES}.')


def _is_onnx_export() -> bool:
    if torch.jit.is_scripting():
        return False
    return torch.onnx.is_in_onnx_export()


def is_exporting() -> bool:
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
        if not is_exporting() and batch == 1:  # an exported graph must not bake in the batch size
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
