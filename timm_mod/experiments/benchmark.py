""" The paper's speed columns (Tables 1 and 2), measured side by side in one process.

Every MoD model is timed against the timm model the paper compares it with and against its identity bound:
the same network with each MoD block replaced by `nn.Identity`, the most any MoD implementation can reach.
The three are timed interleaved (round-robin, `torch.utils.benchmark`) and each time is the median over
rounds, so drifts in clock speed or load hit all three alike; only ratios are reported as results.
"""
import copy
import itertools
import os
import platform
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import timm
import torch
import torch.nn as nn

from ..layers import MoDBlock
from ..models import PAPER_MODELS, baseline_of, create_mod_model, measure
from ..utils.output import scratch_folder
from .runtimes import RUNTIMES, export_onnx, quantize_int8, require_runtime, runtime_session
from ..utils.tables import pyplot, save_figure, write_records
from ..utils.timing import time_side_by_side

__all__ = [
    'MODES', 'BenchSetting', 'settings_grid', 'check_device', 'BenchRow', 'device_name', 'identity_bound', 'make_step',
    'benchmark_input', 'calibration_batches', 'runtime_parity', 'runtime_export', 'run_benchmark', 'BENCH_COLUMNS',
    'bench_columns', 'bench_table_rows', 'write_results',
]


# eager; torch.compile (default mode); torch.compile(mode='reduce-overhead'), which replays CUDA graphs on a GPU;
# torch.compile with Inductor's freezing (weights folded into the graph: its inference mode for deployment);
# the ONNX export (torch.onnx.export(dynamo=True)) run in onnxruntime or OpenVINO on the CPU
MODES = ('eager', 'compile', 'cudagraphs', 'freezing') + RUNTIMES


@dataclass(frozen=True)
class BenchSetting:
    """ One timing condition."""
    batch_size: int = 1
    threads: int = 1
    task: str = 'inference'  # or 'train': forward, backward and an SGD step
    mode: str = 'eager'  # one of MODES
    channels_last: bool = False
    bf16: bool = False
    device: str = 'cpu'
    int8: bool = False  # runtime modes: the exports quantized to int8 (`timm_mod.experiments.runtimes.quantize_int8`)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f'Unknown benchmark mode {self.mode!r}; choose one of {MODES}.')
        if self.mode == 'freezing' and self.task == 'train':
            raise ValueError("Inductor's freezing folds the weights into the graph, so it times inference only; "
                             "drop --task train or use --mode compile.")
        if self.mode in RUNTIMES and (self.task != 'inference' or self.device != 'cpu' or self.channels_last):
            raise ValueError(f'--mode {self.mode} times CPU inference of an ONNX export, which chooses its own memory '
                             f'layout; use --task inference --device cpu without --channels-last.')
        if self.mode == 'onnxruntime' and self.bf16:
            raise ValueError('onnxruntime has no bf16 CPU execution; drop --bf16 or use --mode openvino.')
        if self.int8 and (self.mode not in RUNTIMES or self.bf16):
            raise ValueError(f'--int8 quantizes the ONNX exports that --mode onnxruntime or openvino runs, in place of '
                             f'float32 or bf16; use it with --mode onnxruntime openvino and without --bf16 '
                             f'(got --mode {self.mode}{" --bf16" if self.bf16 else ""}).')

    @property
    def label(self) -> str:
        flags = [f'b{self.batch_size}', f'{self.threads}thr' if self.device == 'cpu' else self.device, self.task,
                 self.mode]
        return ' '.join(flags + (['cl'] if self.channels_last else []) + (['bf16'] if self.bf16 else [])
                        + (['int8'] if self.int8 else []))


