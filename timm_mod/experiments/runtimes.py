""" MoD models in the runtimes CPU deployments use: ONNX export, onnxruntime and OpenVINO sessions.

The exported MoD block is the graph the adapter writes for exporters (`timm_mod.layers.fusion.fuse_channels`): one TopK
on the selector scores, one Gather of whole channel planes, and the fusion as an add of a 1x1 convolution with a
constant one-hot weight, which both runtimes fuse and run in their own layout; no transposes.
`timm-mod benchmark --mode onnxruntime openvino` times these sessions side by side, `--int8` their int8 versions
(`quantize_int8`), and `timm-mod quantize` measures what int8 costs a trained model in accuracy.
"""
import contextlib
import io
import json
import logging
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..utils.output import fresh_folder, scratch_folder, staged_output

if TYPE_CHECKING:  # imported where used: each runtime is an optional extra
    import onnx
    import onnxruntime
    import openvino

__all__ = [
    'RUNTIMES', 'require_runtime', 'export_onnx', 'runtime_session', 'runtime_outputs', 'runtime_operator_times',
    'routing_nodes', 'with_routing_outputs', 'quantize_int8',
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
    run = runtime_outputs(path, runtime, threads, bf16)
    return lambda x: run(x)[0]


def runtime_outputs(path: Path, runtime: str, threads: int, bf16: bool = False
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


def input_convolutions(model: 'onnx.ModelProto') -> List[str]:
    """ Names of the convolutions that read the graph's input image, which `quantize_int8` keeps in float32.

    With the first convolution in int8, OpenVINO 2026.4 computes the first MoD gather of a converged CIFAR-10
    resnet18_mod wrongly (16 % top-1 against onnxruntime's 82 %); with it in float32, OpenVINO scores as
    onnxruntime does (docs/deploy.md). Three input channels are also where int8 costs the most accuracy.
    """
    inputs = {value.name for value in model.graph.input}
    return [node.name for node in model.graph.node if node.op_type == 'Conv' and node.input[0] in inputs]


def with_routing_outputs(path: Path, routed_path: Path) -> int:
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


@contextlib.contextmanager
def _temp_files_in(folder: Path) -> Iterator[None]:
    """ Python's temporary files (onnxruntime's quantizer writes a model-sized one) go to `folder` beside the
    output, which a killed run's successor clears, rather than to the system's temp folder, which nothing clears."""
    saved = tempfile.tempdir
    with fresh_folder(folder):
        tempfile.tempdir = str(folder)
        try:
            yield
        finally:
            tempfile.tempdir = saved


def quantize_int8(fp32_path: Path, int8_path: Path, calibration: Iterable[np.ndarray]) -> Path:
    """ onnxruntime's static post-training quantization of an export: int8 weights per output channel and int8
    activations whose ranges (MinMax) come from the `calibration` batches, as QuantizeLinear / DequantizeLinear
    pairs (QDQ), which onnxruntime and OpenVINO both run with int8 kernels. MoD's routing (`routing_nodes`) and
    the convolution that reads the image (`input_convolutions`) stay float32. The file is written beside
    `int8_path` and swapped in whole.
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
            nodes_to_exclude=routing_nodes(model) + input_convolutions(model))
    return Path(int8_path)
