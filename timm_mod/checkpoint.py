""" Weights from a training run: train.py checkpoints and safetensors files, and a model built to fit them."""
import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file
from timm.models import clean_state_dict, get_pretrained_cfg_value

from ._builder import describe_state_dict_mismatch, require_registered

__all__ = ['Checkpoint', 'load_checkpoint_file', 'infer_num_classes', 'model_from_checkpoint']


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
            f'{path} has no EMA weights (state_dict_ema); train with --model-ema, or publish without --ema.')
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
) -> Tuple[nn.Module, Checkpoint, Dict[str, Any]]:
    """ The model the checkpoint was trained as, with its weights, the checkpoint, and the model arguments.

    Model arguments are train.py's `--model-kwargs` (recorded in the checkpoint) updated by `model_kwargs`;
    `num_classes` defaults to the checkpoint's classifier. A checkpoint of another model name or another
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
    model = timm.create_model(model_name, num_classes=num_classes, **model_kwargs)
    mismatch = describe_state_dict_mismatch(model, checkpoint.state_dict)
    if mismatch:
        raise ValueError(f'The weights in {checkpoint.path} do not fit {model_name!r} {model_kwargs or ""}: {mismatch}')
    model.load_state_dict(checkpoint.state_dict)
    return model, checkpoint, model_kwargs
