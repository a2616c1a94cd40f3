""" Exports for the CPU runtimes: the graph of an exported MoD block, the routing kept float32 in int8, and
calibration ranges."""
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import timm
import torch.nn as nn
from onnx import numpy_helper

from timm_mod import MoDBlock
from timm_mod.experiments.runtimes import RUNTIMES, export_onnx, quantize_int8, routing_nodes, runtime_session


@pytest.mark.parametrize('name, kwargs', [
    ('resnet50_mod', {}), ('mobilenetv2_mod', {}), ('resnet18_mod', {'fusion': 'last'}),
    ('resnet18_mod', {'fusion': 'original'}), ('mobilenetv2_mod', {'routing': 'random'})])
def test_exported_mod_blocks_are_what_one_would_write_by_hand(tmp_path: Path, name: str, kwargs) -> None:
    """ Per MoD block one TopK on the scores (none for random routing), one Gather of channel planes, and the
    fusion as one more Conv whose constant weight puts plane j on channel j (first) or C - k + j (last), or, for
    'original', one ScatterND at the gathered channels: no transposes, no element-wise gathers, no tie-key
    arithmetic, no shape arithmetic building the weight at run time."""
    model = timm.create_model(name, **kwargs).eval()
    blocks = [m for m in model.modules() if isinstance(m, MoDBlock)]
    graph = onnx.load(str(export_onnx(model, tmp_path / 'm.onnx', (2, 3, 64, 64)))).graph
    ops = Counter(node.op_type for node in graph.node)
    assert ops['TopK'] == (0 if kwargs.get('routing') == 'random' else len(blocks))
    assert ops['Transpose'] == ops['ScatterElements'] == ops['GatherElements'] == ops['Cast'] == 0
    assert ops['EyeLike'] == ops['Pad'] == ops['Shape'] == ops['ConstantOfShape'] == 0
    assert ops['Gather'] >= len(blocks)
    torch_convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    fusion = kwargs.get('fusion', 'first')
    if fusion == 'original':
        assert ops['ScatterND'] == len(blocks) and ops['Conv'] == torch_convs
        return
    assert ops['ScatterND'] == 0 and ops['Conv'] == torch_convs + len(blocks)
    weights = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    conv_weights = [weights[node.input[1]] for node in graph.node if node.op_type == 'Conv']
    placements = [w for w in conv_weights if _is_one_hot(w)]
    assert len(placements) == len(blocks)
    for found, block in zip(sorted(placements, key=np.shape), sorted(blocks, key=lambda b: (b.in_channels, b.k))):
        np.testing.assert_array_equal(found, _placement(block.in_channels, block.k, fusion == 'last'))


def _is_one_hot(weight: np.ndarray) -> bool:
    return weight.ndim == 4 and weight.shape[2:] == (1, 1) and bool(np.isin(weight, (0.0, 1.0)).all()) \
        and bool((weight.sum(0) == 1).all())


def _placement(channels: int, k: int, into_last: bool) -> np.ndarray:
    """ The fusion's weight written out by hand: output channel `offset + j` takes plane j."""
    weight = np.zeros((channels, k, 1, 1), np.float32)
    offset = channels - k if into_last else 0
    for j in range(k):
        weight[offset + j, j] = 1.0
    return weight


def test_routing_nodes_are_the_selectors_from_pooling_to_top_k(tmp_path: Path) -> None:
    """ The nodes int8 quantization leaves in float32: each selector's pooling, two linears, ReLU and sigmoid,
    found from the graph alone and checked against the selector weights the exporter named."""
    model = timm.create_model('resnet18_mod').eval()
    graph = onnx.load(str(export_onnx(model, tmp_path / 'm.onnx', (2, 3, 64, 64))))
    routing = set(routing_nodes(graph))
    nodes = {node.name: node for node in graph.graph.node}
    producers = {output: node.name for node in graph.graph.node for output in node.output}
    selector_weights = {t.name for t in graph.graph.initializer if '.selector.' in t.name}
    assert len(selector_weights) == 2 * sum(isinstance(m, MoDBlock) for m in model.modules())
    assert {name for name, node in nodes.items() if set(node.input) & selector_weights} <= routing
    assert all(producers[node.input[0]] in routing for node in nodes.values() if node.op_type == 'TopK')
    ops = Counter(nodes[name].op_type for name in routing)
    assert ops['ReduceSum'] == ops['Sigmoid'] == 4 and not ops.keys() & {'Conv', 'Gather', 'TopK', 'Add'}


