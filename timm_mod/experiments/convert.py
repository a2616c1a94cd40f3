""" A MoD model from a trained plain one (`timm-mod convert`): the plain counterpart of a registered MoD model,
its weights converted by `to_mod` and saved as an `--initial-checkpoint` for train.py."""
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import timm
import torch
import torch.nn as nn
from safetensors.torch import save_file

from ..layers import mod_blocks
from ..models import OUR_MODELS, infer_num_classes, is_mod_model_name, load_checkpoint_file, to_mod
from ..utils.output import staged_output

__all__ = ['convert_plain_weights', 'mod_from_plain', 'plain_counterpart']


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
