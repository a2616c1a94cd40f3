""" Where a MoD model's time goes: the MoD blocks' share of the forward (selectors, slim blocks, top-k + gather +
fusion), and the operators where it spends more than its identity bound, in PyTorch's profiler or a runtime's."""
import itertools
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence

import torch
import torch.nn as nn

from ..layers import MoDBlock
from ..models import create_mod_model
from ..utils.output import scratch_folder
from .runtimes import RUNTIMES, runtime_operator_times
from ..utils.tables import format_table
from ..utils.timing import cpu_threads
from .benchmark import BenchSetting, benchmark_input, identity_bound, make_step, runtime_export

__all__ = [
    'MoDTimeShare', 'check_time_share_setting', 'mod_time_share', 'time_shares', 'format_time_share', 'OperatorGap',
    'profile_gap', 'format_profile_gap',
]


@dataclass(frozen=True)
class MoDTimeShare:
    """ Where a MoD model's forward pass spends its time; milliseconds per forward."""
    model: str
    setting: str
    forward_ms: float
    mod_blocks_ms: float
    selectors_ms: float
    slim_blocks_ms: float

    @property
    def routing_and_fusion_ms(self) -> float:
        """ The rest of the MoD blocks: top-k, gather, scale and fuse (and the timing hooks' own cost)."""
        return self.mod_blocks_ms - self.selectors_ms - self.slim_blocks_ms


def check_time_share_setting(setting: BenchSetting) -> None:
    """ Refuse a setting whose time forward hooks cannot read (asynchronous CUDA kernels, a compiled graph)."""
    if setting.device != 'cpu' or setting.mode != 'eager' or setting.task != 'inference':
        raise ValueError(f'The MoD time share is measured for eager CPU inference only, not {setting.label}; '
                         f'drop --breakdown or run --device cpu --mode eager --task inference.')


def mod_time_share(model_name: str, setting: BenchSetting, repeats: int = 20) -> MoDTimeShare:
    """ Time each MoD block's selector, slim block and remainder inside the whole model's forward.

    Eager CPU inference only (`check_time_share_setting`): forward hooks read the wall clock around each part.
    The hooks add a few microseconds per MoD block.
    """
    check_time_share_setting(setting)
    model = create_mod_model(model_name)
    totals = {'mod': 0.0, 'selector': 0.0, 'slim': 0.0}
    started: Dict[str, float] = {}

    def timed(module: nn.Module, part: str) -> None:
        module.register_forward_pre_hook(lambda *_: started.__setitem__(part, time.perf_counter()))
        module.register_forward_hook(
            lambda *_: totals.__setitem__(part, totals[part] + time.perf_counter() - started[part]))

    for block in model.modules():
        if isinstance(block, MoDBlock):
            timed(block, 'mod')
            timed(block.block, 'slim')
            if block.selector is not None:
                timed(block.selector, 'selector')
    step = make_step(model, setting)
    with cpu_threads(setting.threads):
        for _ in range(3):
            step()
        totals.update(dict.fromkeys(totals, 0.0))
        start = time.perf_counter()
        for _ in range(repeats):
            step()
        forward = time.perf_counter() - start
    per_forward = {part: 1e3 * total / repeats for part, total in totals.items()}
    return MoDTimeShare(model_name, setting.label, 1e3 * forward / repeats, per_forward['mod'],
                        per_forward['selector'], per_forward['slim'])


def time_shares(model_names: Sequence[str], settings: Sequence[BenchSetting], progress: bool = True
                ) -> List[MoDTimeShare]:
    """ `mod_time_share` for every model under every setting; all settings are checked before any timing."""
    for setting in settings:
        check_time_share_setting(setting)
    runs = list(itertools.product(model_names, settings))
    shares = []
    for index, (model_name, setting) in enumerate(runs, 1):
        if progress:
            print(f'[breakdown {index}/{len(runs)}] {model_name} {setting.label}', file=sys.stderr, flush=True)
        shares.append(mod_time_share(model_name, setting))
    return shares


