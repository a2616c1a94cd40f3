""" MoD backbones for semantic segmentation and object detection (the paper's Tables 3 and 4)

Paper: `CNN Mixture-of-Depths` - https://arxiv.org/abs/2409.17016 (FCN on Cityscapes, Faster R-CNN on VOC)

The heads, losses, anchor generator and feature pyramid are torchvision's (`FCN` with `FCNHead`,
`FasterRCNN` with `FeaturePyramidNetwork`); the backbone is any timm model built with
`features_only=True`, a `*_mod` model or a plain one, so both are built the same way. The only code
here adapts timm's list of feature maps to the dict torchvision's models take.
"""
from collections import OrderedDict
from typing import Any, Dict, List, Optional

import timm
import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN
from torchvision.models.segmentation.fcn import FCN, FCNHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from ._factory import require_registered

__all__ = ['create_backbone', 'SegmentationFeatures', 'FeaturePyramidBackbone', 'fcn', 'faster_rcnn']

PYRAMID_STRIDES = (4, 8, 16, 32)  # torchvision's fasterrcnn_resnet50_fpn levels, before its max-pool level


def create_backbone(backbone: str, pretrained: bool = False, **kwargs: Any) -> nn.Module:
    """ A timm model as a feature extractor (`features_only=True`), with a clear error for one timm cannot build so.

    Pretrained weights come from the same sources as `timm.create_model` (a tag, `pretrained_cfg_overlay`
    with a file, `hf-hub:` or `local-dir:` names).
    """
    if backbone.split(':')[0] not in ('hf-hub', 'local-dir'):
        require_registered(backbone)
    try:
        return timm.create_model(backbone, pretrained=pretrained, features_only=True, **kwargs)
    except TypeError as error:  # an argument its class does not take, e.g. a ViT's output_stride
        settings = ', '.join(f'{key}={value}' for key, value in kwargs.items())
        raise ValueError(
            f'timm cannot build {backbone!r} as a feature backbone with features_only=True, {settings} ({error}); '
            f'choose a CNN backbone such as resnet50_mod or resnet50.') from error


class SegmentationFeatures(nn.Module):
    """ The last feature map as 'out' and the one before as 'aux', as torchvision's segmentation models take."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.body(x)
        return OrderedDict(out=features[-1], aux=features[-2])


class FeaturePyramidBackbone(nn.Module):
    """ timm feature maps through torchvision's FPN (plus its max-pool level), as `FasterRCNN` takes them."""

    def __init__(self, body: nn.Module, out_channels: int = 256) -> None:
        super().__init__()
        reductions = body.feature_info.reduction()
        if not all(stride in reductions for stride in PYRAMID_STRIDES):
            raise ValueError(
                f'Faster R-CNN with an FPN needs feature maps at strides {PYRAMID_STRIDES}; '
                f'this backbone gives {reductions}. '
                f'Choose a CNN backbone such as resnet50_mod or resnet50.')
        self.levels = [reductions.index(stride) for stride in PYRAMID_STRIDES]
        self.body = body
        channels = body.feature_info.channels()
        self.fpn = FeaturePyramidNetwork(
            [channels[level] for level in self.levels], out_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(name), features[level]) for name, level in enumerate(self.levels)))


def fcn(
        backbone: str,
        num_classes: int,
        aux_loss: bool = True,
        pretrained_backbone: bool = False,
        output_stride: int = 8,
        **backbone_kwargs: Any,
) -> FCN:
    """ torchvision's FCN (`FCNHead` on the last map, optionally on the one before) over a dilated timm backbone.

    As torchvision's `fcn_resnet50` and the paper's FCN-R50-D8, the backbone runs at output stride 8:
    its last two stages are dilated instead of strided (MoD's slim blocks take the dilation of the block
    they replace).

    Args:
        backbone: Any timm model name, `*_mod` or plain.
        num_classes: Classes of the per-pixel classifier, background included.
        aux_loss: Add the auxiliary `FCNHead` on the second-to-last feature map.
        pretrained_backbone: Load the backbone's pretrained weights (timm's sources).
        output_stride: 8 (the paper's), 16 or 32.
        **backbone_kwargs: More `timm.create_model` arguments (drop_path_rate, pretrained_cfg_overlay, ...).
    """
    body = create_backbone(backbone, pretrained_backbone, output_stride=output_stride, **backbone_kwargs)
    if max(body.feature_info.reduction()) != output_stride:
        raise ValueError(f'{backbone!r} does not run at output stride {output_stride} (its feature maps have strides '
                         f'{body.feature_info.reduction()}); choose a CNN backbone such as resnet50_mod or resnet50.')
    channels: List[int] = body.feature_info.channels()
    return FCN(
        SegmentationFeatures(body),
        FCNHead(channels[-1], num_classes),
        FCNHead(channels[-2], num_classes) if aux_loss else None,
    )


def faster_rcnn(
        backbone: str,
        num_classes: int,
        pretrained_backbone: bool = False,
        fpn_channels: int = 256,
        backbone_kwargs: Optional[Dict[str, Any]] = None,
        **kwargs: Any,
) -> FasterRCNN:
    """ torchvision's Faster R-CNN with `FeaturePyramidNetwork` over a timm backbone's stride 4-32 feature maps.

    As torchvision's `fasterrcnn_resnet50_fpn`: four FPN levels (strides 4-32) plus a max-pool level, its
    default anchors and RoI heads. Images are normalised with the backbone's own mean and std unless given.

    Args:
        backbone: Any timm model name, `*_mod` or plain.
        num_classes: Object classes plus one for the background.
        pretrained_backbone: Load the backbone's pretrained weights (timm's sources).
        fpn_channels: Width of the pyramid.
        backbone_kwargs: More `timm.create_model` arguments.
        **kwargs: `FasterRCNN` arguments (min_size, max_size, box_detections_per_img, ...).
    """
    body = create_backbone(backbone, pretrained_backbone, **(backbone_kwargs or {}))
    kwargs.setdefault('image_mean', list(body.pretrained_cfg['mean']))
    kwargs.setdefault('image_std', list(body.pretrained_cfg['std']))
    return FasterRCNN(FeaturePyramidBackbone(body, fpn_channels), num_classes=num_classes, **kwargs)
