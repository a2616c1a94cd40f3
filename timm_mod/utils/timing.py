""" Timing models side by side: interleaved rounds in one process, medians, so that drifts in clock speed or load
hit every model alike and only ratios are reported."""
import logging
import statistics
from contextlib import contextmanager
from typing import Callable, Dict, Iterator, List

import torch

__all__ = ['time_side_by_side', 'cpu_threads']


def time_side_by_side(
        steps: Dict[str, Callable[[], None]],
        threads: int,
        rounds: int = 5,
        min_run_time: float = 0.2,
) -> Dict[str, float]:
    """ Median seconds per call of each step, timed round-robin so that all see the same conditions."""
    # imported here, its CUDA_HOME warning silenced: torch.utils.benchmark imports cpp_extension, which warns on
    # every machine without a CUDA toolkit about compiling extensions, which timing never does
    logging.getLogger('torch.utils.cpp_extension').setLevel(logging.ERROR)
    from torch.utils.benchmark import Timer
    for step in steps.values():  # warm-up, compilation included
        for _ in range(3):
            step()
    samples: Dict[str, List[float]] = {name: [] for name in steps}
    names = list(steps)
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            timer = Timer('step()', globals={'step': steps[name]}, num_threads=threads)
            samples[name].append(timer.blocked_autorange(min_run_time=min_run_time).median)
    return {name: statistics.median(values) for name, values in samples.items()}


@contextmanager
def cpu_threads(threads: int) -> Iterator[None]:
    """ torch's CPU thread count set for a block of work and restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
