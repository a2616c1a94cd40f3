""" The timm model contract on every MoD family: heads, features, checkpointing, export paths, weights."""
from collections import Counter

import onnx
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.models._manipulate import group_parameters

from timm_mod import MoDBlock

SMALL_INPUT = (2, 3, 64, 64)


def test_pretrained_without_weights_says_how_to_give_them() -> None:
    with pytest.raises(RuntimeError, match=r'pretrained_cfg_overlay=dict\(file=.*local-dir:.*hf-hub:'):
        timm.create_model('resnet50_mod', pretrained=True)


@pytest.mark.parametrize('suffix', ['.safetensors', '.pth.tar'])
def test_pretrained_from_file_round_trips(tmp_path, suffix: str) -> None:
    source = timm.create_model('resnet18_mod', num_classes=7).eval()
    path = tmp_path / f'weights{suffix}'
    if suffix == '.safetensors':
        save_file(source.state_dict(), str(path))
    else:  # the layout of timm train.py's checkpoints
        torch.save({'epoch': 1, 'arch': 'resnet18_mod', 'state_dict': source.state_dict()}, path)
    loaded = timm.create_model(
        'resnet18_mod', pretrained=True, num_classes=7, pretrained_cfg_overlay=dict(file=str(path), num_classes=7),
    ).eval()
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x), rtol=0, atol=0)


@pytest.fixture(scope='module', params=['resnet18_mod', 'resnet50_mod', 'mobilenetv2_mod'])
def model_name(request) -> str:
    return request.param


def test_num_classes_in_chans_drop_rate(model_name: str) -> None:
    model = timm.create_model(model_name, num_classes=10, in_chans=1, drop_rate=0.25)
    first_conv = model.get_submodule(model.pretrained_cfg['first_conv'])
    assert first_conv.in_channels == 1 and model.drop_rate == 0.25
    assert model(torch.randn(2, 1, 64, 64)).shape == (2, 10)


def test_global_pool_and_reset_classifier(model_name: str) -> None:
    model = timm.create_model(model_name, global_pool='max').eval()
    assert model.global_pool.pool_type == 'max'
    model.reset_classifier(5)
    assert model(torch.randn(*SMALL_INPUT)).shape == (2, 5)
    model.reset_classifier(0, '')
    assert model(torch.randn(*SMALL_INPUT)).shape == (2, model.num_features, 2, 2)


def test_forward_features_head_and_intermediates(model_name: str) -> None:
    model = timm.create_model(model_name).eval()
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        features = model.forward_features(x)
        assert features.shape == (2, model.num_features, 2, 2)
        assert model.forward_head(features.clone(), pre_logits=True).shape == (2, model.head_hidden_size)
        torch.testing.assert_close(model.forward_head(features.clone()), model(x))
        final, intermediates = model.forward_intermediates(x)
    torch.testing.assert_close(final, features)
    assert [t.shape[1] for t in intermediates] == [info['num_chs'] for info in model.feature_info]


