""" The zoo as data: the paper's published rows (Tables 1, 2 and 5-10 of the paper), our models beyond the paper,
and measured params / MACs.

Params and MACs are measured on the meta device, so describing even ResNet152-MoD allocates no weights.
MACs are `torch.utils.flop_counter` FLOPs / 2 (convolutions and matmuls only); the paper's counter also
counts other layers, so MACs are compared as a ratio to the same counter's baseline.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from ..layers import mod_blocks
from ._family import find_family

__all__ = [
    'PaperModel', 'PAPER_MODELS', 'PAPER_BASELINE_GMACS', 'OUR_MODELS', 'ZooRow', 'ZOO_COLUMNS',
    'baseline_of', 'count_params_and_macs', 'measure', 'describe_zoo', 'zoo_table_rows',
]


@dataclass(frozen=True)
class PaperModel:
    """ One model as the paper publishes it."""
    paper_name: str
    depths: Tuple[int, ...]
    params: str  # millions, as printed, so the published precision is kept
    gmacs: float
    baseline: str  # the timm model the paper compares it with (MAC ratio, speed-up)
    top1: str = '-'  # ImageNet top-1 (%), as printed
    cpu_ms: str = '-'  # inference latency on the paper's i7-10850H CPU
    gpu_ms: str = '-'  # and on its Quadro RTX 3000 GPU
    cpu_speedup: str = '-'  # over the baseline, as printed
    gpu_speedup: str = '-'


PAPER_BASELINE_GMACS: Dict[str, float] = {
    'resnet18': 1.82, 'resnet34': 3.68, 'resnet50': 4.13, 'resnet101': 7.80, 'mobilenetv2_100': 0.32036,
}

PAPER_MODELS: Dict[str, PaperModel] = {
    'resnet18_mod': PaperModel(
        'ResNet18-MoD', (2, 2, 2, 2), '5.46', 0.89, 'resnet18', top1='64.05', cpu_ms='33.63', gpu_ms='0.47',
        cpu_speedup='1.60', gpu_speedup='1.58'),
    'resnet26_mod': PaperModel(
        'ResNet26-MoD', (2, 2, 3, 4), '11.4', 1.36, 'resnet18', top1='69.53', cpu_ms='42.16', gpu_ms='0.58',
        cpu_speedup='1.28', gpu_speedup='1.28'),
    'resnet34_mod': PaperModel(
        'ResNet34-MoD', (3, 4, 6, 3), '12.93', 2.06, 'resnet34', top1='71.44', cpu_ms='60.79', gpu_ms='0.83',
        cpu_speedup='1.63', gpu_speedup='1.53'),
    'resnet42_mod': PaperModel(
        'ResNet42-MoD', (3, 3, 6, 6), '17.72', 2.29, 'resnet34', top1='72.03', cpu_ms='64.01', gpu_ms='0.88',
        cpu_speedup='1.54', gpu_speedup='1.45'),
    'resnet50_mod': PaperModel(
        'ResNet50-MoD', (3, 4, 6, 3), '18.11', 2.60, 'resnet50', top1='74.79', cpu_ms='108.74', gpu_ms='1.75',
        cpu_speedup='1.48', gpu_speedup='1.44'),
    'resnet75_mod': PaperModel(
        'ResNet75-MoD', (3, 4, 14, 3), '23.10', 3.48, 'resnet50', top1='76.27 +- 0.07', cpu_ms='128.90', gpu_ms='2.19',
        cpu_speedup='1.25', gpu_speedup='1.15'),
    'resnet86_mod': PaperModel(
        'ResNet86-MoD', (3, 4, 18, 3), '25.60', 3.92, 'resnet50', top1='76.72 +- 0.04', cpu_ms='150.96', gpu_ms='2.40',
        cpu_speedup='1.06', gpu_speedup='1.05'),
    'resnet101_mod': PaperModel(
        'ResNet101-MoD', (3, 4, 23, 3), '29.21', 4.58, 'resnet101', top1='77.08 +- 0.08', cpu_ms='162.03',
        gpu_ms='2.73',
        cpu_speedup='1.55', gpu_speedup='1.57'),
    'resnet152_mod': PaperModel(
        'ResNet152-MoD', (3, 8, 36, 3), '37.46', 6.34, 'resnet101', top1='77.81 +- 0.05', cpu_ms='208.80',
        gpu_ms='3.82',
        cpu_speedup='1.20', gpu_speedup='1.12'),
    'resnet50_mod_rand': PaperModel(
        'MoD50 rand.', (3, 4, 6, 3), '17.11', 2.59, 'resnet50', top1='74.02', cpu_ms='100.06', gpu_ms='1.43',
        cpu_speedup='1.77', gpu_speedup='1.43'),
    'resnet50_mod_lk': PaperModel(
        'R50-MoD-lk', (3, 4, 6, 3), '18.11', 2.60, 'resnet50', top1='74.57'),
    'resnet75_mod_lk': PaperModel(
        'R75-MoD-lk', (3, 4, 14, 3), '23.10', 3.48, 'resnet50', top1='76.22'),
    'resnet86_mod_lk': PaperModel(
        'R86-MoD-lk', (3, 4, 18, 3), '25.60', 3.92, 'resnet50', top1='76.64'),
    'mobilenetv2_mod': PaperModel(
        'MobileNetV2-MoD', (1, 2, 3, 4, 3, 3, 1), '2.94', 0.22056, 'mobilenetv2_100',
        top1='69.34', cpu_ms='33.43', gpu_ms='0.56',
        cpu_speedup='1.43', gpu_speedup='1.39'),
    'mobilenetv2_mod_l': PaperModel(
        'MobileNetV2-MoD-L', (1, 2, 3, 4, 3, 3, 1), '3.34', 0.34476, 'mobilenetv2_100',
        top1='71.55', cpu_ms='42.94', gpu_ms='0.71',
        cpu_speedup='1.11', gpu_speedup='1.10'),
}


# Ours, not the paper's: MoD on timm models the paper names as possible but never built, each with the
# plain timm model it is made from (and compared with). Their c is `to_mod`'s default for that model.
OUR_MODELS: Dict[str, str] = {
    'convnext_nano_mod': 'convnext_nano',
    'convnext_tiny_mod': 'convnext_tiny',
    'efficientnet_b0_mod': 'efficientnet_b0',
    'regnety_016_mod': 'regnety_016',
    'resnet50d_mod': 'resnet50d',
    'seresnext50_32x4d_mod': 'seresnext50_32x4d',
}


def baseline_of(model_name: str) -> str:
    """ The plain timm model a MoD model is compared with: the paper's comparison model, or the model ours is
    made from; a plain model name (converted with `to_mod`) is its own baseline."""
    if model_name in PAPER_MODELS:
        return PAPER_MODELS[model_name].baseline
    if model_name in OUR_MODELS:
        return OUR_MODELS[model_name]
    plain = model_name.split('.')[0].removesuffix('_mod')
    if not timm.is_model(plain):
        raise ValueError(f'No plain timm model to compare {model_name!r} with ({plain!r} is not a timm model); '
                         f'name the baseline explicitly.')
    return plain


def count_params_and_macs(model_name: str, **kwargs) -> Tuple[int, float]:
    """ Parameter count and MACs of one image at the model's default input size, without allocating weights."""
    return measure(timm.create_model(model_name, device='meta', **kwargs))