def format_time_share(share: MoDTimeShare) -> str:
    percent = {name: f'{100 * ms / share.forward_ms:.1f} %' for name, ms in (
        ('mod', share.mod_blocks_ms), ('selector', share.selectors_ms), ('slim', share.slim_blocks_ms),
        ('rest', share.routing_and_fusion_ms))}
    return (f'{share.model} {share.setting}: MoD blocks {share.mod_blocks_ms:.2f} of {share.forward_ms:.2f} ms '
            f'({percent["mod"]}): selectors {percent["selector"]}, slim blocks {percent["slim"]}, '
            f'top-k + gather + fusion {percent["rest"]}')


@dataclass(frozen=True)
class OperatorGap:
    """ One operator's time per step in a MoD model and in its identity bound (ms; device time on CUDA)."""
    operator: str
    mod_ms: float
    identity_ms: float

    @property
    def extra_ms(self) -> float:
        return self.mod_ms - self.identity_ms


def profile_gap(model_name: str, setting: BenchSetting, steps: int = 3, top: int = 12) -> List[OperatorGap]:
    """ The operators behind the gap between a MoD model and its identity bound, largest extra time first.

    Both run `steps` steps of `setting` under `torch.profiler`; an operator's time is its self time per step
    (CUDA kernel time on a GPU, CPU time otherwise), so what the MoD blocks add shows up by name: the
    selector's reductions and matrix products, top-k, the gather and its backward, the fusion's copy. In a
    runtime mode the two exports run under that runtime's own profiler, by operator type of its optimised
    graph, so the layout reorders it inserts around the MoD blocks show up too.
    """
    torch.manual_seed(0)
    mod = create_mod_model(model_name)
    models = {'mod': mod, 'identity': identity_bound(mod)}
    if setting.mode in RUNTIMES:
        x = benchmark_input(setting).numpy()
        with scratch_folder('timm-mod-profile') as export_dir:
            per_step = {name: runtime_operator_times(runtime_export(model, setting, Path(export_dir) / f'{name}.onnx'),
                                                     setting.mode, setting.threads, x, steps)
                        for name, model in models.items()}
    else:
        per_step = {name: _torch_operator_times(model, setting, steps) for name, model in models.items()}
    gaps = [OperatorGap(op, per_step['mod'].get(op, 0.0), per_step['identity'].get(op, 0.0))
            for op in set(per_step['mod']) | set(per_step['identity'])]
    return sorted(gaps, key=lambda gap: gap.extra_ms, reverse=True)[:top]


def _torch_operator_times(model: nn.Module, setting: BenchSetting, steps: int) -> Dict[str, float]:
    from torch.profiler import ProfilerActivity, profile
    on_cuda = torch.device(setting.device).type == 'cuda'
    with cpu_threads(setting.threads):
        step = make_step(model, setting)
        for _ in range(3):
            step()
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            if on_cuda:
                torch.cuda.synchronize()
    return {event.key: (event.self_device_time_total if on_cuda else event.self_cpu_time_total) / steps / 1e3
            for event in prof.key_averages()}


def format_profile_gap(model_name: str, setting: BenchSetting, gaps: Sequence[OperatorGap],
                       markdown: bool = False) -> str:
    if setting.mode in RUNTIMES:
        clock = {'onnxruntime': "kernel time by operator type, ms per run, onnxruntime's profiler",
                 'openvino': "time by node type, ms per run, OpenVINO's performance counters"}[setting.mode]
    else:
        clock = ('CUDA kernel' if torch.device(setting.device).type == 'cuda' else 'CPU') + \
            ' self time, ms per step, torch.profiler'
    title = (f'{model_name} {setting.label}: operators where the MoD model spends more than its identity bound '
             f'({clock})')
    rows = [(gap.operator[:60], f'{gap.extra_ms:+.2f}', f'{gap.mod_ms:.2f}', f'{gap.identity_ms:.2f}') for gap in gaps]
    return title + '\n' + format_table(('operator', 'extra', 'MoD', 'identity bound'), rows, markdown=markdown)
