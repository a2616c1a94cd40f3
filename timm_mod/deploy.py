""" MoD models in the runtimes CPU deployments use: ONNX export, onnxruntime and OpenVINO sessions.

The exported MoD block is the graph the adapter writes for exporters (`timm_mod.mod.fuse_channels`): one TopK
on the selector scores, one Gather of whole channel planes, and the fusion as an add of a 1x1 convolution with a
constant one-hot weight, which both runtimes fuse and run in their own layout; no transposes.
`timm-mod benchmark --mode onnxruntime openvino` times these sessions side by side, `--int8` their int8 versions
(`quantize_int8`), and `timm-mod quantize` measures what int8 costs a trained model in accuracy.
"""
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tempfile
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ._output import check_replaceable_folder, scratch_folder, staged_output

if TYPE_CHECKING:  # imported where used: each runtime is an optional extra
    import onnx
    import onnxruntime
    import openvino

__all__ = [
    'RUNTIMES', 'require_runtime', 'export_onnx', 'runtime_session', 'runtime_operator_times', 'routing_nodes',
    'quantize_int8', 'AccuracyRow', 'check_accuracy_options', 'int8_accuracy', 'ACCURACY_COLUMNS',
    'accuracy_table_rows',
]

RUNTIMES = ('onnxruntime', 'openvino')

_PACKAGES = {'export': ('onnx', 'onnxscript'), 'onnxruntime': ('onnxruntime',), 'openvino': ('openvino',)}


def require_runtime(runtime: str) -> None:
    """ A clear error, before any work, when the packages of a runtime (or of the export) are missing."""
    import importlib.util
    if runtime not in RUNTIMES:
        raise ValueError(f'Unknown runtime {runtime!r}; choose one of {RUNTIMES}.')
    missing = [name for name in _PACKAGES['export'] + _PACKAGES[runtime] if importlib.util.find_spec(name) is None]
    if missing:
        raise ImportError(f'{runtime} needs {", ".join(missing)}: pip install "timm-mod[deploy]".')


def export_onnx(model: nn.Module, path: Path, input_shape: Tuple[int, ...] = (1, 3, 224, 224),
                dynamic_batch: bool = False) -> Path:
    """ `torch.onnx.export(dynamo=True)` of the model in eval mode at a fixed input shape (any batch size with
    `dynamic_batch`), without its log, as one file (weights inside, not in a `.data` file beside it)."""
    path = Path(path)
    dynamic_shapes = ({0: torch.export.Dim('batch', min=1)},) if dynamic_batch else None
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(model.eval(), (torch.randn(*input_shape),), str(path), dynamo=True,
                          dynamic_shapes=dynamic_shapes, external_data=False)
    return path


def _onnxruntime_session(path: Path, threads: int, profile_dir: Optional[Path] = None
                         ) -> 'onnxruntime.InferenceSession':
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if profile_dir is not None:
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(profile_dir) / 'onnxruntime_profile')
    return onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])


def _openvino_request(path: Path, threads: int, bf16: bool = False, perf_count: bool = False
                      ) -> 'openvino.InferRequest':
    import openvino
    compiled = openvino.Core().compile_model(str(path), 'CPU', {
        'INFERENCE_NUM_THREADS': threads, 'INFERENCE_PRECISION_HINT': 'bf16' if bf16 else 'f32',
        'PERFORMANCE_HINT': 'LATENCY', 'PERF_COUNT': perf_count})
    return compiled.create_infer_request()