@pytest.mark.parametrize('kwargs', [{}, {'selector_act': 'gelu'}, {'score_scaling': 'straight_through'},
                                    {'selector_gain': 10.0, 'selector_norm': True}],
                         ids=['default', 'gelu-selector', 'straight-through', 'gain-norm'])
def test_int8_export_quantizes_the_convolutions_and_keeps_routing_and_stem_float(tmp_path: Path, kwargs) -> None:
    """ QDQ int8: every Conv but the one reading the image reads int8 weights through DequantizeLinear, that one
    reads the float image and float weights, no routing node reads a dequantized tensor (whatever the selector's
    activation), and the file runs in both runtimes at the batch it was calibrated on and at another."""
    model = timm.create_model('resnet18_mod', **kwargs).eval()
    fp32 = export_onnx(model, tmp_path / 'm.onnx', (2, 3, 64, 64), dynamic_batch=True)
    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((2, 3, 64, 64), dtype=np.float32) for _ in range(2)]
    int8 = onnx.load(str(quantize_int8(fp32, tmp_path / 'm_int8.onnx', calibration)))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['m.onnx', 'm_int8.onnx']  # no calibration litter
    producers = {output: node for node in int8.graph.node for output in node.output}
    initializers = {t.name: t for t in int8.graph.initializer}
    convs = [node for node in int8.graph.node if node.op_type == 'Conv']
    assert len(convs) == sum(isinstance(m, nn.Conv2d) for m in model.modules()) + 4  # + the one-hot fusions
    stem = [node for node in convs if node.input[0] == int8.graph.input[0].name]
    assert len(stem) == 1 and initializers[stem[0].input[1]].data_type == onnx.TensorProto.FLOAT
    for node in convs:
        if node is stem[0]:
            continue
        weight = producers[node.input[1]]
        assert weight.op_type == 'DequantizeLinear'
        assert initializers[weight.input[0]].data_type == onnx.TensorProto.INT8
    int8_nodes = {node.name: node for node in int8.graph.node}
    for name in routing_nodes(onnx.load(str(fp32))):
        node = int8_nodes[name]
        read = node.input[1:] if node.op_type == 'ReduceSum' else node.input  # the pooling reads the int8 map
        assert all(producers.get(i) is None or producers[i].op_type != 'DequantizeLinear' for i in read), name
    for runtime in RUNTIMES:
        run = runtime_session(tmp_path / 'm_int8.onnx', runtime, threads=1)
        for batch in (2, 3):
            assert np.asarray(run(rng.standard_normal((batch, 3, 64, 64), dtype=np.float32))).shape == (batch, 1000)


def test_int8_ranges_cover_every_calibration_batch(tmp_path: Path) -> None:
    """ The first quantized map's range spans all calibration batches: the first of five images is ten times
    wider than the rest, and the scale must say so (onnxruntime's CalibMaxIntermediateOutputs drops the batches it
    flushes). The map is the float stem's output, its values over each batch read from the float export."""
    model = timm.create_model('resnet18_mod').eval()
    fp32 = export_onnx(model, tmp_path / 'm.onnx', (2, 3, 32, 32))
    rng = np.random.default_rng(0)
    batches = [rng.uniform(-1, 1, (2, 3, 32, 32)).astype(np.float32) * (10.0 if i == 0 else 1.0) for i in range(5)]
    int8 = onnx.load(str(quantize_int8(fp32, tmp_path / 'm_int8.onnx', batches)))
    first = next(n for n in int8.graph.node if n.op_type == 'QuantizeLinear' and not n.input[0].endswith('weight'))
    scale = {t.name: numpy_helper.to_array(t) for t in int8.graph.initializer}[first.input[1]]
    probe = onnx.load(str(fp32))
    probe.graph.output.append(onnx.helper.make_tensor_value_info(first.input[0], onnx.TensorProto.FLOAT, None))
    onnx.save(probe, str(tmp_path / 'probe.onnx'))
    session = onnxruntime.InferenceSession(str(tmp_path / 'probe.onnx'), providers=['CPUExecutionProvider'])
    maps = [session.run([first.input[0]], {'x': batch})[0] for batch in batches]

    def span(values: list) -> float:  # the quantizer's range always holds 0
        return max(max(v.max() for v in values), 0.0) - min(min(v.min() for v in values), 0.0)
    assert span(maps) > 3 * span(maps[1:])  # the wide batch sets the range
    assert float(scale) == pytest.approx(span(maps) / 255, rel=0.01)
