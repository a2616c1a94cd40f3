""" `to_mod` on every supported family: placement, kept weights, params and MACs as the slim blocks predict,
equality with the registered models, dense weights into MoD models, and clear errors."""
import copy
import subprocess
from pathlib import Path
from typing import Dict, Tuple

import pytest
import timm
import torch
import torch.nn as nn
from timm.models import load_checkpoint
from torch.utils.flop_counter import FlopCounterMode

import timm_mod  # noqa: F401
from timm_mod import MoDBlock, default_c, to_mod
from timm_mod.experiments.benchmark import BenchSetting, run_benchmark
from timm_mod.experiments.convert import convert_plain_weights, plain_counterpart
from timm_mod.models._family import MIN_DEFAULT_WIDTH, block_in_channels, find_family, mod_positions
from timm_mod.experiments.quickstart import run_quickstart, write_digits
from timm_mod.models import OUR_MODELS
from conftest import CONSOLE_SCRIPT

INPUT = (2, 3, 64, 64)

# a small member of each family, and the block types it exercises
FAMILY_MEMBERS = {
    'resnet18': 'ResNet BasicBlock',
    'seresnext26d_32x4d': 'ResNeXt Bottleneck with SE, ResNet-D stem',
    'mobilenetv2_050': 'InvertedResidual',
    'mobilenetv3_small_050': 'InvertedResidual with hard-sigmoid SE, MobileNetV3',
    'mobilenetv1_100': 'DepthwiseSeparableConv stages',
    'convnext_atto': 'ConvNeXtBlock',
    'regnetx_002': 'RegNetX grouped Bottleneck',
    'regnety_002': 'RegNetY Bottleneck with SE',
}


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def macs(module: nn.Module, x: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as counter:
        module(x)
    return counter.get_total_flops() / 2


def dense_block_inputs(model: nn.Module) -> Dict[str, torch.Size]:
    """ Input shape of every block MoD will replace, recorded on the plain model."""
    family = find_family(model)
    names = {block: name for name, block in model.named_modules()}
    shapes, hooks = {}, []
    for _, _, block in mod_positions(model, family):
        hooks.append(block.register_forward_pre_hook(
            lambda module, args: shapes.__setitem__(names[module], args[0].shape)))
    model(torch.randn(INPUT))
    for hook in hooks:
        hook.remove()
    return shapes


@pytest.fixture(scope='module', params=list(FAMILY_MEMBERS))
def converted(request) -> Tuple[str, nn.Module, nn.Module]:
    torch.manual_seed(0)
    plain = timm.create_model(request.param).eval()
    return request.param, plain, to_mod(copy.deepcopy(plain))


def test_mod_replaces_every_odd_block_with_a_slim_block_of_its_own_class(converted) -> None:
    name, plain, model = converted
    family = find_family(plain)
    c = default_c(plain)
    for plain_stage, stage in zip(family.stages(plain), family.stages(model)):
        for index, (dense, block) in enumerate(zip(plain_stage.children(), stage.children())):
            if index % 2 == 0:
                assert not isinstance(block, MoDBlock)
                continue
            assert isinstance(block, MoDBlock) and type(block.block) is type(dense)
            assert block.c == c and block.k == block_in_channels(dense) // c >= MIN_DEFAULT_WIDTH
    assert any(isinstance(m, MoDBlock) for m in model.modules()), name


def test_kept_weights_are_bit_identical(converted) -> None:
    _, plain, model = converted
    replaced = {f'{n}.' for n, m in model.named_modules() if isinstance(m, MoDBlock)}
    converted_state = model.state_dict()
    kept = {k: v for k, v in plain.state_dict().items() if not any(k.startswith(p) for p in replaced)}
    assert kept and all(torch.equal(converted_state[k], v) for k, v in kept.items())


def test_params_and_macs_drop_by_what_the_slim_blocks_predict(converted) -> None:
    _, plain, model = converted
    family = find_family(plain)
    shapes = dense_block_inputs(plain)
    predicted_params = predicted_macs = 0
    modules = dict(model.named_modules())
    for name, shape in shapes.items():
        dense, mod_block = dict(plain.named_modules())[name], modules[name]
        channels = shape[1]
        selector_params = 2 * channels * max(1, channels // 16)
        slim = family.slim_block(dense, mod_block.k).eval()
        assert num_params(mod_block) == num_params(slim) + selector_params
        predicted_params += num_params(dense) - num_params(slim) - selector_params
        slim_input = torch.randn(shape[0], mod_block.k, *shape[2:])
        predicted_macs += (macs(dense, torch.randn(shape)) - macs(slim, slim_input)
                           - shape[0] * selector_params)
    assert num_params(plain) - num_params(model) == predicted_params > 0
    x = torch.randn(INPUT)
    assert macs(plain, x) - macs(model, x) == pytest.approx(predicted_macs, rel=1e-9)
    assert predicted_macs > 0


def test_converted_model_runs_forward_and_backward(converted) -> None:
    _, plain, model = converted
    model = copy.deepcopy(model).train()
    out = model(torch.randn(INPUT))
    assert out.shape == (INPUT[0], plain.num_classes)
    out.sum().backward()
    for block in (m for m in model.modules() if isinstance(m, MoDBlock)):
        assert all(p.grad is not None for p in block.parameters()), 'every MoD parameter gets a gradient'


def test_to_mod_resnet50_is_resnet50_mod() -> None:
    converted = to_mod(timm.create_model('resnet50', device='meta'))
    registered = timm.create_model('resnet50_mod', device='meta')
    assert str(converted).splitlines()[1:] == str(registered).splitlines()[1:]
    assert {k: v.shape for k, v in converted.state_dict().items()} == \
        {k: v.shape for k, v in registered.state_dict().items()}
    assert num_params(converted) == num_params(registered) == 18_105_949


@pytest.mark.parametrize('name, plain_name', [
    ('resnet18_mod', 'resnet18'), ('resnet50_mod', 'resnet50'), ('mobilenetv2_mod', 'mobilenetv2_100'),
    *OUR_MODELS.items()])
def test_registered_models_are_to_mod_of_their_plain_model(name: str, plain_name: str) -> None:
    """ The registered models are built by `to_mod` itself: under one seed, equal weight for weight."""
    torch.manual_seed(0)
    registered = timm.create_model(name)
    c = next(m for m in registered.modules() if isinstance(m, MoDBlock)).c
    torch.manual_seed(0)
    plain = timm.create_model(plain_name)
    if name in OUR_MODELS:
        assert c == default_c(plain)
    converted = to_mod(plain, c=c)
    assert str(converted).splitlines()[1:] == str(registered).splitlines()[1:]
    converted_state, registered_state = converted.state_dict(), registered.state_dict()
    assert list(converted_state) == list(registered_state)
    for key, value in registered_state.items():
        assert torch.equal(converted_state[key], value), key


def test_default_c_keeps_the_papers_c_where_it_can() -> None:
    assert default_c(timm.create_model('resnet50', device='meta')) == 64  # the paper's
    assert default_c(timm.create_model('resnet18', device='meta')) == 16  # 64 would leave k=1 in layer1
    assert default_c(timm.create_model('seresnext50_32x4d', device='meta')) == 4  # 32 groups need k >= 64


def test_explicit_c_is_honoured_and_an_invalid_one_is_a_clear_error() -> None:
    model = to_mod(timm.create_model('mobilenetv2_100', device='meta'), c=16)
    assert str(model).splitlines()[1:] == str(timm.create_model('mobilenetv2_mod', device='meta')).splitlines()[1:]
    plain = timm.create_model('seresnext26d_32x4d', device='meta')
    with pytest.raises(ValueError, match=r'layer1.1 k=4 of 256 channels, which a slim Bottleneck .* cannot have; '
                                         r'the largest c that works for this model is 4'):
        to_mod(plain, c=64)
    assert not any(isinstance(m, MoDBlock) for m in plain.modules()), 'a refused c leaves the model as it was'
    with pytest.raises(ValueError, match='c must be a positive integer'):
        to_mod(plain, c=0)


def test_converting_twice_and_unsupported_models_are_clear_errors() -> None:
    with pytest.raises(ValueError, match='already has MoD blocks'):
        to_mod(timm.create_model('resnet18_mod', device='meta'))
    supported = r'does not support VisionTransformer .*ConvNeXt \(ConvNeXt\).*ResNet \(ResNet\)'
    with pytest.raises(TypeError, match=supported):
        to_mod(timm.create_model('vit_tiny_patch16_224', device='meta'))
    refusal = r'^blocks\.0\.1: .*wraps InvertedResidual and DepthwiseSeparableConv blocks, not ConvBnAct'
    with pytest.raises(TypeError, match=refusal):
        to_mod(timm.create_model('efficientnetv2_rw_t', device='meta'))
    with pytest.raises(TypeError, match=r'wraps its Bottleneck \(RegNetX, RegNetY\), not PreBottleneck'):
        to_mod(timm.create_model('regnetv_040', device='meta'))
    with pytest.raises(TypeError, match=r"cannot rebuild the InvertedResidual at blocks.1.1 .*'MixedConv2d'"):
        to_mod(timm.create_model('mixnet_s', device='meta'))
    condconv = timm.create_model('efficientnet_cc_b0_4e', device='meta')
    with pytest.raises(TypeError, match=r'cannot rebuild the CondConvResidual at blocks.4.1 .*num_experts'):
        to_mod(condconv, c=4)
    assert not any(isinstance(m, MoDBlock) for m in condconv.modules()), 'a block that fails leaves no MoD behind'


def test_dense_checkpoint_becomes_an_initial_checkpoint_for_the_mod_model(tmp_path: Path) -> None:
    torch.manual_seed(0)
    dense = timm.create_model('resnet18', num_classes=10)
    dense_path = tmp_path / 'resnet18.pth.tar'
    torch.save({'state_dict': dense.state_dict()}, dense_path)
    output = convert_plain_weights('resnet18_mod', tmp_path / 'init.pth', checkpoint_path=dense_path)
    model = timm.create_model('resnet18_mod', num_classes=10)
    load_checkpoint(model, str(output), strict=True)  # what train.py --initial-checkpoint does
    state = model.state_dict()
    for key in ('conv1.weight', 'layer1.0.conv1.weight', 'layer4.0.bn2.running_var', 'fc.weight'):
        assert torch.equal(state[key], dense.state_dict()[key])
    with pytest.raises(FileExistsError, match='exists'):
        convert_plain_weights('resnet18_mod', output, checkpoint_path=dense_path)
    with pytest.raises(ValueError, match="is not a checkpoint of 'resnet34'"):
        convert_plain_weights('resnet34_mod', tmp_path / 'other.pth', checkpoint_path=dense_path)


def test_models_without_a_plain_counterpart_say_so() -> None:
    assert plain_counterpart('resnet50_mod_lk') == 'resnet50'
    assert plain_counterpart('mobilenetv2_mod') == 'mobilenetv2_100'
    with pytest.raises(ValueError, match="'resnet26_mod' has no plain timm counterpart"):
        plain_counterpart('resnet26_mod')


def test_convert_command(tmp_path: Path) -> None:
    dense_path = tmp_path / 'resnet18.safetensors'
    from safetensors.torch import save_file
    save_file(timm.create_model('resnet18', num_classes=10).state_dict(), str(dense_path))
    run = subprocess.run(
        [str(CONSOLE_SCRIPT), 'convert', '--model', 'resnet18_mod', '--checkpoint', str(dense_path),
         '--output', str(tmp_path / 'init.safetensors')], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert 'resnet18 weights in resnet18_mod' in run.stdout and '--initial-checkpoint' in run.stdout
    hinted_args_file = Path(run.stdout.split(' -c ')[1].split()[0])
    assert hinted_args_file.is_absolute() and hinted_args_file.name == 'finetune_from_plain.yaml'
    assert hinted_args_file.is_file(), 'train.py runs from timm\'s checkout: the hint must find the arg file'
    run = subprocess.run([str(CONSOLE_SCRIPT), 'convert', '--model', 'resnet75_mod', '--pretrained',
                          '--output', str(tmp_path / 'x.pth')], capture_output=True, text=True)
    assert run.returncode != 0 and "'resnet75_mod' has no plain timm counterpart" in run.stderr


def test_benchmark_converts_a_plain_model_name() -> None:
    setting = BenchSetting(batch_size=1, threads=1, task='inference', mode='eager', channels_last=False,
                           bf16=False, device='cpu')
    (row,) = run_benchmark(['regnetx_002'], [setting], rounds=1, min_run_time=0.01, progress=False)
    assert row.model == row.baseline == 'regnetx_002'
    assert row.params_m == pytest.approx(num_params(to_mod(timm.create_model('regnetx_002'))) / 1e6)


def test_quickstart_with_a_model_beyond_the_paper(tmp_path: Path) -> None:
    digits = write_digits(tmp_path / 'digits')
    _, (mod, baseline) = run_quickstart(data_dir=digits, output_dir=tmp_path / 'out', model_name='convnext_nano_mod',
                                        epochs=1, progress=False)
    assert (mod.model_name, baseline.model_name) == ('convnext_nano_mod', 'convnext_nano')
    assert mod.params < baseline.params and mod.macs < baseline.macs
    assert (mod.checkpoint_dir / 'last.pth.tar').is_file()


@pytest.mark.parametrize('name, other_c, message', [
    ('convnext_nano_mod', 8, 'processes k=5 channels of 80 (c=16) but the checkpoint has k=10 (c=8): another c'),
    ('efficientnet_b0_mod', 3, 'processes k=4 channels of 24 (c=6) but the checkpoint has k=8 (c=3): another c'),
])
def test_checkpoint_of_another_c_is_named_whatever_the_first_slim_conv(name: str, other_c: int, message: str) -> None:
    from timm_mod.models import describe_state_dict_mismatch
    model = timm.create_model(name, device='meta')
    assert describe_state_dict_mismatch(model, model.state_dict()) == ''
    other = timm.create_model(name, c=other_c, device='meta').state_dict()
    assert message in describe_state_dict_mismatch(model, other)


def test_selection_counts_a_converted_plain_model(tmp_path: Path) -> None:
    from timm_mod.experiments.selection import count_selections
    from timm_mod.models import load_trained_model
    model, _ = load_trained_model('regnetx_002', num_classes=10)
    assert any(isinstance(m, MoDBlock) for m in model.modules()) and not model.training
    digits = write_digits(tmp_path / 'digits')
    counts = count_selections(model, digits, classes=['0', '1'], max_per_class=3, batch_size=4,
                              data_config=dict(input_size=(3, 32, 32), crop_pct=1.0, interpolation='bicubic',
                                               mean=(0.5,) * 3, std=(0.5,) * 3, crop_mode='center'),
                              progress=False)
    blocks = {name for name, m in model.named_modules() if isinstance(m, MoDBlock)}
    assert set(counts.counts) == blocks
    for name, table in counts.counts.items():
        assert table.sum().item() == 6 * counts.k[name]  # every sample picks exactly k channels


def test_converting_an_eval_model_gives_eval_mod_blocks() -> None:
    model = to_mod(timm.create_model('resnet18').eval())
    assert not any(m.training for m in model.modules())
    model = to_mod(timm.create_model('resnet18').train())
    assert all(m.training for m in model.modules())


def test_slim_blocks_normalise_like_the_dense_blocks() -> None:
    """ tf_efficientnet_b0 uses BN eps 1e-3 (TensorFlow's), not PyTorch's 1e-5."""
    model = to_mod(timm.create_model('tf_efficientnet_b0'))
    slim_norms = [m for block in model.modules() if isinstance(block, MoDBlock)
                  for m in block.block.modules() if isinstance(m, nn.BatchNorm2d)]
    assert slim_norms and {m.eps for m in slim_norms} == {1e-3}


@pytest.mark.parametrize('kwargs, message', [
    (dict(fusion='middle'), r"fusion 'middle'; choose one of \('first', 'last', 'original'\)"),
    (dict(routing='smart'), r"routing 'smart'; choose one of \('learned', 'random', 'fixed'\)"),
    (dict(r=0), 'selector reduction r must be a positive integer'),
])
def test_bad_mod_arguments_are_value_errors_naming_the_choices(kwargs, message: str) -> None:
    for build in (lambda: timm.create_model('resnet18_mod', **kwargs),
                  lambda: timm.create_model('mobilenetv2_mod', **kwargs),
                  lambda: to_mod(timm.create_model('resnet18'), **kwargs)):
        with pytest.raises(ValueError, match=message):
            build()


@pytest.mark.parametrize('plain_name, name', [('resnet18', 'resnet18_mod'), ('mobilenetv2_100', 'mobilenetv2_mod')])
def test_to_mod_with_the_original_positions_fusion_is_the_registered_models_kwarg(plain_name: str, name: str) -> None:
    """ fusion='original' through `to_mod` and through `create_model(..., fusion=...)` (train.py's --model-kwargs)
    builds the same model, which adds the processed channels back where they came from."""
    torch.manual_seed(0)
    registered = timm.create_model(name, fusion='original').eval()
    c = next(m for m in registered.modules() if isinstance(m, MoDBlock)).c
    torch.manual_seed(0)
    converted = to_mod(timm.create_model(plain_name), c=c, fusion='original').eval()
    assert {m.fusion for m in converted.modules() if isinstance(m, MoDBlock)} == {'original'}
    x = torch.randn(2, 3, 64, 64)
    first_k = timm.create_model(name).eval()
    first_k.load_state_dict(registered.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(converted(x), registered(x), rtol=0, atol=0)
        assert not torch.allclose(first_k(x), registered(x)), 'the fusion changes the output'


@pytest.mark.parametrize('plain_name, name', [('resnet18', 'resnet18_mod'), ('mobilenetv2_100', 'mobilenetv2_mod'),
                                              ('convnext_atto', None), ('regnetx_002', None)])
def test_every_entry_point_gives_every_block_the_same_mod_arguments(plain_name: str, name: str) -> None:
    """ The MoD arguments have one definition (`ModArgs`): the registered model, `to_mod` and `create_mod_model`
    hand the same ones, and only those, to every MoD block, and leave timm's own arguments to timm."""
    from timm_mod.layers import ModArgs
    from timm_mod.models import create_mod_model
    wanted = ModArgs(c=4, r=8, fusion='last', routing='learned')
    builds = [lambda: to_mod(timm.create_model(plain_name, num_classes=7, device='meta'), c=4, r=8, fusion='last'),
              lambda: create_mod_model(plain_name, num_classes=7, device='meta', c=4, r=8, fusion='last')]
    if name is not None:
        builds.append(lambda: timm.create_model(name, num_classes=7, device='meta', c=4, r=8, fusion='last'))
    for build in builds:
        model = build()
        blocks = [m for m in model.modules() if isinstance(m, MoDBlock)]
        assert blocks and {block.args for block in blocks} == {wanted}
        assert all(block.selector.fc1.out_features == max(1, block.in_channels // 8) for block in blocks)
        assert model.num_classes == 7


@pytest.mark.parametrize('build', ['registered', 'to_mod'])
def test_selector_decay_false_takes_exactly_the_selectors_out_of_timms_weight_decay(build: str) -> None:
    """ timm's optimizer factory (train.py's) decays every weight matrix and leaves 1-d parameters alone; with
    selector_decay=False the selectors' weights join the undecayed group and nothing else moves."""
    from timm.optim import create_optimizer_v2

    def decayed(model: nn.Module) -> set:
        names = {id(p): n for n, p in model.named_parameters()}
        optimizer = create_optimizer_v2(model, 'sgd', lr=0.1, weight_decay=5e-4)
        return {names[id(p)] for group in optimizer.param_groups if group['weight_decay'] > 0 for p in group['params']}

    def make(**options) -> nn.Module:
        if build == 'registered':
            return timm.create_model('resnet18_mod', **options)
        return to_mod(timm.create_model('resnet18'), c=64, **options)
    default, without = decayed(make()), decayed(make(selector_decay=False))
    selectors = {name for name in default if '.selector.' in name}
    assert len(selectors) == 8 and without == default - selectors
    assert all(name.endswith('.weight') for name in selectors)
    copied = copy.deepcopy(make(selector_decay=False))
    assert decayed(copied) == without


@pytest.mark.parametrize('kwargs, message', [
    (dict(selector_act='prelu'), "selector_act 'prelu' has parameters"),
    (dict(selector_act='swishy'), "Unknown MoD selector_act 'swishy'"),
    (dict(selector_decay='no'), 'selector_decay must be True or False'),
])
def test_bad_selector_options_are_value_errors(kwargs, message: str) -> None:
    for build in (lambda: timm.create_model('resnet18_mod', **kwargs),
                  lambda: to_mod(timm.create_model('resnet18'), **kwargs)):
        with pytest.raises(ValueError, match=message):
            build()
