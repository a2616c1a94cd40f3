""" What the channel selector does: how often each channel is selected, per MoD block and per class.

The paper's Section 5.1 and Figure 4. Forward hooks on every selector record its scores; their top k
(`top_k_channels`, as the block takes them) are exactly the channels the MoD block routes, so the model
runs unchanged, in eval mode. Frequencies are percentages of all selections in a block, as in
the paper's figure; they sum to 100 per block and class.
"""
import csv
import json
import math
import sys
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from timm.data import resolve_data_config

from ..layers import MoDBlock, fixed_channel_indices, routing_hooks, selector_blocks, top_k_channels
from ..utils.image_folder import eval_image_folder
from ..utils.output import check_output_folder, staged_output
from ..utils.tables import pyplot, save_figure

__all__ = [
    'SelectionCounts', 'BlockSummary', 'SelectorState', 'count_selections', 'summarize', 'write_selection',
    'selector_states', 'fixed_random_routing', 'neighbour_routing', 'RoutingAblation',
]


@dataclass
class SelectionCounts:
    """ counts[block][class, channel]: how many samples of the class routed the channel through the block."""
    class_names: List[str]
    samples: torch.Tensor  # (num_classes,) samples seen per class
    counts: Dict[str, torch.Tensor]
    k: Dict[str, int]
    states: Dict[str, 'SelectorState'] = field(default_factory=dict)  # on the first PROBE_IMAGES images
    ablation: Optional['RoutingAblation'] = None  # None when the model's classes are not the folder's

    def percent(self, block: str, class_index: Optional[int] = None) -> torch.Tensor:
        """ Share of the block's selections that went to each channel, in percent (all classes if None)."""
        counts = self.counts[block].sum(0) if class_index is None else self.counts[block][class_index]
        total = counts.sum()
        return counts.double() * 100 / total if total > 0 else counts.double()


@dataclass(frozen=True)
class BlockSummary:
    block: str
    channels: int
    k: int
    ever_selected: int
    entropy_bits: float  # of the overall selection distribution; log2(k) if always the same k channels
    max_entropy_bits: float  # log2(channels): every channel equally often
    class_overlap: float  # mean Jaccard overlap of the per-class top-k channel sets, over class pairs


@dataclass(frozen=True)
class SelectorState:
    """ What one selector does on a batch, in eval mode: whether it still scores the channels apart.

    A hidden unit is dead when its input is <= 0 for every image (behind the paper's ReLU it then passes nothing
    and gets no gradient; behind another `selector_act` it is only counted);
    the spread is, per image, the highest channel score minus the lowest, averaged over the images (0: every
    channel scored alike, so top-k is the tie rule); `distinct_channels` is how many channels some image routes.
    The norms are of both layers' weights together, the gradient's as left by the last training step (None in a
    model that has not taken one).
    """
    hidden_units: int
    dead_units: int
    score_spread: float
    distinct_channels: int
    k: int
    channels: int
    weight_norm: float
    grad_norm: Optional[float]


PROBE_IMAGES = 256  # images a selector's state is measured on
ABLATION_SEED = 0  # the fixed random channels of the routing ablation


@dataclass(frozen=True)
class RoutingAblation:
    """ How much accuracy the learned routing carries: top-1 on the same images with each selector's top k, with
    each block's top k replaced by one fixed random set of k channels (`fixed_random_routing`), and with each
    image routed as its selectors route the previous image of its batch (`neighbour_routing`)."""
    images: int
    top1_learned: float
    top1_fixed_random: float
    seed: int
    top1_neighbour: Optional[float] = None  # None in files written before it was measured

    @property
    def carried(self) -> float:
        """ Points of top-1 the learned choice of channels is worth over a fixed random one: what the choice says
        about each image, and also whatever the network adapted to in the sets it learned to route."""
        return self.top1_learned - self.top1_fixed_random

    @property
    def carried_per_image(self) -> Optional[float]:
        """ Points of top-1 that each image's own choice is worth over another image's."""
        return None if self.top1_neighbour is None else self.top1_learned - self.top1_neighbour


