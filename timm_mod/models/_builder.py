""" Model building shared by the MoD families: timm's builder, the published-weight tags, and clear errors
for missing weights and for weights that do not fit (named in MoD terms: another c, r, routing or depth)."""
from dataclasses import fields
from typing import Any, Dict, List, Optional, Set, Type, TypeVar

import timm
import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, resolve_pretrained_cfg
from timm.models._builder import _resolve_pretrained_source

from ..layers import ModArgs, MoDBlock
from ._family import to_mod

ModelT = TypeVar('ModelT', bound=nn.Module)

PAPER_ID = 'arXiv:2409.17016'


def mod_cfg(**kwargs: Any) -> Dict[str, Any]:
    """ ImageNet defaults of the paper's recipe (paper Appendix A.1); no weight source until weights exist."""
    return {
        'num_classes': 1000, 'input_size': (3, 224, 224), 'pool_size': (7, 7),
        'crop_pct': 0.875, 'interpolation': 'bilinear',
        'mean': IMAGENET_DEFAULT_MEAN, 'std': IMAGENET_DEFAULT_STD,
        'paper_ids': PAPER_ID, 'license': 'apache-2.0',
        **kwargs,
    }


# Published weights, 'model.tag' -> Hugging Face Hub repo id. Only real, uploaded weights belong here:
# each entry becomes a pretrained tag (timm.list_pretrained, create_model('resnet75_mod.in1k', pretrained=True)).
PUBLISHED_WEIGHTS: Dict[str, str] = {}


def mod_default_cfgs(
        cfgs: Dict[str, Dict[str, Any]],
        published: Optional[Dict[str, str]] = None,
) -> Dict[str, Dict[str, Any]]:
    """ The untagged cfg of every model, plus one tagged cfg with its Hub id per published weight set."""
    published = PUBLISHED_WEIGHTS if published is None else published
    tagged = {
        name_tag: dict(cfgs[name_tag.split('.')[0]], hf_hub_id=hub_id)
        for name_tag, hub_id in published.items() if name_tag.split('.')[0] in cfgs
    }
    return {**cfgs, **tagged}


def require_registered(model_name: str) -> str:
    """ The name, or a clear error for a model timm does not know (a typo, or timm-mod not imported)."""
    if not timm.is_model(model_name):
        raise ValueError(f'Unknown model {model_name!r}; `timm-mod list` shows the MoD zoo, timm.list_models() all.')
    return model_name


def is_mod_model_name(model_name: str) -> bool:
    """ Whether timm-mod registered this model (as opposed to a plain timm model)."""
    from timm.models import model_entrypoint
    return model_entrypoint(require_registered(model_name)).__module__.startswith('timm_mod.')


def create_mod_model(model_name: str, **kwargs: Any) -> nn.Module:
    """ `timm.create_model` for a registered MoD model; any other timm model of a supported family comes
    converted by `to_mod`, with the MoD arguments (`ModArgs`) taken from kwargs as the registered models take
    them, and the rest (pretrained, num_classes, ...) going to `timm.create_model`."""
    if is_mod_model_name(model_name):
        return timm.create_model(model_name, **kwargs)
    mod_args = {name: kwargs.pop(name) for name in (f.name for f in fields(ModArgs)) if name in kwargs}
    return to_mod(timm.create_model(model_name, **kwargs), **mod_args)


def require_weight_source(variant: str, pretrained_cfg: Optional[Dict], pretrained_cfg_overlay: Optional[Dict]) -> None:
    """ Fail before building when `pretrained=True` has nothing to load, saying how to give weights."""
    cfg = resolve_pretrained_cfg(variant, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=pretrained_cfg_overlay)
    load_from, _ = _resolve_pretrained_source(cfg.to_dict())
    if not load_from:
        raise RuntimeError(
            f'No pretrained weights are published for {variant!r} yet, so pretrained=True has nothing to load. '
            f'Give a weight source: timm.create_model({variant!r}, pretrained=True, '
            f'pretrained_cfg_overlay=dict(file="path/to/model.safetensors or checkpoint.pth.tar")), '
            f'timm.create_model("local-dir:/path/to/folder", pretrained=True), '
            f'or timm.create_model("hf-hub:ORG/NAME", pretrained=True); or use pretrained=False for random init.')


def describe_state_dict_mismatch(model: nn.Module, state_dict: Dict[str, torch.Tensor]) -> str:
    """ What keeps `state_dict` from loading into `model`, in MoD terms ('' when it loads strictly).

    Names MoD blocks whose width k differs (another c), selectors of another size (another r) or present
    on one side only (learned vs random routing), blocks only one side has (another depth) and a
    classifier of another size (num_classes).
    """
    expected = model.state_dict()
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
            routing = 'learned' if selector in state_dict else 'random'
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


def build_mod_model(
        model_cls: Type[ModelT],
        variant: str,
        pretrained: bool = False,
        **kwargs: Any,
) -> ModelT:
    """ `build_model_with_cfg`, with clear errors for a missing weight source and for weights that do not fit."""
    if not pretrained:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    require_weight_source(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    try:
        return build_model_with_cfg(model_cls, variant, pretrained, **kwargs)
    except RuntimeError as error:
        if 'Error(s) in loading state_dict' not in str(error):
            raise
        location, state_dict = _pretrained_state_dict(variant, kwargs)
        model = build_model_with_cfg(model_cls, variant, False, **kwargs)
        detail = describe_state_dict_mismatch(model, state_dict) if isinstance(model, nn.Module) else ''
        raise RuntimeError(
            f'The weights from {location} do not fit {variant!r}: '
            f'{detail or str(error)[:600]}. Create the model the weights were trained as.') from error


def _pretrained_state_dict(variant: str, kwargs: Dict[str, Any]):
    """ The state dict timm tried to load (an error path only: the weights are read a second time)."""
    from timm.models import load_state_dict
    from timm.models._hub import load_state_dict_from_hf, load_state_dict_from_path
    cfg = resolve_pretrained_cfg(
        variant,
        pretrained_cfg=kwargs.get('pretrained_cfg'),
        pretrained_cfg_overlay=kwargs.get('pretrained_cfg_overlay'),
    )
    load_from, location = _resolve_pretrained_source(cfg.to_dict())
    if load_from == 'state_dict':
        return 'the given state dict', location
    if load_from == 'file':
        return location, load_state_dict(location)
    if load_from == 'local-dir':
        return location, load_state_dict_from_path(location)
    if isinstance(location, tuple):  # (hub id, file name)
        return f'hf-hub:{location[0]}', load_state_dict_from_hf(*location)
    return f'hf-hub:{location}', load_state_dict_from_hf(location)
