""" Weights from a training run: train.py checkpoints and safetensors files, and a model built to fit them."""
import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from timm.models import clean_state_dict, get_pretrained_cfg_value

from ..layers import mod_blocks
from ..utils.output import staged_output
from ._builder import create_mod_model, describe_state_dict_mismatch, is_mod_model_name, require_registered
from ._family import to_mod
from .zoo import OUR_MODELS

__all__ = [
    'Checkpoint', 'load_checkpoint_file', 'infer_num_classes', 'model_from_checkpoint', 'plain_counterpart',
    'mod_from_plain', 'convert_plain_weights', 'load_trained_model',
]


@dataclass
class Checkpoint:
    """ Weights from a training run, and what train.py recorded about it (empty for bare weight files)."""
    path: Path
    state_dict: Dict[str, torch.Tensor]
    train_args: Dict[str, Any] = field(default_factory=dict)
    epoch: Optional[int] = None
    metric: Optional[float] = None


def load_checkpoint_file(path: Path, use_ema: bool = False) -> Checkpoint:
    """ A `.safetensors` file or a train.py checkpoint (`state_dict`, or `state_dict_ema` with `use_ema`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'Checkpoint {path} does not exist.')
    if path.suffix == '.safetensors':
        if use_ema:
            raise ValueError(f'{path} is a bare safetensors weight file; it holds no separate EMA weights.')
        try:
            return Checkpoint(path, load_file(str(path)))
        except Exception as error:
            raise ValueError(f'{path} is not a readable safetensors file ({error}); is it complete?') from error
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            checkpoint = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as error:
        raise ValueError(f'{path} is not a readable PyTorch checkpoint ({error}); is it complete?') from error
    if not isinstance(checkpoint, dict):
        raise ValueError(f'{path} holds a {type(checkpoint).__name__}, not a state dict or a train.py checkpoint.')
    key = 'state_dict_ema' if use_ema else 'state_dict'
    if use_ema and key not in checkpoint:
        raise ValueError(
            f'{path} has no EMA weights (state_dict_ema); train with --model-ema, or leave out --ema.')
    state_dict = checkpoint.get(key, checkpoint)
    args = checkpoint.get('args')
    return Checkpoint(
        path,
        clean_state_dict(state_dict),
        train_args=vars(args) if isinstance(args, argparse.Namespace) else {},
        epoch=checkpoint.get('epoch'),
        metric=checkpoint.get('metric'),
    )


def infer_num_classes(model_name: str, state_dict: Dict[str, torch.Tensor]) -> int:
    """ Classes of the checkpoint's classifier (0 when it was saved without one)."""
    classifier = get_pretrained_cfg_value(model_name, 'classifier') or 'fc'
    weight = state_dict.get(f'{classifier}.weight')
    return 0 if weight is None else weight.shape[0]


def model_from_checkpoint(
        model_name: str,
        checkpoint_path: Path,
        num_classes: Optional[int] = None,
        model_kwargs: Optional[Dict[str, Any]] = None,
        use_ema: bool = False,
        convert_plain: bool = True,
) -> Tuple[nn.Module, Checkpoint, Dict[str, Any]]:
    """ The model the checkpoint was trained as, with its weights, the checkpoint, and the model arguments.

    Model arguments are train.py's `--model-kwargs` (recorded in the checkpoint) updated by `model_kwargs`;
    `num_classes` defaults to the checkpoint's classifier. A plain timm model name is built as its MoD version
    (`create_mod_model`) unless `convert_plain` is False. A checkpoint of another model name or another
    configuration is a clear error naming the difference.
    """
    require_registered(model_name)
    checkpoint = load_checkpoint_file(checkpoint_path, use_ema=use_ema)
    trained_as = checkpoint.train_args.get('model')
    if trained_as and trained_as != model_name:
        raise ValueError(
            f'{checkpoint.path} was trained as {trained_as!r}, not {model_name!r}; use --model {trained_as}.')
    model_kwargs = {**(checkpoint.train_args.get('model_kwargs') or {}), **(model_kwargs or {})}
    if num_classes is None:
        num_classes = infer_num_classes(model_name, checkpoint.state_dict)
    build = create_mod_model if convert_plain else timm.create_model
    model = build(model_name, num_classes=num_classes, **model_kwargs)
    mismatch = describe_state_dict_mismatch(model, checkpoint.state_dict)
    if mismatch:
        raise ValueError(f'The weights in {checkpoint.path} do not fit {model_name!r} {model_kwargs or ""}: {mismatch}')
    model.load_state_dict(checkpoint.state_dict)
    return model, checkpoint, model_kwargs


