""" MobileNetV2-MoD specifics: slim InvertedResidual shape, timm's mobilenetv2_100 defaults, options."""
import pytest
import timm

from timm_mod import MoDBlock, MoDEfficientNet


def test_slim_inverted_residual_is_k_to_6k_depthwise_to_k() -> None:
    slim = timm.create_model('mobilenetv2_mod_l', device='meta').blocks[4][1].block
    assert type(slim).__name__ == 'InvertedResidual'
    assert (slim.conv_pw.in_channels, slim.conv_pw.out_channels) == (8, 48)
    assert slim.conv_dw.groups == slim.conv_dw.in_channels == 48 and slim.conv_dw.kernel_size == (3, 3)
    assert (slim.conv_pwl.in_channels, slim.conv_pwl.out_channels) == (48, 8)
    assert slim.has_skip


def test_only_multi_block_stages_get_mod() -> None:
    model = timm.create_model('mobilenetv2_mod', device='meta')
    assert isinstance(model, MoDEfficientNet)
    assert [sum(isinstance(b, MoDBlock) for b in stage) for stage in model.blocks] == [0, 1, 1, 2, 1, 1, 0]
    assert [stage[1].k for stage in model.blocks if len(stage) > 1] == [1, 2, 4, 6, 10]


def test_pretrained_cfg_matches_timm_mobilenetv2_100() -> None:
    ours = timm.create_model('mobilenetv2_mod', device='meta').pretrained_cfg
    timms = timm.create_model('mobilenetv2_100', device='meta').pretrained_cfg
    for key in ('input_size', 'pool_size', 'crop_pct', 'crop_mode', 'interpolation', 'mean', 'std', 'num_classes',
                'first_conv', 'classifier'):
        assert ours[key] == timms[key], key
    assert not ours.get('url') and not ours.get('hf_hub_id')


def test_drop_path_follows_timm_schedule_on_the_mod_update() -> None:
    model = timm.create_model('mobilenetv2_mod', drop_path_rate=0.2, device='meta')
    dense = timm.create_model('mobilenetv2_100', drop_path_rate=0.2, device='meta')
    for stage, dense_stage in zip(model.blocks, dense.blocks):
        for block, dense_block in zip(stage, dense_stage):
            assert getattr(block.drop_path, 'drop_prob', 0.0) == getattr(dense_block.drop_path, 'drop_prob', 0.0)
            if isinstance(block, MoDBlock):
                assert not hasattr(block.block.drop_path, 'drop_prob')


def test_output_stride_dilates_the_slim_blocks_like_the_dense_ones() -> None:
    model = timm.create_model('mobilenetv2_mod', output_stride=8, device='meta')
    assert model.blocks[5][1].block.conv_dw.dilation == model.blocks[5][2].conv_dw.dilation == (4, 4)


def test_c_override_and_clear_error() -> None:
    model = timm.create_model('mobilenetv2_mod', c=8, device='meta')
    assert model.blocks[1][1].k == 3
    with pytest.raises(ValueError, match='choose c <= 24'):
        timm.create_model('mobilenetv2_mod', c=32, device='meta')