def settings_grid(
        batch_sizes: Sequence[int],
        threads: Sequence[int],
        tasks: Sequence[str] = ('inference',),
        modes: Sequence[str] = ('eager',),
        channels_last: bool = False,
        bf16: bool = False,
        device: str = 'cpu',
        int8: bool = False,
) -> List[BenchSetting]:
    """ Every combination of task, mode, batch size and thread count (0 = all cores).

    CPU threads do not change a GPU run, so on a GPU each combination is timed once (with the most threads).
    """
    if not batch_sizes or any(size < 1 for size in batch_sizes):
        raise ValueError(f'--batch-size must be positive integers, got {list(batch_sizes)}.')
    if not threads or any(count < 0 for count in threads):
        raise ValueError(f'--threads must be 0 (all cores) or a positive count, got {list(threads)}.')
    threads = [count if count > 0 else (os.cpu_count() or 1) for count in threads]
    if torch.device(device).type != 'cpu':
        threads = [max(threads)]
    return [BenchSetting(batch_size=batch_size, threads=count, task=task, mode=mode, channels_last=channels_last,
                         bf16=bf16, device=device, int8=int8)
            for task, mode, batch_size, count in itertools.product(tasks, modes, batch_sizes, threads)]


def check_device(device: str) -> None:
    """ A clear error for a device this machine does not have, before anything is built."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f'--device {device!r} is not a torch device ({error}); use cpu or cuda.') from error
    available = {'cpu': True, 'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available()}
    if not available.get(kind, False):
        raise ValueError(f'--device {device}: no {kind} device on this machine (torch {torch.__version__}); '
                         f'use --device cpu.')


@dataclass(frozen=True)
class BenchRow:
    """ A MoD model, its baseline and its identity bound under one setting; times in milliseconds."""
    model: str
    baseline: str
    setting: str
    params_m: float
    gmacs: float
    mod_ms: float
    baseline_ms: float
    identity_ms: float
    speedup: float
    identity_bound: float
    images_per_s: float
    paper_speedup: str  # the paper's CPU speed-up for CPU settings, its GPU speed-up for CUDA ones
    device_name: str
    max_abs_diff: Optional[float] = None  # runtimes: largest |logit| difference of the MoD export from PyTorch

    @property
    def fraction_of_bound(self) -> float:
        return self.speedup / self.identity_bound


def device_name(device: str) -> str:
    """ What ran the benchmark: the GPU's name, or the CPU's model and core count."""
    if torch.device(device).type == 'cuda':
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(':', 1)[1].strip() for line in Path('/proc/cpuinfo').read_text().splitlines()
                   if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return f'{cpu}, {os.cpu_count()} CPUs'


def identity_bound(model: nn.Module) -> nn.Module:
    """ A copy of `model` with every MoD block replaced by `nn.Identity`."""
    bound = copy.deepcopy(model)
    for module in list(bound.modules()):
        for name, child in module.named_children():
            if isinstance(child, MoDBlock):
                setattr(module, name, nn.Identity())
    return bound


def benchmark_input(setting: BenchSetting) -> torch.Tensor:
    """ The batch every model of a setting sees (seeded, so runtimes and PyTorch can be compared on it)."""
    return torch.randn(setting.batch_size, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def make_step(model: nn.Module, setting: BenchSetting, num_classes: int = 1000,
              onnx_path: Optional[Path] = None, input_size: Tuple[int, int, int] = (3, 224, 224)
              ) -> Callable[[], None]:
    """ One inference batch, or one training step (forward, backward, SGD step), as a closure to time.

    A runtime mode runs the model's ONNX export at `onnx_path` (exported there first if it is not there yet).
    """
    if setting.mode in RUNTIMES:
        return _runtime_step(_runtime_forward(model, setting, onnx_path), setting)
    device = torch.device(setting.device)
    memory_format = torch.channels_last if setting.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format).train(setting.task == 'train')
    x = torch.randn(setting.batch_size, *input_size, device=device).to(memory_format=memory_format)
    if setting.mode == 'eager':
        forward = model
    else:
        forward = torch.compile(model, mode='reduce-overhead' if setting.mode == 'cudagraphs' else None,
                                options={'freezing': True} if setting.mode == 'freezing' else None)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=setting.bf16)
    if setting.task == 'inference':
        def step() -> None:
            with torch.inference_mode(), autocast:
                forward(x)
        return step
    target = torch.randint(0, num_classes, (setting.batch_size,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        with autocast:
            loss = nn.functional.cross_entropy(forward(x).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _runtime_forward(model: nn.Module, setting: BenchSetting, onnx_path: Optional[Path]
                     ) -> Callable[[np.ndarray], np.ndarray]:
    if onnx_path is None:
        raise ValueError(f'--mode {setting.mode} runs an ONNX export: give make_step an onnx_path to export to.')
    return runtime_session(runtime_export(model, setting, Path(onnx_path)), setting.mode, setting.threads,
                           bf16=setting.bf16)


def runtime_export(model: nn.Module, setting: BenchSetting, onnx_path: Path) -> Path:
    """ The model exported at `onnx_path` for the setting's batch (once), and its int8 version beside it for --int8."""
    if not onnx_path.exists():
        export_onnx(model, onnx_path, tuple(benchmark_input(setting).shape))
    if not setting.int8:
        return onnx_path
    int8_path = onnx_path.with_name(f'{onnx_path.stem}_int8.onnx')
    if not int8_path.exists():
        quantize_int8(onnx_path, int8_path, calibration_batches(setting))
    return int8_path


