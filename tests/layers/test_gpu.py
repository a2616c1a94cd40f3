""" The MoD block and models on a CUDA GPU: every fast path against the plain reference, eager, compiled and
replayed as CUDA graphs. These need a GPU, so CI (CPU only) skips them; `.ci/device` runs them on one.
"""
import pytest
import timm
import torch

from test_mod_block import (
    CHANNELS, assert_close_in_bf16, assert_fast_paths_match_the_reference, fast_and_reference, make_block)
from timm_mod.layers import top_k_channels

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU: run .ci/device on one')

CUDA = torch.device('cuda')


@pytest.fixture(autouse=True)
def full_fp32_matmuls():
    """ The references are fp32: TF32 convolutions would round both paths differently."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize('fusion', ['first', 'last', 'original'])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last], ids=['nchw', 'nhwc'])
@pytest.mark.parametrize('batch', [1, 5])
def test_block_matches_the_reference_on_cuda(fusion: str, memory_format, batch: int) -> None:
    x = torch.randn(batch, CHANNELS, 7, 6, device=CUDA).to(memory_format=memory_format)
    assert_fast_paths_match_the_reference(make_block(fusion).to(CUDA), x, atol=1e-5)


def test_block_matches_the_reference_in_bf16_autocast_on_cuda() -> None:
    block = make_block().to(CUDA).train()
    x = torch.randn(4, CHANNELS, 7, 6, device=CUDA).to(memory_format=torch.channels_last)
    assert_close_in_bf16(fast_and_reference(block, x, bf16=True))


@pytest.mark.parametrize('name', ['resnet50_mod', 'mobilenetv2_mod'])
def test_model_on_cuda_matches_the_cpu(name: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        out = model.to(CUDA, memory_format=torch.channels_last)(x.to(CUDA, memory_format=torch.channels_last))
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('dtype', [torch.float32, torch.bfloat16])
def test_equal_scores_take_the_same_channels_on_cuda_as_on_the_cpu(dtype) -> None:
    torch.manual_seed(0)
    scores = torch.rand(64, 512).mul(8).round().div(8).to(dtype)  # nine distinct values: ties everywhere
    values, indices = top_k_channels(scores, 32)
    cuda_values, cuda_indices = top_k_channels(scores.to(CUDA), 32)
    assert torch.equal(cuda_indices.cpu(), indices) and torch.equal(cuda_values.cpu(), values)


@pytest.mark.parametrize('mode', ['default', 'reduce-overhead'])
def test_compiled_model_matches_eager_on_cuda(mode: str) -> None:
    """ Training step compiled (default mode) and inference replayed as CUDA graphs (reduce-overhead).

    Batch norm is frozen for the gradients: with batch statistics over 4 x 2 x 2 values in the last stage its
    backward amplifies rounding differences between two correct programs past any useful tolerance.
    """
    torch.manual_seed(0)
    model = timm.create_model('resnet50_mod', num_classes=10).to(CUDA)
    x = torch.randn(4, 3, 64, 64, device=CUDA)
    compiled = torch.compile(model, mode=mode, fullgraph=True)
    if mode == 'default':
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
        expected = model(x)
        expected_grads = torch.autograd.grad(expected.square().sum(), list(model.parameters()))
        out = compiled(x)
        grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        for got, want in zip(grads, expected_grads):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        return
    model.eval()
    with torch.no_grad():
        expected = model(x)
        for _ in range(3):  # recorded on the second call, replayed after
            out = compiled(x).clone()
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('routing', ['learned', 'random'])
def test_no_host_synchronisation_on_cuda(routing: str) -> None:
    """ Routing, gathering and fusing stay on the GPU: a forward and backward with CUDA's sync debug mode set to
    'error' raises on any device-to-host wait (an .item(), a data-dependent shape, a nonzero)."""
    model = timm.create_model('resnet18_mod', num_classes=10, routing=routing).to(CUDA)
    x = torch.randn(4, 3, 64, 64, device=CUDA)
    model(x)  # first calls may synchronise while cuDNN picks its algorithms
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode('error')
    try:
        model(x).square().sum().backward()
        with torch.no_grad():
            model.eval()(x)
    finally:
        torch.cuda.set_sync_debug_mode('default')
