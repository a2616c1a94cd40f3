""" DistributedDataParallel over MoD models: two gloo processes on the CPU give the gradients of one process
over the same global batch, for learned and random routing, with no unused parameters.

Batch norm runs from its running statistics (timm's `freeze_batch_norm_2d`), so each sample's output does
not depend on how the batch is split; SyncBatchNorm, which makes that true for training-mode statistics,
needs a GPU. Random routing draws from each process's RNG; the one-process reference replays the
same seeds for the same halves of the batch.
"""
from pathlib import Path
from typing import Dict

import pytest
import timm
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from timm.layers import freeze_batch_norm_2d
from torch.nn.parallel import DistributedDataParallel

import timm_mod  # noqa: F401

WORLD_SIZE = 2
PER_RANK = 3
STEPS = 2  # DDP reports unused parameters when the second step starts


def make_model(routing: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return freeze_batch_norm_2d(timm.create_model('resnet18_mod', num_classes=5, routing=routing, drop_path_rate=0.1))


def global_batch(step: int):
    generator = torch.Generator().manual_seed(step)
    images = torch.randn(WORLD_SIZE * PER_RANK, 3, 32, 32, generator=generator)
    return images, torch.randint(0, 5, (WORLD_SIZE * PER_RANK,), generator=generator)


def routing_seed(step: int, rank: int) -> int:
    return 1000 * step + rank


def gradients(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _worker(rank: int, init_file: str, routing: str, out_dir: str) -> None:
    dist.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=WORLD_SIZE)
    model = DistributedDataParallel(make_model(routing).train())  # find_unused_parameters=False
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(STEPS):
        images, targets = global_batch(step)
        local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
        torch.manual_seed(routing_seed(step, rank))
        optimizer.zero_grad()
        F.cross_entropy(model(images[local]), targets[local]).backward()
        torch.save(gradients(model.module), Path(out_dir) / f'grads_{step}_{rank}.pt')
        optimizer.step()
    dist.destroy_process_group()


def one_process_reference(routing: str):
    """ The same steps over the whole batch in one process: the mean loss of the halves, each half with its rank's
    seed (learned routing draws nothing, so this is the plain global-batch loss)."""
    model = make_model(routing).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    for step in range(STEPS):
        images, targets = global_batch(step)
        optimizer.zero_grad()
        losses = []
        for rank in range(WORLD_SIZE):
            local = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
            torch.manual_seed(routing_seed(step, rank))
            losses.append(F.cross_entropy(model(images[local]), targets[local]))
        (sum(losses) / WORLD_SIZE).backward()
        steps.append(gradients(model))
        optimizer.step()
    return steps


@pytest.mark.parametrize('routing', ['learned', 'random'])
def test_two_process_ddp_equals_one_process_over_the_global_batch(tmp_path: Path, routing: str) -> None:
    mp.start_processes(_worker, args=(str(tmp_path / 'init'), routing, str(tmp_path)), nprocs=WORLD_SIZE,
                       start_method='spawn')
    for step, expected in enumerate(one_process_reference(routing)):
        for rank in range(WORLD_SIZE):
            got = torch.load(tmp_path / f'grads_{step}_{rank}.pt')
            assert got.keys() == expected.keys()
            assert any('selector' in name for name in got) == (routing == 'learned')
            for name, grad in expected.items():
                torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-6, msg=f'step {step} {name}')