def calibration_batches(setting: BenchSetting, count: int = 2) -> List[np.ndarray]:
    """ Seeded random batches of the benchmark's shape to calibrate int8 ranges on: int8 kernels take the same time
    whatever the ranges, so timing needs no real images (`timm-mod quantize` calibrates on real ones)."""
    shape, generator = benchmark_input(setting).shape, torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=generator).numpy() for _ in range(count)]


def _runtime_step(run: Callable[[np.ndarray], np.ndarray], setting: BenchSetting) -> Callable[[], None]:
    x = benchmark_input(setting).numpy()
    return lambda: run(x)


def runtime_parity(model: nn.Module, run: Callable[[np.ndarray], np.ndarray], setting: BenchSetting) -> float:
    """ Largest |logit| difference between a runtime session of the model's export and eager PyTorch on the
    benchmark batch."""
    x = benchmark_input(setting)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    return float(np.abs(np.array(run(x.numpy())) - expected).max())


def run_benchmark(
        model_names: Sequence[str],
        settings: Sequence[BenchSetting],
        rounds: int = 5,
        min_run_time: float = 0.2,
        progress: bool = True,
) -> List[BenchRow]:
    """ Time every MoD model against its baseline and its identity bound under every setting.

    A registered MoD model is compared with its `baseline_of`; a plain timm model name is converted with
    `to_mod` (its family's default c) and compared with itself.
    """
    if rounds < 1:
        raise ValueError(f'--rounds must be at least 1 (the median of the rounds is reported), got {rounds}.')
    if min_run_time <= 0:
        raise ValueError(f'--min-run-time must be positive seconds, got {min_run_time}.')
    for device in {setting.device for setting in settings}:
        check_device(device)
    for runtime in {setting.mode for setting in settings} & set(RUNTIMES):
        require_runtime(runtime)
    rows: List[BenchRow] = []
    runs = list(itertools.product(model_names, settings))
    costs = {name: measure(create_mod_model(name, device='meta')) for name in model_names}
    with scratch_folder('timm-mod-bench') as exports:
        for index, (model_name, setting) in enumerate(runs, 1):
            # one export per model and batch size, shared by the thread counts and the runtimes
            rows.append(_bench_row(model_name, costs[model_name], setting, Path(exports) / model_name, rounds,
                                   min_run_time))
            if progress:
                row = rows[-1]
                print(f'[{index}/{len(runs)}] {model_name} {setting.label}: {row.speedup:.2f}x '
                      f'(identity bound {row.identity_bound:.2f}x)', file=sys.stderr, flush=True)
    return rows


