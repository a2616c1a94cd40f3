""" The MoD adapter: routing, fusion semantics, gradients, random mode, static graph, errors."""
import json
import warnings
from typing import Dict, List

import pytest
import torch
import torch.nn as nn
from timm.models._efficientnet_blocks import InvertedResidual
from timm.models.resnet import BasicBlock, Bottleneck

from timm_mod.layers import ChannelSelector, MoDBlock, mod_width, top_k_channels
from timm_mod.models import mod_every_second_block

CHANNELS = 32
C_DIVISOR = 4
K = CHANNELS // C_DIVISOR


def make_block(fusion: str = 'first', routing: str = 'learned', block_cls=Bottleneck, **mod_args) -> MoDBlock:
    torch.manual_seed(0)
    make = (lambda k: block_cls(k, k // block_cls.expansion)) if block_cls is not InvertedResidual \
        else (lambda k: InvertedResidual(k, k, exp_ratio=6.0))
    block = MoDBlock(CHANNELS, make, c=C_DIVISOR, fusion=fusion, routing=routing, **mod_args)
    for m in block.modules():  # non-trivial BN statistics, so eval mode is not an identity
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return block.eval()


def fused_channels(fusion: str, order: torch.Tensor):
    """ The channels that receive the processed ones: the first or last k, or where they came from."""
    return {'first': slice(0, K), 'last': slice(CHANNELS - K, None), 'original': order}[fusion]


def expected_output(block: MoDBlock, x: torch.Tensor) -> torch.Tensor:
    """ The paper's equations, sample by sample, independent of the block's own routing code."""
    out = x.clone()
    if block.selector is None:  # random routing in eval: one fixed draw, unscaled
        scores = torch.zeros(x.shape[0], x.shape[1]).index_fill_(1, block.eval_channels, 1.0)
        orders = [block.eval_channels] * x.shape[0]
    else:
        scores = block.selector(x)
        orders = [scores[b].argsort(descending=True, stable=True)[:block.k] for b in range(x.shape[0])]  # ties: lower
    for b, order in enumerate(orders):
        processed = block.block(x[b:b + 1, order]) * scores[b, order][None, :, None, None]
        target = fused_channels(block.fusion, order)
        out[b:b + 1, target] = x[b:b + 1, target] + processed
    return out


@pytest.mark.parametrize('fusion', ['first', 'last', 'original'])
@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
def test_fusion_semantics_exact(fusion: str, grad: bool) -> None:
    block = make_block(fusion)
    x = torch.randn(3, CHANNELS, 6, 5)
    with torch.no_grad():
        expected = expected_output(block, x)
        orders = block.selector(x).argsort(dim=1, descending=True, stable=True)[:, :K]
    x_in = x.clone().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        out = block(x_in)
    assert out.shape == x.shape
    for b in range(x.shape[0]):
        fused = torch.zeros(CHANNELS, dtype=torch.bool)
        fused[fused_channels(fusion, orders[b])] = True
        assert fused.sum() == K
        assert torch.equal(out[b, ~fused], x[b, ~fused]), 'channels outside the fused k must be bit-identical'
        torch.testing.assert_close(out[b, fused], expected[b, fused], rtol=0, atol=1e-6)
        assert not torch.equal(out[b, fused], x[b, fused]), 'the fused channels must change'
    if fusion == 'original':  # samples route differently, so they receive in different channels
        assert len({tuple(sorted(order.tolist())) for order in orders}) > 1


def test_inference_and_training_leave_the_input_alone() -> None:
    """ The input is the previous block's output, which hooks and feature extractors hold."""
    block = make_block()
    x = torch.randn(2, CHANNELS, 4, 4)
    original = x.clone()
    with torch.no_grad():
        expected = expected_output(block, x)
        out = block(x)
    assert torch.equal(x, original), 'no-grad inference must not change the caller\'s tensor'
    assert out.data_ptr() != x.data_ptr()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    block(x.requires_grad_()).sum().backward()
    assert torch.equal(x.detach(), original), 'with grad enabled the input must be left untouched'


def test_drop_path_removes_the_whole_update() -> None:
    """ Stochastic depth on a MoD block drops its contribution (drop probability 1: output == input)."""
    from timm.layers import DropPath
    block = make_block().train()
    block.drop_path = DropPath(1.0)
    x = torch.randn(3, CHANNELS, 4, 4)
    assert torch.equal(block(x), x)
    block.drop_path = DropPath(0.5)
    torch.manual_seed(0)
    x = torch.randn(64, CHANNELS, 2, 2)
    dropped = (block(x) == x).flatten(1).all(1)
    assert 10 < int(dropped.sum()) < 54, 'about half of the samples keep their input unchanged'


def test_scores_in_slot_order_and_indices_follow_a_forced_selector() -> None:
    block = make_block()
    preferred = torch.tensor([5, 30, 1, 17, 9, 22, 12, 3])
    with torch.no_grad():
        block.selector.fc1.weight.fill_(0.0)
        block.selector.fc1.weight[0].fill_(1.0 / CHANNELS)  # hidden unit 0 = mean activation = 1
        block.selector.fc2.weight.fill_(-1.0)
        block.selector.fc2.weight[preferred, 0] = torch.linspace(4.0, 2.0, K)
    x = torch.ones(2, CHANNELS, 3, 3)
    indices, scores = block.route(x)
    assert indices.tolist() == [preferred.tolist()] * 2
    assert torch.all(scores[:, :-1] >= scores[:, 1:])


@pytest.mark.parametrize('shape, k', [((1, 7), 3), ((5, 64), 4), ((3, 2048), 32)])
def test_top_k_channels_is_topk_where_scores_differ(shape, k: int) -> None:
    torch.manual_seed(0)
    scores = torch.rand(shape)
    values, indices = top_k_channels(scores, k)
    expected = scores.topk(k, dim=1)
    assert torch.equal(values, expected.values) and torch.equal(indices, expected.indices)


def test_top_k_channels_gives_equal_scores_to_the_lower_channel() -> None:
    scores = torch.tensor([[0.5, 0.7, 0.5, 0.5, 0.7, 0.1], [0.5] * 6], dtype=torch.bfloat16)
    values, indices = top_k_channels(scores, 4)
    assert indices.tolist() == [[1, 4, 0, 2], [0, 1, 2, 3]]
    assert values.tolist() == [[0.69921875, 0.69921875, 0.5, 0.5], [0.5] * 4]
    below_half = torch.tensor(0.3)
    one_ulp_more = torch.nextafter(below_half, torch.tensor(1.0))
    assert top_k_channels(torch.stack([below_half, one_ulp_more, below_half])[None], 1)[1].item() == 1, \
        'scores one float32 ulp apart are not a tie'
    torch.manual_seed(0)
    scores = torch.rand(8, 300).mul(8).round().div(8)  # nine distinct values: ties everywhere
    indices = top_k_channels(scores, 40)[1]
    for row, taken in zip(scores.tolist(), indices.tolist()):
        assert taken == sorted(range(len(row)), key=lambda channel: (-row[channel], channel))[:40]


def test_a_selector_scoring_all_channels_alike_routes_the_first_k() -> None:
    """ A dead ReLU in the selector's hidden layer scores every channel sigmoid(0) = 0.5."""
    block = make_block()
    with torch.no_grad():
        block.selector.fc1.weight.zero_()
    x = torch.rand(3, CHANNELS, 4, 4)
    indices, scores = block.route(x)
    assert indices.tolist() == [list(range(K))] * 3 and torch.all(scores == 0.5)


def test_gradients_reach_the_selector_and_slim_block() -> None:
    block = make_block().train()
    out = block(torch.randn(2, CHANNELS, 4, 4))
    out.square().mean().backward()
    for name, param in block.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, f'no gradient for {name}'


def test_training_path_gradients_are_exact() -> None:
    block = make_block().double().train()
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # deterministic function of the input for gradcheck
    x = torch.randn(2, CHANNELS, 3, 3, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(block, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_straight_through_scores_add_the_update_unscaled_and_get_the_scaling_gradient(training: bool) -> None:
    """ Written out by hand: the routed channels are the selector's top k, the update enters unscaled
    (x[:, :k] + slim(x[:, top k])), and in training each routed channel's score receives d loss / d score of the
    scaled form, sum over pixels of (d loss / d out[:, j]) * update[:, j]; channels not routed receive none."""
    block = MoDBlock(CHANNELS, lambda k: BasicBlock(k, k), c=C_DIVISOR, score_scaling='straight_through')
    block.train(training)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # the hand computation below runs the slim block a second time
            m.weight.data.uniform_(0.5, 1.5)
    x = torch.randn(3, CHANNELS, 5, 4)
    kept = {}
    block.selector.register_forward_hook(lambda _m, _i, scores: kept.update(scores=scores) or scores.retain_grad())
    out = block(x)
    scores = kept['scores']
    with torch.no_grad():
        orders = scores.argsort(dim=1, descending=True, stable=True)[:, :K]
        updates = torch.cat([block.block(x[b:b + 1, orders[b]]) for b in range(x.shape[0])])
        expected = x.clone()
        expected[:, :K] += updates
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    if not training:
        return
    upstream = torch.randn_like(out)
    (out * upstream).sum().backward()
    expected_grad = torch.zeros_like(scores)
    for b in range(x.shape[0]):
        expected_grad[b, orders[b]] = (upstream[b, :K] * updates[b]).sum((1, 2))
    assert (expected_grad[0, orders[0]] != 0).all()
    torch.testing.assert_close(scores.grad, expected_grad, rtol=1e-5, atol=1e-6)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in block.selector.parameters())


@pytest.mark.parametrize('gain', [0.5, 10.0])
def test_selector_gain_starts_as_the_papers_and_moves_gain_squared_as_fast_under_sgd(gain: float) -> None:
    """ Same initial scores as the paper's selector from the same seed; after one plain SGD step on the same
    loss, the effective weights (gain x stored) have moved gain^2 times as far as the paper's."""
    torch.manual_seed(0)
    paper = ChannelSelector(CHANNELS, r=4).double()  # float64: the moves are small differences of weights
    torch.manual_seed(0)
    scaled = ChannelSelector(CHANNELS, r=4, gain=gain).double()
    pooled = torch.randn(5, CHANNELS, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(scaled(pooled), paper(pooled), rtol=1e-6, atol=1e-9)  # float32 initialisation
    moves = []
    for selector, factor in ((paper, 1.0), (scaled, gain)):
        before = [factor * p.detach().clone() for p in (selector.fc1.weight, selector.fc2.weight)]
        optimizer = torch.optim.SGD(selector.parameters(), lr=1e-3)
        selector(pooled)[:, :3].sum().backward()
        optimizer.step()
        moves.append([factor * p.detach() - b for p, b in zip((selector.fc1.weight, selector.fc2.weight), before)])
    for paper_move, scaled_move in zip(*moves):
        assert paper_move.abs().max() > 1e-6
        torch.testing.assert_close(scaled_move, gain ** 2 * paper_move, rtol=1e-6, atol=1e-14)


def test_selector_norm_standardises_the_pooled_input() -> None:
    """ Written out: scores = sigmoid(W2 relu(W1 z)), z the per-image channel means standardised over channels
    (biased variance, eps 1e-5); a scaled or shifted input map scores the same."""
    torch.manual_seed(0)
    selector = ChannelSelector(CHANNELS, r=4, normalize_input=True)
    x = torch.randn(3, CHANNELS, 4, 5)
    means = x.mean((2, 3))
    z = (means - means.mean(1, keepdim=True)) / (means.var(1, unbiased=False, keepdim=True) + 1e-5).sqrt()
    expected = torch.sigmoid(torch.relu(z @ selector.fc1.weight.T) @ selector.fc2.weight.T)
    torch.testing.assert_close(selector(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(selector(3 * x + 2), expected, rtol=1e-4, atol=1e-5)


def test_random_routing_has_no_selector_and_training_is_reproducible() -> None:
    block = make_block(routing='random').train()
    assert block.selector is None
    assert not any('selector' in name for name, _ in block.named_parameters())
    x = torch.randn(4, CHANNELS, 3, 3)
    torch.manual_seed(123)
    first = block(x)
    torch.manual_seed(123)
    second = block(x)
    torch.manual_seed(124)
    third = block(x)
    assert torch.equal(first, second)
    assert not torch.equal(first, third)


def test_random_routing_in_eval_is_one_fixed_draw_kept_in_the_state_dict() -> None:
    block = make_block(routing='random')
    x = torch.randn(6, CHANNELS, 3, 3)
    torch.manual_seed(1)
    indices, _ = block.route(x)
    assert indices.tolist() == [block.eval_channels.tolist()] * 6
    assert len(set(indices[0].tolist())) == K, 'k distinct channels'
    torch.manual_seed(2)
    assert torch.equal(block.route(x[3:4])[0], indices[3:4]), 'neither the RNG nor the batch changes the draw'
    with torch.no_grad():
        alone, in_batch = block(x[3:4]), block(torch.cat([x[3:4], x[3:4], x[:2]]))
    torch.testing.assert_close(in_batch[:2], alone.expand(2, -1, -1, -1), rtol=0, atol=1e-6)
    assert torch.equal(block.state_dict()['eval_channels'], block.eval_channels)
    other = make_block(routing='random')
    torch.manual_seed(5)
    redrawn = MoDBlock(CHANNELS, lambda k: Bottleneck(k, k // 4), c=C_DIVISOR, routing='random').eval()
    assert not torch.equal(redrawn.eval_channels, other.eval_channels), 'each block draws its own channels'
    redrawn.load_state_dict(other.state_dict())
    assert torch.equal(redrawn.route(x)[0], other.route(x)[0]), 'a loaded model routes as the saved one'


def test_random_routing_in_training_is_uniform_distinct_and_unscaled() -> None:
    block = make_block(routing='random').train()
    torch.manual_seed(0)
    x = torch.randn(4000, CHANNELS, 2, 2)
    indices, scores = block.route(x)
    assert scores is None
    assert indices.shape == (4000, K)
    assert all(len(set(row)) == K for row in indices.tolist()), 'channels must be distinct within a sample'
    frequency = torch.bincount(indices.flatten(), minlength=CHANNELS).float() / indices.numel()
    torch.testing.assert_close(frequency, torch.full((CHANNELS,), 1 / CHANNELS), rtol=0.1, atol=0)
    selected = torch.zeros(4000, CHANNELS).scatter_(1, indices, 1.0)
    pair_frequency = (selected.T @ selected / 4000)[~torch.eye(CHANNELS, dtype=torch.bool)]
    expected_pair = K / CHANNELS * (K - 1) / (CHANNELS - 1)
    torch.testing.assert_close(pair_frequency, torch.full_like(pair_frequency, expected_pair), rtol=0.35, atol=0)


@pytest.mark.parametrize('fusion', ['first', 'last', 'original'])
def test_random_routing_training_matches_a_plain_reference(fusion: str) -> None:
    """ Output and gradients against the method written out: the top-k of uniform noise, an unscaled add."""
    block = make_block(fusion, routing='random').train()
    x = torch.randn(3, CHANNELS, 4, 5)
    torch.manual_seed(7)
    x_in = x.clone().requires_grad_()
    out = block(x_in)
    grads = torch.autograd.grad(out.square().sum(), [x_in, *block.parameters()])
    torch.manual_seed(7)
    order = torch.rand(3, CHANNELS).argsort(dim=1, descending=True)[:, :K]
    x_ref = x.clone().requires_grad_()
    selected = torch.stack([x_ref[b, order[b]] for b in range(3)])
    target = slice(CHANNELS - K, None) if fusion == 'last' else slice(0, K)
    pieces = [x_ref[:, :CHANNELS - K], x_ref[:, target] + block.block(selected)] if fusion == 'last' else \
        [x_ref[:, target] + block.block(selected), x_ref[:, K:]]
    expected = torch.cat(pieces, dim=1)
    if fusion == 'original':
        update = block.block(selected)
        expected = torch.stack([x_ref[b].index_add(0, order[b], update[b]) for b in range(3)])
    expected_grads = torch.autograd.grad(expected.square().sum(), [x_ref, *block.parameters()])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('training', [True, False], ids=['train', 'eval'])
def test_fixed_routing_processes_one_channel_set_for_every_image_in_training_too(training: bool) -> None:
    """ Static routing: no selector; in training as in eval, every image's update is the slim block on the block's
    one fixed set of k channels, unscaled, on the first k; the random generator is not drawn from."""
    block = make_block(routing='fixed').train(training)
    for m in block.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()  # the reference below runs the slim block again
    assert block.selector is None and block.routing == 'fixed' and block.eval_channels.shape == (K,)
    x = torch.randn(3, CHANNELS, 4, 5)
    state = torch.get_rng_state()
    out = block(x)
    assert torch.equal(torch.get_rng_state(), state)
    expected = x.clone()
    expected[:, :K] += block.block(x[:, block.eval_channels])
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize('block_cls', [BasicBlock, Bottleneck, InvertedResidual])
def test_wraps_timm_blocks_unmodified(block_cls) -> None:
    block = make_block(block_cls=block_cls)
    assert type(block.block) is block_cls
    x = torch.randn(2, CHANNELS, 5, 5)
    assert block.train()(x).shape == x.shape


def test_selector_is_bias_free_se_shape() -> None:
    selector = ChannelSelector(1024, r=16)
    assert [tuple(p.shape) for p in selector.parameters()] == [(64, 1024), (1024, 64)]
    scores = selector(torch.randn(2, 1024, 3, 3))
    assert scores.shape == (2, 1024) and scores.min() > 0 and scores.max() < 1


@pytest.mark.parametrize('fusion, routing', [
    ('first', 'learned'), ('last', 'learned'), ('first', 'random'), ('original', 'learned'), ('original', 'random')])
def test_compile_fullgraph_and_export_match_the_paper_equations(fusion: str, routing: str) -> None:
    block = make_block(fusion, routing)
    x = torch.randn(2, CHANNELS, 6, 6)
    with torch.no_grad():
        expected = expected_output(block, x)
        torch._dynamo.reset()
        compiled = torch.compile(block, fullgraph=True)
        torch.testing.assert_close(compiled(x.clone()), expected, rtol=1e-5, atol=1e-5)
        exported = torch.export.export(block, (x.clone(),))
        torch.testing.assert_close(exported.module()(x.clone()), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('fusion, routing', [
    ('first', 'learned'), ('last', 'learned'), ('last', 'random'), ('original', 'learned')])
@pytest.mark.parametrize('grad', [False, True], ids=['no_grad', 'grad'])
def test_torchscript_matches_the_paper_equations(fusion: str, routing: str, grad: bool) -> None:
    block = make_block(fusion, routing)
    scripted = torch.jit.script(block)
    x = torch.randn(3, CHANNELS, 5, 4)
    with torch.no_grad():
        expected = expected_output(block, x)
    with torch.set_grad_enabled(grad):
        out = scripted(x.clone().requires_grad_(grad))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    if grad:
        x_ref, x_script = x.clone().requires_grad_(), x.clone().requires_grad_()
        want = torch.autograd.grad(expected_output(block, x_ref).square().sum(), [x_ref, *block.parameters()])
        got = torch.autograd.grad(scripted(x_script).square().sum(), [x_script, *block.parameters()])
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('routing', ['learned', 'random'])
def test_an_empty_batch_gives_an_empty_output(routing: str) -> None:
    block = make_block(routing=routing)
    for train in (False, True):
        out = block.train(train)(torch.empty(0, CHANNELS, 4, 4))
        assert out.shape == (0, CHANNELS, 4, 4)


def test_compiled_inference_with_inductor_freezing_matches_eager() -> None:
    """ Freezing (weights folded into the graph, convolutions prepacked) is Inductor's CPU inference mode; it
    failed on an in-place fusion whose result feeds a residual block, as in every MoD ResNet."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, CHANNELS, 3, padding=1), nn.BatchNorm2d(CHANNELS), nn.ReLU(), make_block(),
        Bottleneck(CHANNELS, CHANNELS // Bottleneck.expansion)).eval()
    x = torch.randn(1, 3, 8, 8)
    torch._dynamo.reset()
    with torch.no_grad(), torch._inductor.config.patch(freezing=True):
        expected = net(x)
        torch.testing.assert_close(torch.compile(net)(x), expected, rtol=1e-4, atol=1e-5)


def test_shapes_do_not_depend_on_data() -> None:
    block = make_block()
    graph = torch.export.export(block, (torch.randn(2, CHANNELS, 6, 6),)).graph
    data_dependent = {'aten.nonzero.default', 'aten.item.default', 'aten._local_scalar_dense.default'}
    assert data_dependent.isdisjoint(str(node.target) for node in graph.nodes)
    for x in (torch.zeros(2, CHANNELS, 6, 6), torch.randn(2, CHANNELS, 6, 6) * 100):
        with torch.no_grad():
            assert block(x).shape == (2, CHANNELS, 6, 6)


@pytest.mark.parametrize('c, message', [(0, 'positive integer'), (2.5, 'positive integer'), (64, 'choose c <= 32')])
def test_invalid_c_is_a_clear_error(c, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mod_width(CHANNELS, c)


@pytest.mark.parametrize('kwargs, message', [
    (dict(fusion='middle'), "fusion 'middle'"),
    (dict(routing='greedy'), "routing 'greedy'"),
    (dict(r=0), 'reduction r'),
    (dict(score_scaling='softmax'), "score_scaling 'softmax'"),
    (dict(selector_gain=0), 'selector_gain must be a positive finite number'),
    (dict(selector_gain='2'), 'selector_gain must be a positive finite number'),
    (dict(selector_norm='yes'), 'selector_norm must be True or False'),
])
def test_invalid_options_are_clear_errors(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MoDBlock(CHANNELS, lambda k: BasicBlock(k, k), c=C_DIVISOR, **kwargs)


def test_every_second_block_of_a_stage_becomes_mod() -> None:
    stage = nn.Sequential(*[BasicBlock(CHANNELS, CHANNELS) for _ in range(5)])
    dense = list(stage)
    mod_every_second_block(stage, lambda block, k: BasicBlock(k, k), c=C_DIVISOR)
    assert [isinstance(b, MoDBlock) for b in stage] == [False, True, False, True, False]
    assert [stage[i] is dense[i] for i in (0, 2, 4)] == [True] * 3


def reference_forward(block: MoDBlock, x: torch.Tensor) -> torch.Tensor:
    """ The plain formulation: element-wise gather, multiply, add, concat; never in place."""
    scores = block.selector(x)
    order = scores.argsort(dim=1, descending=True, stable=True)[:, :block.k]
    values, indices = scores.gather(1, order), order
    selected = torch.gather(x, 1, indices[:, :, None, None].expand(-1, -1, *x.shape[2:]))
    update = block.block(selected) * values[:, :, None, None]
    if block.fusion == 'original':
        return torch.scatter_add(x, 1, indices[:, :, None, None].expand_as(update), update)
    if block.fusion == 'last':
        return torch.cat([x[:, :-block.k], x[:, -block.k:] + update], dim=1)
    return torch.cat([x[:, :block.k] + update, x[:, block.k:]], dim=1)


def fast_and_reference(block: MoDBlock, x: torch.Tensor, bf16: bool = False):
    """ (output, gradients of the input and every parameter) of the block and of `reference_forward`."""
    results = []
    for forward in (block, lambda inp: reference_forward(block, inp)):
        x_in = x.clone().requires_grad_()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = forward(x_in).float()
        results.append((out, torch.autograd.grad(out.square().sum(), [x_in, *block.parameters()])))
    return results


def assert_fast_paths_match_the_reference(block: MoDBlock, x: torch.Tensor, atol: float = 1e-6) -> None:
    """ Train mode: outputs and gradients; eval mode (in-place fusion): outputs."""
    (out_fast, grads_fast), (out_ref, grads_ref) = fast_and_reference(block.train(), x)
    torch.testing.assert_close(out_fast, out_ref, rtol=1e-5, atol=atol)
    for fast, ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(fast, ref, rtol=1e-4, atol=10 * atol)
    block.eval()
    with torch.no_grad():
        expected = reference_forward(block, x)
        torch.testing.assert_close(block(x.clone()), expected, rtol=1e-5, atol=atol)


@pytest.mark.parametrize('fusion', ['first', 'last', 'original'])
@pytest.mark.parametrize('memory_format', [torch.contiguous_format, torch.channels_last], ids=['nchw', 'nhwc'])
@pytest.mark.parametrize('batch', [1, 3])
def test_fast_paths_match_the_plain_reference(fusion: str, memory_format, batch: int) -> None:
    x = torch.randn(batch, CHANNELS, 5, 6).to(memory_format=memory_format)
    assert_fast_paths_match_the_reference(make_block(fusion), x)


def assert_close_in_bf16(results) -> None:
    """ The paths round at different places under bf16 autocast (the reference scales in bf16, the fast path
    in the feature map's dtype), so they agree to bf16's precision (8 significant bits, 2 ** -7 relative):
    outputs element-wise, gradients to 2 ** -6 of the largest gradient (a small one, like a batch norm
    weight's, is a sum with cancellation and carries the others' absolute error)."""
    (out_fast, grads_fast), (out_ref, grads_ref) = results
    torch.testing.assert_close(out_fast, out_ref, rtol=2 ** -7, atol=2 ** -7)
    scale = max(ref.abs().max() for ref in grads_ref).item()
    for fast, ref in zip(grads_fast, grads_ref):
        torch.testing.assert_close(fast, ref, rtol=2 ** -6, atol=2 ** -6 * scale)


def test_fast_paths_match_the_plain_reference_in_bf16_autocast() -> None:
    block = make_block().train()
    assert_close_in_bf16(fast_and_reference(block, torch.randn(3, CHANNELS, 5, 6), bf16=True))


def test_compiled_training_is_one_graph_and_matches_eager() -> None:
    """ Two MoD blocks compile into one graph (no break at the fusion's autograd.Function), train-mode outputs
    and gradients equal eager, and a second batch reuses the graph."""
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    stack = nn.Sequential(make_block(), make_block('last')).train()
    x = torch.randn(2, CHANNELS, 5, 6)
    expected = stack(x)
    expected_grads = torch.autograd.grad(expected.square().sum(), list(stack.parameters()))
    compiled = torch.compile(stack, fullgraph=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(stack.parameters()))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    compiled(torch.randn(2, CHANNELS, 5, 6)).sum().backward()
    assert counters['stats']['unique_graphs'] == 1 and not counters['graph_break']


def test_weights_record_the_arguments_their_shapes_cannot_show() -> None:
    """ score_scaling changes the logits but no weight's shape, so timm's stock scripts, which build a model from
    --model-kwargs alone, would load straight-through weights into the paper's scaling without an error. The weights
    record the arguments (JSON in the state dict), a model built otherwise warns naming the fix and keeps its own
    arguments, and weights saved before the record load strictly as before; the caller's state dict is untouched."""
    trained = make_block(score_scaling='straight_through')
    state = trained.state_dict()
    assert json.loads(bytes(state['_extra_state'].tolist()).decode()) == dict(
        fusion='first', routing='learned', selector_act='relu', score_scaling='straight_through', selector_gain=1.0,
        selector_norm=False)
    kept = {name: tensor.clone() for name, tensor in state.items()}

    paper = make_block()
    with pytest.warns(UserWarning, match=r"trained with score_scaling='straight_through', but the model is "
                                         r"built with score_scaling='multiply'.*"
                                         r"--model-kwargs score_scaling=straight_through"):
        paper.load_state_dict(state)
    assert paper.shapeless_args()['score_scaling'] == 'multiply'
    assert json.loads(bytes(paper.state_dict()['_extra_state'].tolist()).decode())['score_scaling'] == 'multiply'
    assert all(torch.equal(state[name], kept[name]) for name in kept)

    with warnings.catch_warnings():
        warnings.simplefilter('error')
        make_block().load_state_dict(make_block().state_dict())  # built alike: silent
        before_the_record = {name: tensor for name, tensor in state.items() if name != '_extra_state'}
        assert make_block().load_state_dict(before_the_record, strict=True).missing_keys == []
    random = make_block(routing='random')
    assert set(json.loads(bytes(random.state_dict()['_extra_state'].tolist()).decode())) == {'fusion', 'routing'}


def _averaged_as_timm_does(states: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """ What timm's avg_checkpoints.py writes: each entry summed in float64, divided by the count, stored float32."""
    return {name: (sum(state[name].to(torch.float64) for state in states) / len(states)).to(torch.float32)
            for name in states[0]}


def test_weights_averaged_by_timm_keep_their_record() -> None:
    """ timm's avg_checkpoints.py stores every entry as float32, the record's bytes included: the averaged weights
    load, still warn when built otherwise, and an average over checkpoints trained with other arguments (a record
    that is no longer bytes) or a record cut short is refused naming the fix, not decoded into noise."""
    averaged = _averaged_as_timm_does([make_block(score_scaling='straight_through').state_dict() for _ in range(2)])
    assert averaged['_extra_state'].dtype == torch.float32
    with pytest.warns(UserWarning, match=r"trained with score_scaling='straight_through'"):
        make_block().load_state_dict(averaged)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        make_block(score_scaling='straight_through').load_state_dict(averaged)

    # records of one length (timm's averaging needs equal shapes) whose bytes differ: '2' and '3' average to 50.5
    mixed = _averaged_as_timm_does([make_block(selector_gain=gain).state_dict() for gain in (2.0, 3.0)])
    with pytest.raises(ValueError, match=r'averaged over checkpoints trained with different MoD arguments.*drop'):
        make_block().load_state_dict(mixed)
    cut_short = dict(make_block().state_dict())  # bytes, but no longer JSON
    cut_short['_extra_state'] = cut_short['_extra_state'][:-3]
    with pytest.raises(ValueError, match=r'record of the MoD arguments .* is unreadable'):
        make_block().load_state_dict(cut_short)
