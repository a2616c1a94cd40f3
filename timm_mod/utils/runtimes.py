""" Deprecated: 0.3's path, kept so that imports written for it work.

Import from `timm_mod.experiments.runtimes` instead; this alias goes in 0.5 (as timm keeps `timm.models.layers` for
`timm.layers`)."""
import warnings

from ..experiments.runtimes import (  # noqa: F401
    RUNTIMES, export_onnx, quantize_int8, require_runtime, routing_nodes, runtime_operator_times, runtime_outputs,
    runtime_session, with_routing_outputs)

__all__ = [
    'RUNTIMES', 'export_onnx', 'quantize_int8', 'require_runtime', 'routing_nodes', 'runtime_operator_times',
    'runtime_outputs', 'runtime_session', 'with_routing_outputs',
]

warnings.warn('timm_mod.utils.runtimes is deprecated: import from timm_mod.experiments.runtimes',
              FutureWarning, stacklevel=2)