def plain_counterpart(mod_name: str) -> str:
    """ The plain timm model whose weights fit a registered MoD model: the same model without MoD.

    Found by building both on the meta device and comparing every tensor outside the MoD blocks, so
    ResNet75-MoD (no ResNet75 in timm) or ResNet26-MoD (timm's resnet26 is another network) say so.
    """
    if not is_mod_model_name(mod_name):
        raise ValueError(f'{mod_name!r} is not a MoD model; name the MoD model to convert to, e.g. '
                         f'{mod_name.split(".")[0]}_mod (`timm-mod list`).')
    base = mod_name.split('_mod')[0]
    candidates = [name for name in dict.fromkeys((OUR_MODELS.get(mod_name), base, f'{base}_100'))
                  if name and timm.is_model(name)]
    for name in candidates:
        try:
            mod_from_plain(mod_name, timm.create_model(name, device='meta'))
        except ValueError:
            continue
        return name
    raise ValueError(
        f'{mod_name!r} has no plain timm counterpart with the same layers outside MoD '
        f'(tried {", ".join(candidates) or base}), so no plain weights fit it; train it from scratch.')


def mod_from_plain(mod_name: str, plain: nn.Module) -> nn.Module:
    """ `to_mod` of a plain model with the registered MoD model's own MoD arguments, checked to have
    exactly the registered model's tensors (a clear error otherwise)."""
    reference = timm.create_model(mod_name, device='meta', num_classes=plain.num_classes)
    block = next(iter(mod_blocks(reference).values()))
    converted = to_mod(plain, **asdict(block.args))
    expected = {key: value.shape for key, value in reference.state_dict().items()}
    actual = {key: value.shape for key, value in converted.state_dict().items()}
    if expected != actual:
        differing = sorted(set(expected.items()) ^ set(actual.items()))[:3]
        raise ValueError(f'to_mod({type(plain).__name__}) does not give {mod_name!r}: {differing} differ')
    return converted


def convert_plain_weights(
        mod_name: str,
        output: Path,
        checkpoint_path: Optional[Path] = None,
        pretrained: bool = False,
        overwrite: bool = False,
        use_ema: bool = False,
) -> Path:
    """ An `--initial-checkpoint` for train.py: the plain counterpart's trained weights in the MoD model.

    The plain model is built with timm's pretrained weights or loaded from a checkpoint of it, converted by
    `to_mod` (its kept blocks, stem and head unchanged, MoD blocks freshly initialised) and saved as a state
    dict that `timm.models.load_checkpoint` loads strictly into `mod_name`.
    """
    output = Path(output)
    if output.is_dir():
        raise ValueError(f'--output {output} is a folder; name the file to write, e.g. {output / mod_name}.pth.')
    if checkpoint_path is not None and output.resolve() == Path(checkpoint_path).resolve():
        raise ValueError(f'--output {output} is the --checkpoint it converts; name a new file, e.g. '
                         f'{output.with_name(f"{mod_name}_converted{output.suffix}")}.')
    if output.exists() and not overwrite:
        raise FileExistsError(f'{output} exists; choose another --output or pass --overwrite.')
    if (checkpoint_path is None) == (not pretrained):
        raise ValueError('Give the plain weights either as --checkpoint FILE or as --pretrained (timm\'s own).')
    plain_name = plain_counterpart(mod_name)
    if pretrained:
        plain = timm.create_model(plain_name, pretrained=True)
    else:
        checkpoint = load_checkpoint_file(checkpoint_path, use_ema=use_ema)
        plain = timm.create_model(plain_name, num_classes=infer_num_classes(plain_name, checkpoint.state_dict))
        try:
            plain.load_state_dict(checkpoint.state_dict)
        except RuntimeError as error:
            raise ValueError(f'{checkpoint_path} is not a checkpoint of {plain_name!r}, the plain counterpart of '
                             f'{mod_name!r}: {str(error)[:400]}') from error
    state_dict = mod_from_plain(mod_name, plain).state_dict()
    with staged_output(output) as staged:
        if output.suffix == '.safetensors':
            save_file(state_dict, str(staged))
        else:
            torch.save(state_dict, staged)
    return output


def load_trained_model(model_name: str, checkpoint: Optional[Path] = None, num_classes: Optional[int] = None,
                       convert_plain: bool = True, use_ema: bool = False):
    """ A model to analyse (registered name, a plain timm name converted by `to_mod` unless `convert_plain` is
    False, `hf-hub:` or `local-dir:`), and train.py's args for its data."""
    if model_name.split(':')[0] in ('hf-hub', 'local-dir'):
        return timm.create_model(model_name, pretrained=True).eval(), {}
    if checkpoint is None:
        build = create_mod_model if convert_plain else timm.create_model
        return build(model_name, num_classes=num_classes or 1000).eval(), {}
    model, weights, _ = model_from_checkpoint(model_name, checkpoint, num_classes=num_classes,
                                              convert_plain=convert_plain, use_ema=use_ema)
    return model.eval(), weights.train_args