@contextmanager
def _routes_replaced(model: nn.Module, choose: Callable[[str, MoDBlock, torch.Tensor, torch.Tensor], torch.Tensor]
                     ) -> Iterator[None]:
    """ Inside the block, every MoD block with a selector routes the channels (B, k) that `choose(block name, block,
    block input, selector scores)` picks, each scaled by its own selector score as the block scales it (not at all
    with score_scaling='straight_through'); the blocks route as before on exit."""
    blocks = selector_blocks(model)

    def replaced(name: str, block: MoDBlock):
        def route(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
            scores = block.selector(x)
            indices = choose(name, block, x, scores)
            return indices, scores.gather(1, indices)
        return route

    try:
        for name, block in blocks.items():
            block.route = replaced(name, block)  # the instance attribute shadows MoDBlock.route
        yield
    finally:
        for block in blocks.values():
            block.__dict__.pop('route', None)


@contextmanager
def fixed_random_routing(model: nn.Module, seed: int = 0) -> Iterator[Dict[str, torch.Tensor]]:
    """ Inside the block, every MoD block with a selector routes one fixed random set of k channels (drawn from
    `seed`, the same for every image): the learned choice of channels is taken away, and with it any set the
    network has adapted to. Yields the channels drawn per block."""
    generator = torch.Generator().manual_seed(seed)
    drawn = {name: torch.randperm(block.in_channels, generator=generator)[:block.k]
             for name, block in selector_blocks(model).items()}
    with _routes_replaced(model, lambda name, _block, x, _scores: fixed_channel_indices(x, drawn[name].to(x.device))):
        yield drawn


@contextmanager
def neighbour_routing(model: nn.Module) -> Iterator[None]:
    """ Inside the block, every MoD block with a selector routes, for each image of a batch, the channels its
    selector picks for the previous image (the first image: the last's). The channels keep their distribution over
    images, so a selector that always picks the same ones loses nothing; only what the choice says about each image
    is taken away. A batch of one image routes its own choice."""
    with _routes_replaced(model, lambda _name, block, _x, scores: top_k_channels(scores, block.k)[1].roll(1, 0)):
        yield


def selector_states(model: nn.Module, images: torch.Tensor) -> Dict[str, SelectorState]:
    """ The state of every selector of `model` on `images` (forward hooks, in eval mode, no gradient; the model's
    training mode is put back afterwards)."""
    blocks = selector_blocks(model)
    hidden: Dict[str, torch.Tensor] = {}
    scores: Dict[str, torch.Tensor] = {}

    def keep(store: Dict[str, torch.Tensor], name: str):
        def hook(_module: nn.Module, _inputs, output: torch.Tensor) -> None:
            store[name] = output.detach().clone()  # the ReLU after fc1 works in place
        return hook

    handles = [hook for name, block in blocks.items() for hook in (
        block.selector.fc1.register_forward_hook(keep(hidden, name)),
        block.selector.register_forward_hook(keep(scores, name)))]
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()(images)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    states = {}
    for name, block in blocks.items():
        weights = [block.selector.fc1.weight, block.selector.fc2.weight]
        grads = [w.grad for w in weights if w.grad is not None]
        states[name] = SelectorState(
            hidden_units=hidden[name].shape[1],
            dead_units=int((hidden[name] <= 0).all(0).sum()),
            score_spread=float((scores[name].amax(1) - scores[name].amin(1)).mean()),
            distinct_channels=int(top_k_channels(scores[name], block.k)[1].unique().numel()),
            k=block.k,
            channels=block.in_channels,
            weight_norm=float(torch.cat([w.detach().flatten() for w in weights]).norm()),
            grad_norm=float(torch.cat([g.flatten() for g in grads]).norm()) if len(grads) == len(weights) else None)
    return states


def _selector_blocks(model: nn.Module) -> Dict[str, MoDBlock]:
    blocks = selector_blocks(model)
    if not blocks:
        raise ValueError(
            f'{type(model).__name__} has no MoD block with a channel selector, so there is no selection to count '
            f'(a plain timm model, or random routing); use a *_mod model.')
    return blocks


def count_selections(
        model: nn.Module,
        data_dir: Path,
        split: str = 'validation',
        classes: Optional[Sequence[str]] = None,
        max_per_class: Optional[int] = None,
        batch_size: int = 32,
        data_config: Optional[Dict] = None,
        progress: bool = True,
) -> SelectionCounts:
    """ Count the top-k channels of every MoD block over an ImageFolder split, per class."""
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f'--max-per-class must be at least 1, got {max_per_class}; leave it out to count all.')
    if batch_size < 1:
        raise ValueError(f'--batch-size must be at least 1, got {batch_size}.')
    blocks = _selector_blocks(model)
    dataset = eval_image_folder(data_dir, split, data_config or resolve_data_config({}, model=model))
    class_to_idx = dataset.reader.class_to_idx
    class_names = sorted(class_to_idx, key=class_to_idx.get)
    wanted = set(class_names if classes is None else classes)
    unknown = wanted - set(class_names)
    if unknown:
        raise ValueError(f'Unknown classes {sorted(unknown)} in {data_dir}/{split}; it has {class_names}.')
    taken: Dict[int, int] = {}
    keep = []
    for index, (_, target) in enumerate(dataset.reader.samples):
        if class_names[target] in wanted and (max_per_class is None or taken.get(target, 0) < max_per_class):
            taken[target] = taken.get(target, 0) + 1
            keep.append(index)
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, keep), batch_size=batch_size)

    counts = {
        name: torch.zeros(len(class_names), block.in_channels, dtype=torch.long) for name, block in blocks.items()}
    samples = torch.zeros(len(class_names), dtype=torch.long)
    scored = getattr(model, 'num_classes', None) == len(class_names)  # the model's classes are the folder's
    correct = {'learned': 0, 'fixed random': 0, 'neighbour': 0}
    batch_targets: List[torch.Tensor] = []  # the classes of the batch being run, for the hooks
    probe: List[torch.Tensor] = []  # the first PROBE_IMAGES images, for the selectors' state

    def record(name: str, routed: torch.Tensor) -> None:
        if not batch_targets:  # the ablated pass: its selectors run, but route nothing counted
            return
        chosen = routed.new_zeros(routed.shape[0], blocks[name].in_channels).scatter_(1, routed, 1)
        counts[name].index_add_(0, batch_targets[0], chosen)

    model.eval()
    try:
        with routing_hooks(blocks, record), torch.no_grad():
            for batch_index, (images, targets) in enumerate(loader):
                batch_targets[:] = [targets]
                correct['learned'] += int((model(images).argmax(1) == targets).sum())
                if scored:
                    batch_targets.clear()
                    with fixed_random_routing(model, ABLATION_SEED):
                        correct['fixed random'] += int((model(images).argmax(1) == targets).sum())
                    with neighbour_routing(model):
                        correct['neighbour'] += int((model(images).argmax(1) == targets).sum())
                if sum(len(batch) for batch in probe) < PROBE_IMAGES:
                    probe.append(images)
                samples += torch.bincount(targets, minlength=len(class_names))
                if progress:
                    print(f'\rselection: batch {batch_index + 1}/{len(loader)}', end='', file=sys.stderr, flush=True)
    finally:
        if progress:
            print(file=sys.stderr)
    states = selector_states(model, torch.cat(probe)[:PROBE_IMAGES]) if probe else {}
    images = int(samples.sum())
    ablation = RoutingAblation(images, 100 * correct['learned'] / images, 100 * correct['fixed random'] / images,
                               ABLATION_SEED, 100 * correct['neighbour'] / images) if scored and images else None
    return SelectionCounts(class_names, samples, counts, {name: block.k for name, block in blocks.items()}, states,
                           ablation)


