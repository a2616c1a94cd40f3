""" Deprecated: 0.3's path, kept so that imports written for it work.

Import from `timm_mod.experiments.in_memory_data` instead; this alias goes in 0.5 (as timm keeps
`timm.models.layers` for `timm.layers`)."""
import warnings

from ..experiments.in_memory_data import (  # noqa: F401
    DATA_PATHS, InMemorySplit, eval_batches, eval_split, in_memory_unsupported, resized_crops, train_batches)

__all__ = [
    'DATA_PATHS', 'InMemorySplit', 'eval_batches', 'eval_split', 'in_memory_unsupported', 'resized_crops',
    'train_batches',
]

warnings.warn('timm_mod.utils.in_memory_data is deprecated: import from timm_mod.experiments.in_memory_data',
              FutureWarning, stacklevel=2)
