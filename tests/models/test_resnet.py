""" ResNet-MoD specifics: slim Bottleneck shape, c and r overrides, stochastic depth, pretrained cfg."""
import pytest
import timm
import torch

from timm_mod import MoDBlock


def test_bottleneck_slim_block_is_k_to_k_over_4() -> None:
    model = timm.create_model('resnet50_mod', device='meta')
    slim = model.layer3[1].block
    assert [(m.in_channels, m.out_channels) for m in (slim.conv1, slim.conv2, slim.conv3)] == [(16, 4), (4, 4), (4, 16)]


def test_basic_slim_block_is_k_to_k() -> None:
    slim = timm.create_model('resnet18_mod', device='meta').layer4[1].block
    assert [(m.in_channels, m.out_channels) for m in (slim.conv1, slim.conv2)] == [(8, 8), (8, 8)]


def test_c_and_r_override_through_create_model() -> None:
    model = timm.create_model('resnet50_mod', c=32, r=8, device='meta')
    block = model.layer3[1]
    assert (block.c, block.k, block.selector.fc1.out_features) == (32, 32, 128)


@pytest.mark.parametrize('name, c, message', [
    ('resnet50_mod', 3, 'k=85 of 256 channels, which a slim Bottleneck .* the largest c that works .* is 2'),
    ('resnet50_mod', 128, 'k=2 of 256 channels, .* the largest c that works for this model is 64'),
    ('resnet18_mod', 128, r'choose c <= 64'),
    ('resnet18_mod', 0, 'positive integer'),
])
def test_invalid_c_fails_with_a_clear_error(name: str, c: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        timm.create_model(name, c=c, device='meta')


@pytest.mark.parametrize('name', ['resnet18_mod', 'resnet50_mod'])
def test_drop_path_follows_timm_schedule_on_the_mod_update(name: str) -> None:
    rate = 0.1
    model = timm.create_model(name, drop_path_rate=rate, device='meta')
    dense = timm.create_model(name.replace('_mod', ''), drop_path_rate=rate, device='meta')
    for stage in ('layer1', 'layer2', 'layer3', 'layer4'):
        for mod_block, dense_block in zip(getattr(model, stage), getattr(dense, stage)):
            expected = dense_block.drop_path.drop_prob if dense_block.drop_path is not None else 0.0
            assert getattr(mod_block.drop_path, 'drop_prob', 0.0) == pytest.approx(expected)
            if isinstance(mod_block, MoDBlock):
                assert mod_block.block.drop_path is None


@pytest.mark.parametrize('name, last_norm', [('resnet50_mod', 'bn3'), ('regnety_016_mod', 'conv3.bn')])
@pytest.mark.parametrize('zero_init_last', [True, False])
def test_zero_init_last_reaches_the_slim_blocks(name: str, last_norm: str, zero_init_last: bool) -> None:
    model = timm.create_model(name, zero_init_last=zero_init_last)
    for block in (m for m in model.modules() if isinstance(m, MoDBlock)):
        weight = block.block.get_submodule(last_norm).weight
        assert torch.equal(weight, torch.full_like(weight, 0.0 if zero_init_last else 1.0))


def test_output_stride_dilates_the_slim_blocks_like_the_dense_ones() -> None:
    model = timm.create_model('resnet50_mod', output_stride=8, device='meta')
    assert model.layer4[1].block.conv2.dilation == model.layer4[2].conv2.dilation == (4, 4)


def test_pretrained_cfg_is_the_paper_recipe_without_fake_weights() -> None:
    cfg = timm.create_model('resnet75_mod', device='meta').pretrained_cfg
    assert cfg['input_size'] == (3, 224, 224)
    assert cfg['crop_pct'] == 0.875 and cfg['interpolation'] == 'bilinear'
    assert cfg['mean'] == timm.data.IMAGENET_DEFAULT_MEAN and cfg['std'] == timm.data.IMAGENET_DEFAULT_STD
    assert not cfg.get('url') and not cfg.get('hf_hub_id')
    assert timm.list_models('*_mod*', pretrained=True) == []
