""" MoD backbones under torchvision's FCN and Faster R-CNN: the paper's parameter differences, dilated
(output stride 8) MoD blocks against a reference computation, the embedded digit scenes, training, the
quickstart on a reduced budget, and clear errors."""
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from torchvision.models.detection import FasterRCNN
from torchvision.models.segmentation.fcn import FCN

import timm_mod  # noqa: F401
from timm_mod import MoDBlock
from timm_mod.models.dense_prediction import faster_rcnn, fcn


def num_params(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


# The paper's Tables 3 and 4 (M params): MoD backbone minus ResNet50, same head.
PAPER_FCN = {'resnet50_mod': 39.66, 'resnet75_mod': 44.66, 'resnet86_mod': 47.15}, 47.11


PAPER_FASTER_RCNN = {'resnet50_mod': 33.994, 'resnet75_mod': 38.989, 'resnet86_mod': 41.486}, 41.446


@pytest.mark.parametrize('head, build, paper, tolerance', [
    ('FCN', lambda b: fcn(b, 19, device='meta'), PAPER_FCN, 0.01),
    ('Faster R-CNN', lambda b: faster_rcnn(b, 21, backbone_kwargs=dict(device='meta')), PAPER_FASTER_RCNN, 0.002),
])
def test_param_differences_to_resnet50_match_the_paper(head, build, paper, tolerance) -> None:
    mod_params, paper_r50 = paper
    r50 = num_params(build('resnet50'))
    for backbone, published in mod_params.items():
        assert num_params(build(backbone)) - r50 == pytest.approx(published - paper_r50, abs=tolerance), backbone


def test_builders_return_torchvision_models_over_timm_backbones() -> None:
    segmentation = fcn('resnet18_mod', 11, aux_loss=False)
    assert type(segmentation) is FCN and segmentation.aux_classifier is None
    detection = faster_rcnn('resnet18', 11)
    assert type(detection) is FasterRCNN and detection.backbone.out_channels == 256


def test_output_stride_8_mod_backbone_matches_a_reference_computation() -> None:
    torch.manual_seed(0)
    model = fcn('resnet50_mod', 11).eval()
    body = model.backbone.body
    for module in body.modules():  # non-trivial norms, so the reference checks every op
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
    inputs, outputs = {}, {}
    for name, block in body.named_modules():
        if isinstance(block, MoDBlock) and name.startswith(('layer3', 'layer4')):
            block.register_forward_pre_hook(lambda m, args, name=name: inputs.__setitem__(name, args[0].clone()))
            block.register_forward_hook(lambda m, args, out, name=name: outputs.__setitem__(name, out.clone()))
    with torch.no_grad():
        features = model.backbone(torch.randn(2, 3, 64, 64))
    assert features['out'].shape[-2:] == (8, 8) and features['aux'].shape[-2:] == (8, 8)
    assert set(inputs) == {'layer3.1', 'layer3.3', 'layer3.5', 'layer4.1'}

    def bn(x, norm):
        return F.batch_norm(x, norm.running_mean, norm.running_var, norm.weight, norm.bias, eps=norm.eps)

    for name, x in inputs.items():
        block = dict(body.named_modules())[name]
        dilation = 2 if name.startswith('layer3') else 4  # timm's output stride 8: layer3 and layer4 dilated
        slim = block.block
        pooled = x.mean((2, 3))
        scores = torch.sigmoid(F.relu(pooled @ block.selector.fc1.weight.T) @ block.selector.fc2.weight.T)
        scores, indices = scores.sort(dim=1, descending=True, stable=True)
        scores, indices = scores[:, :block.k], indices[:, :block.k]
        picked = torch.stack([sample[index] for sample, index in zip(x, indices)])
        h = F.relu(bn(F.conv2d(picked, slim.conv1.weight), slim.bn1))
        h = F.relu(bn(F.conv2d(h, slim.conv2.weight, padding=dilation, dilation=dilation), slim.bn2))
        h = F.relu(bn(F.conv2d(h, slim.conv3.weight), slim.bn3) + picked)
        expected = x.clone()
        expected[:, :block.k] += scores[:, :, None, None] * h
        torch.testing.assert_close(outputs[name], expected, rtol=1e-4, atol=1e-4)


def test_bad_backbones_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="Unknown model 'resnet50_moe'"):
        fcn('resnet50_moe', 11)
    with pytest.raises(ValueError, match="timm cannot build 'vit_tiny_patch16_224' as a feature backbone"):
        fcn('vit_tiny_patch16_224', 11, device='meta')
    with pytest.raises(ValueError, match=r'needs feature maps at strides \(4, 8, 16, 32\)'):
        faster_rcnn('vit_tiny_patch16_224', 11, backbone_kwargs=dict(device='meta'))


def test_pretrained_backbone_weights_load_from_timm_sources(tmp_path: Path) -> None:
    weights = timm.create_model('resnet18_mod').state_dict()
    torch.save(weights, tmp_path / 'resnet18_mod.pth')
    model = fcn('resnet18_mod', 11, pretrained_backbone=True,
                pretrained_cfg_overlay=dict(file=str(tmp_path / 'resnet18_mod.pth')))
    loaded = model.backbone.body.state_dict()
    assert all(torch.equal(loaded[key], weights[key]) for key in ('conv1.weight', 'layer2.1.selector.fc1.weight'))
