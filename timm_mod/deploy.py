""" MoD models in the runtimes CPU deployments use: ONNX export, onnxruntime and OpenVINO sessions.

The exported MoD block is the graph the adapter writes for exporters (`timm_mod.mod.fuse_channels`): one TopK
on the selector scores, one Gather of whole channel planes, and the fusion as an add of a 1x1 convolution with a
constant one-hot weight, which both runtimes fuse and run in their own layout; no transposes.
`timm-mod benchmark --mode onnxruntime openvino` times these sessions side by side.
"""
import contextlib
import io
from pathlib import Path
from typing import Callable, Tuple

import numpy as np
import torch
import torch.nn as nn

__all__ = ['RUNTIMES', 'require_runtime', 'export_onnx', 'runtime_session']

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


def runtime_session(path: Path, runtime: str, threads: int, bf16: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """ The exported model as a function of one input array, in `runtime` with `threads` CPU threads.

    OpenVINO computes in float32 unless `bf16` (its default on CPUs with bf16 units is bf16, which would compare
    precisions rather than models); onnxruntime has no bf16 CPU path.
    """
    require_runtime(runtime)
    if runtime == 'onnxruntime':
        if bf16:
            raise ValueError('onnxruntime has no bf16 CPU execution; drop --bf16 or use --mode openvino.')
        import onnxruntime
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(str(path), options, providers=['CPUExecutionProvider'])
        input_name = session.get_inputs()[0].name
        return lambda x: session.run(None, {input_name: x})[0]
    import openvino
    compiled = openvino.Core().compile_model(str(path), 'CPU', {
        'INFERENCE_NUM_THREADS': threads, 'INFERENCE_PRECISION_HINT': 'bf16' if bf16 else 'f32',
        'PERFORMANCE_HINT': 'LATENCY'})
    request = compiled.create_infer_request()
    return lambda x: request.infer([x])[0]
