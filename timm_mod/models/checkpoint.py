""" Deprecated: 0.3's path, kept so that imports written for it work. Import the checkpoint helpers from
`timm_mod.models` and the conversion from `timm_mod.experiments.convert` instead; this alias goes in 0.5 (as timm keeps
`timm.models.layers` for `timm.layers`)."""
import warnings

from ..experiments.convert import convert_plain_weights, mod_from_plain, plain_counterpart  # noqa: F401
from ._helpers import (  # noqa: F401
    Checkpoint, infer_num_classes, load_checkpoint_file, load_trained_model, model_from_checkpoint)

__all__ = [
    'Checkpoint', 'convert_plain_weights', 'infer_num_classes', 'load_checkpoint_file', 'load_trained_model',
    'mod_from_plain', 'model_from_checkpoint', 'plain_counterpart',
]

warnings.warn('timm_mod.models.checkpoint is deprecated: import from timm_mod.models and timm_mod.experiments.convert',
              FutureWarning, stacklevel=2)