def summarize(selection: SelectionCounts, top: Optional[int] = None) -> List[BlockSummary]:
    """ Per block: channels ever selected, entropy of the selection distribution, overlap of class top sets."""
    summaries = []
    for name, counts in selection.counts.items():
        k = selection.k[name]
        overall = counts.sum(0).double()
        p = overall[overall > 0] / overall.sum()
        entropy = float(-(p * p.log2()).sum()) + 0.0 if len(p) else 0.0  # + 0.0 turns -0.0 into 0.0
        seen = [c for c in range(counts.shape[0]) if selection.samples[c] > 0]
        tops = [set(counts[c].topk(top or k).indices.tolist()) for c in seen]
        overlaps = [len(a & b) / len(a | b) for a, b in combinations(tops, 2)]
        summaries.append(BlockSummary(
            name, counts.shape[1], k, int((overall > 0).sum()), entropy, math.log2(counts.shape[1]),
            sum(overlaps) / len(overlaps) if overlaps else float('nan')))
    return summaries


def write_selection(
        selection: SelectionCounts,
        output: Path,
        plot_classes: Optional[Sequence[str]] = None,
) -> List[Path]:
    """ selection.csv (block, class, channel, count, percent), selection.json, and one PNG per block, each
    written whole (`staged_output`)."""
    output = check_output_folder(output)
    with staged_output(output / 'selection.csv') as staging, open(staging, 'w', newline='') as f:
        writer = csv.writer(f)
        writer.writerow(['block', 'class', 'channel', 'count', 'percent'])
        for name, counts in selection.counts.items():
            for class_index, class_name in enumerate(selection.class_names):
                percent = selection.percent(name, class_index)
                for channel in range(counts.shape[1]):
                    writer.writerow([name, class_name, channel, int(counts[class_index, channel]),
                                     f'{float(percent[channel]):.4f}'])
    report = {
        'classes': selection.class_names,
        'samples': selection.samples.tolist(),
        'blocks': {name: {'k': selection.k[name], 'counts': counts.tolist(),
                          'percent_all_classes': selection.percent(name).tolist()}
                   for name, counts in selection.counts.items()},
        'summary': [s.__dict__ for s in summarize(selection)],
        'selector_states': {name: asdict(state) for name, state in selection.states.items()},
        'routing_ablation': None if selection.ablation is None else asdict(selection.ablation),
    }
    with staged_output(output / 'selection.json') as staging:
        staging.write_text(json.dumps(report, indent=1))
    paths = [output / 'selection.csv', output / 'selection.json']
    return paths + _plot(selection, output, plot_classes)


