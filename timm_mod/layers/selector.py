""" The channel selector of a MoD block: one score in (0, 1) per channel (paper Section 3.1, Figure 2)."""
from typing import Any

import torch
import torch.nn as nn
from timm.layers import create_act_layer

__all__ = ['ChannelSelector', 'check_selector_act', 'check_selector_gain', 'require_positive_int']


def require_positive_int(value: Any, meaning: str, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f'MoD {meaning} {name} must be a positive integer, got {name}={value!r}.')


def check_selector_act(act: str) -> None:
    """ A clear error for an activation timm does not know, or one with parameters (which would change the paper's
    parameter counts)."""
    try:
        layer = create_act_layer(act)
    except Exception as error:
        raise ValueError(f'Unknown MoD selector_act {act!r} ({error}); give a timm activation name such as '
                         f"'relu' (the paper's), 'gelu', 'silu' or 'leaky_relu'.") from None
    if layer is None or any(True for _ in layer.parameters()):
        raise ValueError(f'MoD selector_act {act!r} has parameters or is no activation; choose one without, so the '
                         f'paper\'s parameter counts hold (\'relu\', \'gelu\', \'silu\', \'leaky_relu\', ...).')


def check_selector_gain(gain: Any) -> None:
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not gain > 0 or gain == float('inf'):
        raise ValueError(f'MoD selector_gain must be a positive finite number, got {gain!r} (1.0 is the paper\'s).')


class ChannelSelector(nn.Module):
    """ Scores every channel of a feature map in (0, 1).

    Squeeze-and-excitation shaped (pool -> FC -> ReLU -> FC -> sigmoid) but bias-free: the bias-free layers
    are what reproduces the paper's parameter counts (Tables 1 and 2) to the published digit. It returns
    the scores instead of rescaling the input, since MoD uses them to pick and to weight channels.
    """

    def __init__(
            self,
            channels: int,
            r: int = 16,
            act: str = 'relu',
            gain: float = 1.0,
            normalize_input: bool = False,
            device=None,
            dtype=None,
    ) -> None:
        """
        Args:
            channels: Number of input channels C.
            r: Reduction of the hidden layer, C // r units (at least one).
            act: The hidden activation, a timm activation name without parameters (the paper's ReLU).
            gain: Each layer computes with `gain` x its stored weights, which start at timm's initialisation / gain:
                the same function at the start, while an optimizer moves the effective weights gain^2 (SGD) or
                gain (Adam-family) times as fast, weight decay's relative pull unchanged.
            normalize_input: Standardise the pooled channel means of each image (zero mean, unit variance over
                the channels, no parameters), so the selector's input keeps its scale while the features drift.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        require_positive_int(r, 'selector reduction', 'r')
        check_selector_gain(gain)
        self.r = r
        self.gain = float(gain)
        self.normalize_input = normalize_input
        self.channels = channels  # a constant normalized shape: exporters must not compute it from the input
        hidden = max(1, channels // r)
        self.fc1 = nn.Linear(channels, hidden, bias=False, **dd)
        self.act = create_act_layer(act, inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=False, **dd)
        if self.gain != 1.0:
            with torch.no_grad():
                self.fc1.weight.div_(self.gain)
                self.fc2.weight.div_(self.gain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # sum / HW, not mean: mean's backward writes a full-size (B, C, H, W) tensor of grad / HW, while the
        # sum's is a stride-0 expansion of a (B, C) one that the gradient accumulation reads in place
        pooled = x.sum((2, 3)) / (x.shape[2] * x.shape[3])
        if self.normalize_input:
            pooled = nn.functional.layer_norm(pooled, (self.channels,))
        hidden = self.fc1(pooled)
        if self.gain != 1.0:
            hidden = hidden * self.gain
        logits = self.fc2(self.act(hidden))
        if self.gain != 1.0:
            logits = logits * self.gain
        return torch.sigmoid(logits)