def runtime_session(path: Path, runtime: str, threads: int, bf16: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """ The exported model as a function of one input array, in `runtime` with `threads` CPU threads.

    OpenVINO computes in float32 unless `bf16` (its default on CPUs with bf16 units is bf16, which would compare
    precisions rather than models); onnxruntime has no bf16 CPU path.
    """
    run = _runtime_outputs(path, runtime, threads, bf16)
    return lambda x: run(x)[0]


def _runtime_outputs(path: Path, runtime: str, threads: int, bf16: bool = False
                     ) -> Callable[[np.ndarray], List[np.ndarray]]:
    """ `runtime_session` returning every output of the graph, in order."""
    require_runtime(runtime)
    if runtime == 'onnxruntime':
        if bf16:
            raise ValueError('onnxruntime has no bf16 CPU execution; drop --bf16 or use --mode openvino.')
        session = _onnxruntime_session(path, threads)
        input_name = session.get_inputs()[0].name
        return lambda x: session.run(None, {input_name: x})
    request = _openvino_request(path, threads, bf16)
    return lambda x: list(request.infer([x]).to_tuple())


def runtime_operator_times(path: Path, runtime: str, threads: int, x: np.ndarray, steps: int = 3,
                           warmup: int = 3) -> Dict[str, float]:
    """ Milliseconds per run spent in each operator type of the runtime's own graph (after its fusions and the
    layout reorders it inserts), from onnxruntime's profiler or OpenVINO's performance counters (float32)."""
    require_runtime(runtime)
    times: Dict[str, float] = defaultdict(float)
    if runtime == 'onnxruntime':
        with scratch_folder('timm-mod-runtime-profile') as profile_dir:
            session = _onnxruntime_session(path, threads, profile_dir)
            input_name = session.get_inputs()[0].name
            for _ in range(warmup + steps):
                session.run(None, {input_name: x})
            events = json.loads(Path(session.end_profiling()).read_text())
        kernel_events = [e for e in events if e.get('cat') == 'Node' and e['name'].endswith('_kernel_time')]
        for event in kernel_events[len(kernel_events) * warmup // (warmup + steps):]:
            times[event['args']['op_name']] += event['dur'] / 1e3 / steps
        return dict(times)
    request = _openvino_request(path, threads, perf_count=True)
    for _ in range(warmup):
        request.infer([x])
    for _ in range(steps):
        request.infer([x])
        for node in request.get_profiling_info():
            times[node.node_type] += node.real_time.total_seconds() * 1e3 / steps
    return dict(times)


def routing_nodes(model: 'onnx.ModelProto') -> List[str]:
    """ Names of the nodes that compute MoD's routing scores: from each TopK back to the selector's pooling.

    Rounded to int8, sigmoid scores that differ by less than a quantization step become equal, and TopK then takes
    the lower channel: other channels than the float model's. These few small nodes (pool, two Gemms, ReLU,
    sigmoid) are what `quantize_int8` keeps in float32.
    """
    producers = {output: node for node in model.graph.node for output in node.output}
    found: Dict[str, None] = {}  # ordered set
    pending = [node.input[0] for node in model.graph.node if node.op_type == 'TopK']
    while pending:
        node = producers.get(pending.pop())
        if node is None or node.name in found:
            continue
        found[node.name] = None
        if node.op_type not in ('ReduceMean', 'ReduceSum', 'GlobalAveragePool'):  # the pooling reads the map
            pending.extend(node.input)
    return list(found)


def _with_routing_outputs(path: Path, routed_path: Path) -> int:
    """ A copy of an export that also outputs the channels each TopK routes, for comparing routings; the number of
    TopKs (MoD blocks with a selector, in execution order)."""
    import onnx
    model = onnx.load(str(path))
    top_ks = [node for node in model.graph.node if node.op_type == 'TopK']
    for node in top_ks:
        model.graph.output.append(onnx.helper.make_tensor_value_info(node.output[1], onnx.TensorProto.INT64, None))
    onnx.save(model, str(routed_path))
    return len(top_ks)


class _Batches:
    """ onnxruntime's calibration reader over arrays (its `CalibrationDataReader` protocol: `get_next`)."""

    def __init__(self, input_name: str, batches: Iterable[np.ndarray]) -> None:
        self._feeds = ({input_name: np.ascontiguousarray(batch, np.float32)} for batch in batches)

    def get_next(self) -> Optional[Dict[str, np.ndarray]]:
        return next(self._feeds, None)


class _PreprocessingAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return 'pre-processing' not in record.getMessage()


@contextlib.contextmanager
def _without_preprocessing_advice() -> Iterator[None]:
    """ quantize_static logs advice to run its pre-processing (shape inference, batch-norm folding) on every call;
    the dynamo export is already shape-annotated with its batch norms folded, so the advice is dropped."""
    advice = _PreprocessingAdvice()
    logging.getLogger().addFilter(advice)
    try:
        yield
    finally:
        logging.getLogger().removeFilter(advice)


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: Iterable[np.ndarray]) -> Path:
    """ onnxruntime's static post-training quantization of an export: int8 weights per output channel and int8
    activations whose ranges (MinMax) come from the `calibration` batches, as QuantizeLinear / DequantizeLinear
    pairs (QDQ), which onnxruntime and OpenVINO both run with int8 kernels. MoD's routing stays float32
    (`routing_nodes`). The file is written beside `int8_path` and swapped in whole.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    require_runtime('onnxruntime')
    model = onnx.load(str(fp32_path))
    scratch = Path(int8_path).parent / '.timm-mod-quantize-scratch'
    with staged_output(Path(int8_path)) as staged, _without_preprocessing_advice(), _temp_files_in(scratch):
        quantize_static(
            model, staged, _Batches(model.graph.input[0].name, calibration), quant_format=QuantFormat.QDQ,
            per_channel=True, activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=routing_nodes(model))
    return Path(int8_path)


@dataclass(frozen=True)
class AccuracyRow:
    """ Top-1 of one form of a trained model on a held-out split, in %, and how often it agrees with PyTorch."""
    precision: str  # 'float32' or 'int8'
    runtime: str  # 'PyTorch', 'onnxruntime' or 'openvino'
    top1: float
    agreement: float  # images whose predicted class is PyTorch's, in %
    max_abs_diff: float  # largest |logit| difference from PyTorch
    images: int
    same_routing: Optional[float]  # (image, MoD block) pairs routed to PyTorch's channels, in %; None: no selectors


ACCURACY_COLUMNS = ('precision', 'runtime', 'top-1 (%)', 'same class as PyTorch (%)', 'same routing as PyTorch (%)',
                    'max abs logit diff', 'images')


def accuracy_table_rows(rows: List[AccuracyRow]) -> List[Tuple[str, ...]]:
    return [(r.precision, r.runtime, f'{r.top1:.2f}', f'{r.agreement:.2f}',
             '-' if r.same_routing is None else f'{r.same_routing:.2f}', f'{r.max_abs_diff:.3g}', str(r.images))
            for r in rows]


def _split_loader(data_dir: Path, split: str, data_config: Dict, batch_size: int, class_map: Dict[str, int],
                  limit: Optional[int] = None) -> 'torch.utils.data.DataLoader':
    """ An ImageFolder split through timm's eval transform, labelled with the training split's `class_map`;
    `limit` takes that many images spread over the classes (a seeded shuffle), for calibration."""
    from timm.data import create_dataset, create_transform
    from .compare import check_image_folder
    check_image_folder(data_dir, split)
    dataset = create_dataset('', root=str(data_dir), split=split, class_map=class_map)
    dataset.transform = create_transform(**data_config)
    if limit is not None:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit]
        dataset = torch.utils.data.Subset(dataset, order.tolist())
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def check_accuracy_options(calibration_images: int, batch_size: int, threads: int) -> None:
    """ A clear error for counts `int8_accuracy` cannot use, before anything is loaded or exported."""
    for name, value, least in (('--calibration-images', calibration_images, 1), ('--batch-size', batch_size, 1),
                               ('--threads', threads, 0)):
        if value < least:
            raise ValueError(f'{name} must be at least {least}, got {value}.')


def int8_accuracy(
        model: nn.Module,
        data_dir: Path,
        data_config: Dict,
        output_dir: Path,
        runtimes: Tuple[str, ...] = RUNTIMES,
        split: str = 'validation',
        calibration_split: str = 'train',
        calibration_images: int = 256,
        batch_size: int = 32,
        threads: int = 0,
        train_split: str = 'train',
        overwrite: bool = False,
        progress: bool = True,
) -> List[AccuracyRow]:
    """ What int8 costs a trained model: its ONNX export (any batch size) and that export quantized with
    `quantize_int8`, calibrated on `calibration_images` images of the training split, scored beside PyTorch on
    the held-out split in each runtime. Images are labelled with the class map of `train_split`, the split the
    model learned. `output_dir` receives model.onnx, model_int8.onnx and accuracy.json, written beside it and
    swapped in whole: an existing non-empty `output_dir` is replaced only with `overwrite`, and never when it
    holds the data.
    """
    from .compare import check_class_maps
    check_accuracy_options(calibration_images, batch_size, threads)
    check_replaceable_folder(output_dir, overwrite, keep=(data_dir,))
    for runtime in ('onnxruntime', *runtimes):  # onnxruntime quantizes, whichever runtimes score
        require_runtime(runtime)
    class_map = check_class_maps(data_dir, train_split, split, getattr(model, 'num_classes', None))
    calibration = _split_loader(data_dir, calibration_split, data_config, batch_size, class_map,
                                limit=calibration_images)
    held_out = _split_loader(data_dir, split, data_config, batch_size, class_map)
    model = model.eval()
    with staged_output(Path(output_dir)) as staged:
        staged.mkdir()
        fp32_path = export_onnx(model, staged / 'model.onnx', (batch_size, *data_config['input_size']),
                                dynamic_batch=True)
        if progress:
            print(f'exported {fp32_path.name}; calibrating int8 ranges on {len(calibration.dataset)} '
                  f'{calibration_split} images', file=sys.stderr, flush=True)
        int8_path = quantize_int8(fp32_path, staged / 'model_int8.onnx',
                                  (images.numpy() for images, _ in calibration))
        rows = _score(model, held_out, {'float32': fp32_path, 'int8': int8_path}, runtimes,
                      threads or (os.cpu_count() or 1), staged / '.routing', progress)
        (staged / 'accuracy.json').write_text(json.dumps([asdict(row) for row in rows], indent=2) + '\n')
    return rows


@contextlib.contextmanager
def _removed_after(folder: Path) -> Iterator[None]:
    shutil.rmtree(folder, ignore_errors=True)  # a killed run's
    folder.mkdir()
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _temp_files_in(folder: Path) -> Iterator[None]:
    """ Python's temporary files (onnxruntime's quantizer writes a model-sized one) go to `folder` beside the
    output, which a killed run's successor clears, rather than to the system's temp folder, which nothing clears."""
    saved = tempfile.tempdir
    with _removed_after(folder):
        tempfile.tempdir = str(folder)
        try:
            yield
        finally:
            tempfile.tempdir = saved


def _score(model: nn.Module, loader: 'torch.utils.data.DataLoader', exports: Dict[str, Path],
           runtimes: Tuple[str, ...], threads: int, routed_dir: Path, progress: bool) -> List[AccuracyRow]:
    """ Top-1, agreement with PyTorch's class and routing, and logit distance of PyTorch and of each export in
    each runtime, over `loader`. The routings are read from copies of the exports in `routed_dir` (inside the
    output's staging folder, so a killed run's copies go with it) that also output each TopK's channels; the
    folder is removed at the end."""
    from .selection import routing_hooks, selector_blocks
    blocks = selector_blocks(model)
    pytorch_routing: Dict[str, torch.Tensor] = {}  # the latest forward pass's channels, by block
    with _removed_after(routed_dir), routing_hooks(blocks, pytorch_routing.__setitem__):
        sessions = {}
        for precision, path in exports.items():
            routed_path = Path(routed_dir) / f'{precision}.onnx'
            top_ks = _with_routing_outputs(path, routed_path)
            if top_ks != len(blocks):
                raise RuntimeError(f'{path.name} has {top_ks} TopK nodes for the model\'s {len(blocks)} selectors: '
                                   f'an export that does not route as the model, so routings cannot be compared.')
            for runtime in runtimes:
                sessions[precision, runtime] = _runtime_outputs(routed_path, runtime, threads)
        correct: Dict[Tuple[str, str], int] = defaultdict(int)
        agree: Dict[Tuple[str, str], int] = defaultdict(int)
        same_routing: Dict[Tuple[str, str], int] = defaultdict(int)
        max_diff: Dict[Tuple[str, str], float] = defaultdict(float)
        seen = 0
        for batch_index, (images, targets) in enumerate(loader, 1):
            with torch.no_grad():
                expected = model(images).numpy()
            routed = [np.sort(pytorch_routing[name].numpy(), 1) for name in blocks]
            outputs = {('float32', 'PyTorch'): [expected, *routed]}
            outputs.update({key: run(images.numpy()) for key, run in sessions.items()})
            for key, (logits, *routing) in outputs.items():
                predicted = np.asarray(logits).argmax(1)
                correct[key] += int((predicted == targets.numpy()).sum())
                agree[key] += int((predicted == expected.argmax(1)).sum())
                same_routing[key] += sum(int((np.sort(mine, 1) == theirs).all(1).sum())
                                         for mine, theirs in zip(routing, routed))
                max_diff[key] = max(max_diff[key], float(np.abs(logits - expected).max()))
            seen += len(targets)
            if progress and (batch_index % 20 == 0 or seen == len(loader.dataset)):
                print(f'scored {seen}/{len(loader.dataset)} images', file=sys.stderr, flush=True)
    return [AccuracyRow(*key, 100 * correct[key] / seen, 100 * agree[key] / seen, max_diff[key], seen,
                        100 * same_routing[key] / (seen * len(blocks)) if blocks else None)
            for key in correct]