def test_features_only_out_indices(model_name: str) -> None:
    model = timm.create_model(model_name, features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        features = model(torch.randn(*SMALL_INPUT))
    assert [tuple(f.shape[1:]) for f in features] == [
        (c, 64 // r, 64 // r) for c, r in zip(model.feature_info.channels(), model.feature_info.reduction())]


def test_grad_checkpointing_gives_the_same_gradients(model_name: str) -> None:
    x = torch.randn(*SMALL_INPUT)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = timm.create_model(model_name, num_classes=3).train()
        model.set_grad_checkpointing(checkpointing)
        model(x).square().sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def test_group_matcher_puts_mod_blocks_in_their_block_group(model_name: str) -> None:
    model = timm.create_model(model_name, device='meta')
    groups = group_parameters(model, model.group_matcher(coarse=False))
    mod_name = next(name for name, m in model.named_modules() if isinstance(m, MoDBlock))
    dense_name = mod_name[:-1] + '0'
    selector_group = next(i for i, names in groups.items() if f'{mod_name}.selector.fc1.weight' in names)
    assert all(name.startswith(mod_name + '.') for name in groups[selector_group])
    assert all(not name.startswith(dense_name + '.') for name in groups[selector_group])
    assert sum(len(names) for names in groups.values()) == len(list(model.parameters()))


@pytest.mark.parametrize('name, kwargs', [
    ('resnet18_mod', {}), ('resnet50_mod_lk', {}), ('resnet50_mod_rand', {}), ('mobilenetv2_mod_l', {}),
    ('resnet18_mod', {'selector_act': 'gelu', 'selector_decay': False, 'score_scaling': 'straight_through',
                      'selector_gain': 10.0, 'selector_norm': True})])
def test_torchscript_matches_eager(name: str, kwargs) -> None:
    with timm.set_scriptable(True):
        model = timm.create_model(name, **kwargs).eval()
    scripted = torch.jit.script(model)
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = model(x)
        torch.manual_seed(0)
        torch.testing.assert_close(scripted(x), expected)


def test_channels_last_matches(model_name: str) -> None:
    model = timm.create_model(model_name).eval()
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name, min_similarity', [
    # seeded random routing in training draws the same channels in both precisions: only arithmetic differs
    ('resnet50_mod_rand', 0.9999),
    # learned routing at random init has near-tied scores that bf16 may reorder, changing a few selections
    ('resnet50_mod', 0.95),
])
def test_bf16_autocast_on_cpu(name: str, min_similarity: float) -> None:
    model = timm.create_model(name).train(name.endswith('_rand'))
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        torch.manual_seed(0)
        expected = model(x)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            torch.manual_seed(0)
            out = model(x)
    assert out.dtype == torch.bfloat16
    assert torch.nn.functional.cosine_similarity(out.float(), expected).min() > min_similarity


def test_bf16_autocast_training_step() -> None:
    model = timm.create_model('resnet50_mod', num_classes=4).train()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = model(torch.randn(*SMALL_INPUT)).float().logsumexp(1).mean()
    loss.backward()
    assert model.layer2[1].selector.fc1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize('name', ['resnet18_mod', 'mobilenetv2_mod'])
def test_compile_fullgraph_matches_eager(name: str) -> None:
    model = timm.create_model(name).eval()
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        expected = model(x)
        compiled = torch.compile(model, fullgraph=True)
        torch.testing.assert_close(compiled(x), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', ['resnet18_mod', 'resnet50_mod_lk', 'mobilenetv2_mod'])
def test_torch_export_matches_eager(name: str) -> None:
    model = timm.create_model(name).eval()
    x = torch.randn(*SMALL_INPUT)
    exported = torch.export.export(model, (x,))
    with torch.no_grad():
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('name', ['resnet18_mod', 'resnet50_mod_lk', 'mobilenetv2_mod'])
def test_onnx_export_runs_in_onnxruntime(tmp_path, name: str) -> None:
    import onnxruntime
    torch.manual_seed(0)  # mobilenetv2_mod's one-unit selectors then score channels alike (ReLU off)
    model = timm.create_model(name).eval()
    x = torch.randn(*SMALL_INPUT)
    path = tmp_path / f'{name}.onnx'
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = model(x).numpy()
    assert abs(out - expected).max() < 1e-4


def test_equal_scores_route_the_same_channels_in_every_runtime(tmp_path) -> None:
    """ topk leaves the order of equal scores to each backend; MoD sends them to the lower channel everywhere."""
    import onnxruntime
    torch.manual_seed(0)
    model = timm.create_model('mobilenetv2_mod', num_classes=10).eval()
    blocks = [m for m in model.modules() if isinstance(m, MoDBlock)]
    with torch.no_grad():
        for block in blocks:
            block.selector.fc1.weight.zero_()  # hidden unit at 0: every score is sigmoid(0) = 0.5
    routes = []
    hooks = [block.register_forward_pre_hook(lambda block, args: routes.append(block.route(args[0])[0]))
             for block in blocks]
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        eager = model(x)
    for hook in hooks:
        hook.remove()
    assert [route.tolist() for route in routes] == [[list(range(b.k))] * len(x) for b in blocks]

    path = tmp_path / 'tied.onnx'
    torch.onnx.export(model, (x,), str(path), dynamo=True)
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    (onnx_out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        scripted = torch.jit.script(model)(x)
        compiled = torch.compile(model, fullgraph=True)(x)
    for out in (torch.from_numpy(onnx_out), scripted, compiled):
        torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name, layer', [('resnet18_mod', 'layer1.0'), ('mobilenetv2_mod', 'blocks.1.0')])
def test_forward_hooks_keep_what_they_saw(name: str, layer: str) -> None:
    """ A MoD block's input is the previous block's output: a hook holding it must see it unchanged."""
    model = timm.create_model(name).eval()
    held = {}
    model.get_submodule(layer).register_forward_hook(
        lambda module, args, out: held.update(tensor=out, copy=out.clone()))
    with torch.no_grad():
        model(torch.randn(*SMALL_INPUT))
    assert torch.equal(held['tensor'], held['copy'])


@pytest.mark.parametrize('name, nodes', [
    ('resnet18_mod', {'layer1.0.act2': 'before_mod', 'layer1.1': 'after_mod'}),
    ('mobilenetv2_mod', {'blocks.1.0': 'before_mod', 'blocks.1.1': 'after_mod'}),
])
def test_feature_extraction_is_the_same_with_and_without_gradients(name: str, nodes) -> None:
    from timm.models import create_feature_extractor
    torch.manual_seed(0)
    extractor = create_feature_extractor(timm.create_model(name).eval(), nodes)
    x = torch.randn(*SMALL_INPUT)
    with torch.no_grad():
        without = extractor(x)
    with_grad = extractor(x)
    for key in nodes.values():
        torch.testing.assert_close(without[key], with_grad[key], rtol=0, atol=0)


def randomise_norms(model: torch.nn.Module) -> torch.nn.Module:
    """ Non-trivial batch-norm statistics, a stand-in for a trained model (at init eval BN is nearly an identity)."""
    torch.manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    return model


def test_random_routing_in_eval_does_not_depend_on_the_batch_or_the_runtime() -> None:
    torch.manual_seed(0)
    model = randomise_norms(timm.create_model('resnet50_mod_rand', num_classes=10)).eval()
    x = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        batch, alone = model(x), model(x[1:2])
        twice = model(torch.cat([x[1:2], x[1:2]]))
        torch.testing.assert_close(batch[1:2], alone, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(twice, alone.expand(2, -1), rtol=1e-5, atol=1e-4)
        torch._dynamo.reset()
        converted = randomise_norms(timm.create_model('resnet18_mod', num_classes=10, routing='random')).eval()
        torch.testing.assert_close(torch.compile(converted)(x), converted(x), rtol=1e-4, atol=1e-4)


def routing_margin(model: torch.nn.Module, x: torch.Tensor) -> float:
    """ The smallest gap, over every MoD block and sample, between the k-th and the (k+1)-th selector score."""
    gaps = []

    def record(block: MoDBlock):
        def hook(module, args, scores: torch.Tensor) -> None:
            ordered = scores.sort(dim=1, descending=True).values
            gaps.append((ordered[:, block.k - 1] - ordered[:, block.k]).min().item())
        return hook

    blocks = [m for m in model.modules() if isinstance(m, MoDBlock) and m.selector is not None]
    handles = [block.selector.register_forward_hook(record(block)) for block in blocks]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return min(gaps, default=float('inf'))


def input_away_from_ties(model: torch.nn.Module, batch: int, margin: float = 1e-5) -> torch.Tensor:
    """ An input whose routing margin is far above the float noise between runtimes (~1e-7 in a score): at init
    a selector scores channels within ~1e-6 of each other, where another runtime's summation order may route
    another channel, a difference of rounding rather than of the graph."""
    for seed in range(200):
        x = torch.randn(batch, 3, 64, 64, generator=torch.Generator().manual_seed(seed))
        if routing_margin(model, x) >= margin:
            return x
    raise AssertionError('no input found with the routing margin')


EXPORT_CASES = [
    ('resnet18_mod', {}),
    ('resnet18_mod', {'fusion': 'last'}),
    ('resnet18_mod', {'routing': 'random'}),
    ('resnet18_mod', {'routing': 'fixed'}),
    ('resnet18_mod', {'fusion': 'original'}),
    ('resnet18_mod', {'fusion': 'original', 'routing': 'random'}),
    ('resnet18_mod', {'selector_act': 'gelu', 'selector_decay': False}),
    ('resnet18_mod', {'score_scaling': 'straight_through'}),
    ('resnet18_mod', {'selector_gain': 10.0, 'selector_norm': True}),
    ('mobilenetv2_mod', {}),
    ('convnext_nano_mod', {}),
    ('regnety_016_mod', {}),
]


@pytest.mark.parametrize('exporter', ['torchscript', 'dynamo'])
@pytest.mark.parametrize('name, kwargs', EXPORT_CASES, ids=[f'{n}-{"-".join(map(str, k.values())) or "default"}'
                                                            for n, k in EXPORT_CASES])
def test_timm_onnx_export_matches_pytorch_in_onnxruntime_and_openvino(tmp_path, name: str, kwargs, exporter) -> None:
    """ timm's own exporter (what its onnx_export.py runs), TorchScript-based and dynamo, with a dynamic batch:
    the exported model gives PyTorch's logits in onnxruntime and OpenVINO at batch 1 and 3."""
    import onnxruntime
    import openvino
    from timm.utils.onnx import onnx_export
    torch.manual_seed(0)
    model = randomise_norms(timm.create_model(name, num_classes=10, **kwargs)).eval()
    path = tmp_path / 'model.onnx'
    onnx_export(model, str(path), example_input=input_away_from_ties(model, 2), check_forward=True,
                use_dynamo=exporter == 'dynamo')
    ops = Counter(node.op_type for node in onnx.load(str(path)).graph.node)
    assert ops['EyeLike'] == ops['Pad'] == 0, "the fusion's one-hot weight is a constant, not built at run time"
    session = onnxruntime.InferenceSession(str(path), providers=['CPUExecutionProvider'])
    # f32: on CPUs with bf16 units OpenVINO computes in bf16 by default
    compiled = openvino.Core().compile_model(str(path), 'CPU', {'INFERENCE_PRECISION_HINT': 'f32'})
    for batch in (1, 3):
        x = input_away_from_ties(model, batch)
        with torch.no_grad():
            expected = model(x)
        (from_ort,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        from_openvino = compiled(x.numpy())[0]
        for out in (from_ort, from_openvino):
            torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)


def test_an_empty_batch_gives_empty_logits_like_timm(model_name: str) -> None:
    model = timm.create_model(model_name, num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.empty(0, 3, 64, 64)).shape == (0, 10)
