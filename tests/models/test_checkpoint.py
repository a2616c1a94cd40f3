""" Reading training checkpoints and building the model they fit."""
import argparse
import warnings
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from timm_mod import MoDBlock
from timm_mod.layers import mod_blocks
from timm_mod.models import infer_num_classes, load_checkpoint_file, model_from_checkpoint


def test_load_checkpoint_rejects_garbage(tmp_path: Path) -> None:
    (tmp_path / 'bad.pth.tar').write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='not a readable PyTorch checkpoint'):
        load_checkpoint_file(tmp_path / 'bad.pth.tar')


def test_model_from_checkpoint_infers_classes_and_keeps_the_weights(tmp_path: Path) -> None:
    source = timm.create_model('mobilenetv2_mod', num_classes=6)
    save_file(source.state_dict(), str(tmp_path / 'w.safetensors'))
    assert infer_num_classes('mobilenetv2_mod', source.state_dict()) == 6
    model, checkpoint, model_kwargs = model_from_checkpoint('mobilenetv2_mod', tmp_path / 'w.safetensors')
    assert model.num_classes == 6 and checkpoint.train_args == {}
    assert model_kwargs == next(iter(mod_blocks(source).values())).shapeless_args()  # what the weights record
    for name, tensor in source.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_unknown_model_and_missing_file_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Unknown model 'resnet18_modd'"):
        model_from_checkpoint('resnet18_modd', tmp_path / 'w.safetensors')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        model_from_checkpoint('resnet18_mod', tmp_path / 'w.safetensors')


def test_plain_model_checkpoint_loads_as_plain_or_refuses_as_mod(tmp_path: Path) -> None:
    """ `timm-mod quantize` measures plain baselines as they are (convert_plain=False); built as MoD, the plain
    weights are a named mismatch."""
    plain = timm.create_model('resnet18', num_classes=10)
    torch.save({'state_dict': plain.state_dict()}, tmp_path / 'plain.pth.tar')
    model, _, _ = model_from_checkpoint('resnet18', tmp_path / 'plain.pth.tar', convert_plain=False)
    assert type(model) is type(plain) and not any(isinstance(m, MoDBlock) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), plain.eval()(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match='a checkpoint of the plain model'):
        model_from_checkpoint('resnet18', tmp_path / 'plain.pth.tar')


def test_bare_weights_build_the_model_they_were_trained_as(tmp_path: Path) -> None:
    """ fusion and the selector options change what a model computes but no weight's shape. The weights record them:
    a bare weight file builds the trained model (same logits, no warning), and timm's own `load_checkpoint`, which
    validate.py runs on a model built from --model-kwargs alone, warns naming the arguments to pass."""
    trained = timm.create_model('resnet18_mod', num_classes=4, fusion='last', score_scaling='straight_through').eval()
    save_file(trained.state_dict(), str(tmp_path / 'w.safetensors'))
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        rebuilt, _, _ = model_from_checkpoint('resnet18_mod', tmp_path / 'w.safetensors')
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), trained(x), rtol=0, atol=0)
    stock = timm.create_model('resnet18_mod', num_classes=4)
    with pytest.warns(UserWarning, match=r"trained with fusion='last', score_scaling='straight_through', but the "
                                         r"model is built with fusion='first', score_scaling='multiply'.*"
                                         r"--model-kwargs fusion=last score_scaling=straight_through\)"):
        timm.models.load_checkpoint(stock, str(tmp_path / 'w.safetensors'))


def test_weights_saved_before_the_record_name_the_arguments_assumed(tmp_path: Path) -> None:
    """ Weights saved before timm-mod 0.4 record no arguments: a model trained with fusion='last' loads into
    fusion='first' and gives other logits. From such a bare weight file the values assumed are named (those a
    selector would use only with learned routing); given ones, or a train.py checkpoint's record, are not. Given,
    the logits are the trained model's."""
    def before_the_record(model: torch.nn.Module) -> dict:
        return {name: tensor for name, tensor in model.state_dict().items() if not name.endswith('_extra_state')}

    trained = timm.create_model('resnet18_mod', num_classes=4, fusion='last').eval()
    save_file(before_the_record(trained), str(tmp_path / 'w.safetensors'))
    with pytest.warns(UserWarning, match=r"cannot show fusion, selector_act, score_scaling, selector_gain, "
                                         r"selector_norm: assuming fusion='first', selector_act='relu', "
                                         r"score_scaling='multiply', selector_gain=1.0, selector_norm=False\."):
        assumed, _, _ = model_from_checkpoint('resnet18_mod', tmp_path / 'w.safetensors')
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(assumed.eval()(x), trained(x))
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        given, _, _ = model_from_checkpoint('resnet18_mod', tmp_path / 'w.safetensors', model_kwargs=dict(
            fusion='last', selector_act='relu', score_scaling='multiply', selector_gain=1.0, selector_norm=False))
        with torch.no_grad():
            torch.testing.assert_close(given.eval()(x), trained(x), rtol=0, atol=0)
        torch.save({'state_dict': before_the_record(trained), 'args': argparse.Namespace(
            model='resnet18_mod', model_kwargs={'fusion': 'last'})}, tmp_path / 'run.pth.tar')
        recorded, _, _ = model_from_checkpoint('resnet18_mod', tmp_path / 'run.pth.tar')
        assert recorded.layer1[1].fusion == 'last'
    random_routing = timm.create_model('resnet18_mod', num_classes=4, routing='random')
    save_file(before_the_record(random_routing), str(tmp_path / 'random.safetensors'))
    with pytest.warns(UserWarning, match=r"cannot show fusion: assuming fusion='first'\."):
        model_from_checkpoint('resnet18_mod', tmp_path / 'random.safetensors', model_kwargs={'routing': 'random'})