def _plot(selection: SelectionCounts, output: Path, plot_classes: Optional[Sequence[str]]) -> List[Path]:
    """ Figure 4 of the paper per block: overall frequencies on top, chosen classes below."""
    plt = pyplot('selection_*.png')
    if plt is None:
        return []
    seen = [n for i, n in enumerate(selection.class_names) if selection.samples[i] > 0]
    classes = list(plot_classes or seen[:5])
    paths = []
    for name in selection.counts:
        fig, axes = plt.subplots(len(classes) + 1, 1, figsize=(10, 1.6 * (len(classes) + 1)), sharex=True,
                                 squeeze=False)
        axes = axes[:, 0]
        channels = range(selection.counts[name].shape[1])
        panels = [('all counted classes', None)] + [(f'class {c}', selection.class_names.index(c)) for c in classes]
        for ax, (title, class_index) in zip(axes, panels):
            ax.bar(channels, selection.percent(name, class_index).numpy(), width=1.0,
                   color='#555555' if class_index is None else '#3b75af')
            ax.set_ylabel('%', fontsize=8)
            ax.set_title(title, fontsize=9, loc='left')
        axes[-1].set_xlabel('channel')
        fig.suptitle(f'{name}: share of the top-{selection.k[name]} selections per channel', fontsize=10)
        fig.tight_layout()
        paths.append(save_figure(fig, output / f"selection_{name.replace('.', '_')}.png", dpi=100))
    return paths
