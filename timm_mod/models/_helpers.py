""" Weights into MoD models, as timm's `_helpers`: train.py checkpoints and safetensors files, a model built to
fit them, and what keeps weights from fitting, named in MoD terms."""
import argparse
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file
from timm.models import clean_state_dict, get_pretrained_cfg_value

from ..layers import MoDBlock, mod_blocks
from ..layers.mod_block import SELECTOR_ARGS, SHAPELESS_ARGS, decode_shapeless_args, is_shapeless_args_record
from ._factory import create_mod_model, is_mod_model_name, require_registered

__all__ = [
    'Checkpoint', 'describe_state_dict_mismatch', 'infer_num_classes', 'load_checkpoint_file', 'load_trained_model',
    'model_from_checkpoint',
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


def describe_state_dict_mismatch(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> str:
    """ What keeps `state_dict` from loading into `model`, in MoD terms ('' when it loads strictly).

    Names MoD blocks whose width k differs (another c), selectors of another size (another r) or present
    on one side only (learned vs random routing), blocks only one side has (another depth) and a
    classifier of another size (num_classes).
    """
    # weights saved before timm-mod 0.4 record no shapeless arguments, and records of other ones load with a warning
    expected = {key: value for key, value in model.state_dict().items() if not is_shapeless_args_record(key)}
    state_dict = {key: value for key, value in state_dict.items() if not is_shapeless_args_record(key)}
    problems = []
    for name, block in model.named_modules():
        if not isinstance(block, MoDBlock):
            continue
        if len(problems) >= 3:
            break
        block_keys = [k for k in state_dict if k.startswith(f'{name}.')]
        if not block_keys:
            continue  # the whole block is missing: reported with the depth below
        if not any(k.startswith(f'{name}.block.') for k in block_keys):
            problems.append(f'{name} is a MoD block in the model, a dense block in the checkpoint: '
                            f'a checkpoint of the plain model?')
            continue
        selector = f'{name}.selector.fc1.weight'
        if selector in expected and selector in state_dict and state_dict[selector].shape[1] != block.in_channels:
            problems.append(f'MoD block {name} sees {block.in_channels} channels in the model, '
                            f'{state_dict[selector].shape[1]} in the checkpoint: another architecture')
            continue
        conv_name, conv = next((n, m) for n, m in block.block.named_modules() if isinstance(m, nn.Conv2d))
        slim_weight = state_dict.get(f'{name}.block.{conv_name}.weight')
        if slim_weight is not None and slim_weight.shape != conv.weight.shape:
            k_checkpoint = slim_weight.shape[0] if conv.groups > 1 else slim_weight.shape[1]  # depthwise: k filters
            problems.append(
                f'MoD block {name} processes k={block.k} channels of {block.in_channels} (c={block.c}) but the '
                f'checkpoint has k={k_checkpoint} (c={block.in_channels // k_checkpoint}): another c')
        if (selector in expected) != (selector in state_dict):
            routing = 'learned' if selector in state_dict else 'random or fixed'
            problems.append(f'MoD block {name}: the checkpoint has {routing} routing, the model {block.routing}')
        elif selector in expected and expected[selector].shape != state_dict[selector].shape:
            problems.append(f'MoD block {name}: the selector is {tuple(state_dict[selector].shape)} in the checkpoint, '
                            f'{tuple(expected[selector].shape)} in the model: another r')

    def blocks(keys) -> Set[str]:
        """ Module path up to the block index: 'layer3.7', 'blocks.2.1', 'conv1'."""
        names = set()
        for key in keys:
            parts = key.split('.')
            end = 1
            while end < len(parts) - 1 and parts[end].isdigit():
                end += 1
            names.add('.'.join(parts[:end]))
        return names

    def natural(names: Set[str]) -> List[str]:
        return sorted(names, key=lambda n: [int(p) if p.isdigit() else p for p in n.split('.')])

    only_model = natural(blocks(expected) - blocks(state_dict))
    only_checkpoint = natural(blocks(state_dict) - blocks(expected))
    if only_model:
        problems.append(f'the checkpoint lacks {", ".join(only_model[:6])}: a shallower or other architecture')
    if only_checkpoint:
        problems.append(
            f'the checkpoint has {", ".join(only_checkpoint[:6])} the model lacks: a deeper or other architecture')
    classifier = model.pretrained_cfg.get('classifier')
    weight = f'{classifier}.weight'
    if weight in expected and weight in state_dict and expected[weight].shape != state_dict[weight].shape:
        problems.append(f'the classifier has {state_dict[weight].shape[0]} classes in the checkpoint, '
                        f'{expected[weight].shape[0]} in the model: pass num_classes={state_dict[weight].shape[0]}')
    routed = natural({key.split('.selector.')[0] for key in state_dict if '.selector.' in key}
                     - {name for name, block in model.named_modules() if isinstance(block, MoDBlock)})
    if routed:
        problems.append(f'{", ".join(routed[:4])} {"is a MoD block" if len(routed) == 1 else "are MoD blocks"} in the '
                        f'checkpoint, dense in the model: a checkpoint of the MoD model?')
    if not problems and set(expected) != set(state_dict):
        missing, extra = natural(set(expected) - set(state_dict)), natural(set(state_dict) - set(expected))
        problems.append(f'{len(missing)} weights missing ({", ".join(missing[:3])}), {len(extra)} unknown '
                        f'({", ".join(extra[:3])})')
    if not problems:
        shapes = [k for k in expected if k in state_dict and expected[k].shape != state_dict[k].shape]
        if shapes:
            first = shapes[0]
            problems.append(f'{len(shapes)} tensors differ in shape, first {first}: {tuple(state_dict[first].shape)} '
                            f'in the checkpoint, {tuple(expected[first].shape)} in the model')
    return '; '.join(problems)


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
    builds_mod = convert_plain or is_mod_model_name(model_name)
    recorded = recorded_shapeless_args(checkpoint.state_dict) if builds_mod else {}
    model_kwargs = {**recorded, **(checkpoint.train_args.get('model_kwargs') or {}), **(model_kwargs or {})}
    if num_classes is None:
        num_classes = infer_num_classes(model_name, checkpoint.state_dict)
    build = create_mod_model if convert_plain else timm.create_model
    model = build(model_name, num_classes=num_classes, **model_kwargs)
    mismatch = describe_state_dict_mismatch(model, checkpoint.state_dict)
    if mismatch:
        raise ValueError(f'The weights in {checkpoint.path} do not fit {model_name!r} {model_kwargs or ""}: {mismatch}')
    model.load_state_dict(checkpoint.state_dict)
    _warn_of_assumed_args(model, checkpoint, model_kwargs, recorded)
    return model, checkpoint, model_kwargs


def recorded_shapeless_args(state_dict: Dict[str, torch.Tensor]) -> Dict[str, Any]:
    """ The shapeless MoD arguments weights were trained with, from their first MoD block's record ({} for a plain
    model and for weights saved before timm-mod 0.4, which record none)."""
    record = next((value for key, value in state_dict.items() if is_shapeless_args_record(key)), None)
    return {} if record is None else decode_shapeless_args(record)


def _warn_of_assumed_args(model: nn.Module, checkpoint: Checkpoint, model_kwargs: Dict[str, Any],
                          recorded: Dict[str, Any]) -> None:
    """ A bare weight file saved before timm-mod 0.4 records no model arguments (`recorded` is empty), and some MoD
    arguments change no weight's shape: a model trained with fusion='last' loads into fusion='first' without an
    error and computes something else. Say which values were assumed, and how to give others."""
    blocks = list(mod_blocks(model).values())
    if recorded or checkpoint.train_args or not blocks:
        return
    args = blocks[0].args
    # a selector in the weights shows learned routing; without one they cannot tell random from fixed routing, and
    # the selector's arguments mean nothing
    not_in_doubt = ('routing',) if args.routing == 'learned' else SELECTOR_ARGS
    unseen = [name for name in SHAPELESS_ARGS if name not in model_kwargs and name not in not_in_doubt]
    if unseen:
        assumed = ', '.join(f'{name}={getattr(args, name)!r}' for name in unseen)
        warnings.warn(
            f'{checkpoint.path} records no model arguments, and its weights cannot show {", ".join(unseen)}: '
            f'assuming {assumed}. If the model was trained otherwise, give them as model arguments '
            f'(--model-kwargs {unseen[0]}=...); a train.py checkpoint records them.', UserWarning, stacklevel=3)


def load_trained_model(model_name: str, checkpoint: Optional[Path] = None, num_classes: Optional[int] = None,
                       convert_plain: bool = True, use_ema: bool = False,
                       model_kwargs: Optional[Dict[str, Any]] = None):
    """ A model to analyse (registered name, a plain timm name converted by `to_mod` unless `convert_plain` is
    False, `hf-hub:` or `local-dir:`), and train.py's args for its data; `model_kwargs` update the recorded ones."""
    model_kwargs = model_kwargs or {}
    if model_name.split(':')[0] in ('hf-hub', 'local-dir'):
        return timm.create_model(model_name, pretrained=True, **model_kwargs).eval(), {}
    if checkpoint is None:
        build = create_mod_model if convert_plain else timm.create_model
        return build(model_name, num_classes=num_classes or 1000, **model_kwargs).eval(), {}
    model, weights, _ = model_from_checkpoint(model_name, checkpoint, num_classes=num_classes,
                                              model_kwargs=model_kwargs, convert_plain=convert_plain, use_ema=use_ema)
    return model.eval(), weights.train_args
