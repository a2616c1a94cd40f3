""" Deprecated: 0.3's path, kept so that imports written for it work.

Import from `timm_mod.experiments.publish` instead; this alias goes in 0.5 (as timm keeps `timm.models.layers` for
`timm.layers`)."""
import warnings

from ..experiments.publish import (  # noqa: F401
    check_hub_access, publish, read_results, reconstruction_args, render_model_card)

__all__ = [
    'check_hub_access', 'publish', 'read_results', 'reconstruction_args', 'render_model_card',
]

warnings.warn('timm_mod.models.hub is deprecated: import from timm_mod.experiments.publish',
              FutureWarning, stacklevel=2)