def _bench_row(model_name: str, cost: Tuple[int, float], setting: BenchSetting, export_dir: Path, rounds: int,
               min_run_time: float) -> BenchRow:
    paper = PAPER_MODELS.get(model_name)
    baseline_name = baseline_of(model_name)
    params, macs = cost
    torch.manual_seed(0)
    mod = create_mod_model(model_name)
    models = {'mod': mod, 'baseline': timm.create_model(baseline_name), 'identity': identity_bound(mod)}
    parity: Dict[str, float] = {}
    if setting.mode in RUNTIMES:  # one session per model serves the parity check and the timing
        export_dir.mkdir(parents=True, exist_ok=True)
        runs = {name: _runtime_forward(model, setting, export_dir / f'{name}_b{setting.batch_size}.onnx')
                for name, model in models.items()}
        parity = {name: runtime_parity(model, runs[name], setting) for name, model in models.items()}
        steps = {name: _runtime_step(run, setting) for name, run in runs.items()}
    else:
        steps = {name: make_step(model, setting) for name, model in models.items()}
    for name in ('baseline', 'identity'):
        if parity.get(name, 0.0) > 1e-3 and not setting.int8:  # int8 logits differ from float32 ones by design
            raise RuntimeError(f'The {setting.mode} export of the {name} model of {model_name} differs from '
                               f'PyTorch by {parity[name]:.3g}: a runtime or exporter fault, not MoD.')
    times = time_side_by_side(steps, setting.threads, rounds=rounds, min_run_time=min_run_time)
    return BenchRow(
        model=model_name, baseline=baseline_name, setting=setting.label, params_m=params / 1e6,
        gmacs=macs / 1e9, mod_ms=times['mod'] * 1e3, baseline_ms=times['baseline'] * 1e3,
        identity_ms=times['identity'] * 1e3, speedup=times['baseline'] / times['mod'],
        identity_bound=times['baseline'] / times['identity'],
        images_per_s=setting.batch_size / times['mod'],
        paper_speedup=('-' if paper is None else
                       paper.gpu_speedup if torch.device(setting.device).type == 'cuda' else paper.cpu_speedup),
        device_name=device_name(setting.device),
        max_abs_diff=parity.get('mod'),
    )

BENCH_COLUMNS = ('model', 'setting', 'params (M)', 'GMACs', 'ms', 'baseline', 'baseline ms', 'speed-up',
                 'identity bound', '% of bound', 'img/s', 'paper speed-up')

PARITY_COLUMN = 'max abs diff vs PyTorch'


def bench_columns(rows: Sequence[BenchRow]) -> Tuple[str, ...]:
    """ The table's columns: runtime rows add how far the MoD export's logits are from PyTorch's."""
    return BENCH_COLUMNS + ((PARITY_COLUMN,) if any(r.max_abs_diff is not None for r in rows) else ())


def bench_table_rows(rows: Sequence[BenchRow]) -> List[tuple]:
    parity = any(r.max_abs_diff is not None for r in rows)
    return [(r.model, r.setting, f'{r.params_m:.2f}', f'{r.gmacs:.2f}', f'{r.mod_ms:.2f}', r.baseline,
             f'{r.baseline_ms:.2f}', f'{r.speedup:.2f}x', f'{r.identity_bound:.2f}x',
             f'{100 * r.fraction_of_bound:.1f}', f'{r.images_per_s:.1f}', r.paper_speedup)
            + ((f'{r.max_abs_diff:.1e}' if r.max_abs_diff is not None else '-',) if parity else ()) for r in rows]


def write_results(rows: Sequence[BenchRow], output: Path) -> List[Path]:
    """ benchmark.csv, benchmark.json and benchmark.png (speed-up against identity bound) in `output`."""
    records = [dict(asdict(r), fraction_of_bound=r.fraction_of_bound) for r in rows]
    written = write_records(records, output, 'benchmark')
    plot = _plot(rows, Path(output) / 'benchmark.png')
    return written + ([plot] if plot else [])


def _plot(rows: Sequence[BenchRow], path: Path) -> Optional[Path]:
    """ Bars of measured speed-up inside bars of the identity bound, the paper's CPU speed-up marked."""
    plt = pyplot(path.name)
    if plt is None:
        return None
    labels = [f'{r.model}\n{r.setting}' for r in rows]
    positions = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(rows)), 4.5))
    ax.bar(positions, [r.identity_bound for r in rows], width=0.7, color='#d9d9d9', label='identity bound')
    ax.bar(positions, [r.speedup for r in rows], width=0.45, color='#3b75af', label='measured speed-up')
    paper = [(i, float(r.paper_speedup)) for i, r in enumerate(rows) if r.paper_speedup != '-']
    if paper:
        ax.scatter(*zip(*paper), marker='_', s=600, color='#c0392b', linewidths=2.5, label="paper's speed-up",
                   zorder=3)
    ax.axhline(1.0, color='black', linewidth=0.8)
    ax.set_xticks(list(positions), labels, rotation=45, ha='right', fontsize=7)
    ax.set_ylabel('speed-up over the baseline (x)')
    ax.set_title(f'MoD speed-up against its identity bound, side by side\n{rows[0].device_name}', fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
