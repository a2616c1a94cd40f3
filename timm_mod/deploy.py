""" MoD models in the runtimes CPU deployments use: ONNX export, onnxruntime and OpenVINO sessions.

The exported MoD block is the graph the adapter writes for exporters (`timm_mod.mod.fuse_channels`): one TopK
on the selector scores, one Gather of whole channel planes, and the fusion as an add of a 1x1 convolution with a
constant one-hot weight, which both runtimes fuse and run in their own layout; no transposes.
`timm-mod benchmark --mode onnxruntime openvino` times these sessions side by side.
"""
import contextlib
import io
import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

if TYPE_CHECKING:  # imported where used: each runtime is an optional extra
    import onnxruntime
    import openvino

__all__ = ['RUNTIMES', 'require_runtime', 'export_onnx', 'runtime_session', 'runtime_operator_times']

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


def export_onnx(model: nn.Module, path: Path, input_shape: Tuple[int, ...] = (1, 3, 224, 224)) -> Path:
    """ `torch.onnx.export(dynamo=True)` of the model in eval mode at a fixed input shape, without its log."""
    path = Path(path)
    with contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        torch.onnx.export(model.eval(), (torch.randn(*input_shape),), str(path), dynamo=True)
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
    require_runtime(runtime)
    if runtime == 'onnxruntime':
        if bf16:
            raise ValueError('onnxruntime has no bf16 CPU execution; drop --bf16 or use --mode openvino.')
        session = _onnxruntime_session(path, threads)
        input_name = session.get_inputs()[0].name
        return lambda x: session.run(None, {input_name: x})[0]
    request = _openvino_request(path, threads, bf16)
    return lambda x: request.infer([x])[0]


def runtime_operator_times(path: Path, runtime: str, threads: int, x: np.ndarray, steps: int = 3,
                           warmup: int = 3) -> Dict[str, float]:
    """ Milliseconds per run spent in each operator type of the runtime's own graph (after its fusions and the
    layout reorders it inserts), from onnxruntime's profiler or OpenVINO's performance counters (float32)."""
    require_runtime(runtime)
    times: Dict[str, float] = defaultdict(float)
    if runtime == 'onnxruntime':
        with tempfile.TemporaryDirectory() as profile_dir:
            session = _onnxruntime_session(path, threads, Path(profile_dir))
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