def measure(model: torch.nn.Module, input_size: Optional[Tuple[int, ...]] = None) -> Tuple[int, float]:
    """ Parameter count and MACs of one image (default: the model's input size), on any device, meta included."""
    model.eval()
    device = next(model.parameters()).device
    num_params = sum(p.numel() for p in model.parameters())
    input_size = input_size or model.pretrained_cfg['input_size']
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(1, *input_size, device=device))
    return num_params, counter.get_total_flops() / 2


@dataclass(frozen=True)
class ZooRow:
    """ One registered MoD model, measured, beside its baseline and its published row when the paper has one."""
    name: str
    paper: Optional[PaperModel]
    baseline: str
    depths: Tuple[int, ...]
    c: int
    params: int
    macs: float
    params_ratio: float  # relative to the baseline
    mac_ratio: float  # relative to the baseline, same counter

    @property
    def paper_mac_ratio(self) -> Optional[float]:
        return None if self.paper is None else self.paper.gmacs / PAPER_BASELINE_GMACS[self.paper.baseline]


def describe_zoo(pattern: str = '*_mod*') -> List[ZooRow]:
    """ Every registered model matching `pattern` that has MoD blocks, measured beside its baseline."""
    baselines: Dict[str, Tuple[int, float]] = {}
    rows = []
    for name in timm.list_models(pattern):
        model = timm.create_model(name, device='meta')
        blocks = list(mod_blocks(model).values())
        if not blocks:
            continue
        params, macs = measure(model)
        baseline = baseline_of(name)
        if baseline not in baselines:
            baselines[baseline] = count_params_and_macs(baseline)
        depths = tuple(len(list(stage.children())) for stage in find_family(model).stages(model))
        rows.append(ZooRow(
            name, PAPER_MODELS.get(name), baseline, depths, blocks[0].c, params, macs,
            params / baselines[baseline][0], macs / baselines[baseline][1]))
    if not rows:
        raise ValueError(f'no model matches {pattern!r} in the MoD zoo; the filter is a timm.list_models pattern, '
                         f'so add wildcards, e.g. {"*" + pattern.strip("*") + "*_mod*"!r}.')
    return rows


ZOO_COLUMNS = ('model', 'paper name', 'depths', 'c', 'params (M)', 'paper params (M)', 'params / baseline', 'GMACs',
               'MACs / baseline', 'paper MACs / baseline')


def zoo_table_rows(rows: List[ZooRow]) -> List[Tuple[str, ...]]:
    """ The zoo as strings, one tuple per model in `ZOO_COLUMNS` order; 'ours' marks models not in the paper."""
    def ratio(value: Optional[float], baseline: str) -> str:
        return '-' if value is None else f'{value:.3f} ({baseline})'

    return [(
        row.name,
        'ours (not in the paper)' if row.paper is None else row.paper.paper_name,
        ','.join(map(str, row.depths)),
        str(row.c),
        f'{row.params / 1e6:.2f}',
        '-' if row.paper is None else row.paper.params,
        ratio(row.params_ratio, row.baseline),
        f'{row.macs / 1e9:.3f}',
        ratio(row.mac_ratio, row.baseline),
        ratio(row.paper_mac_ratio, row.baseline),
    ) for row in rows]
