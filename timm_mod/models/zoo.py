""" Deprecated: 0.3's path, kept so that imports written for it work.

Import from `timm_mod.models` instead; this alias goes in 0.5 (as timm keeps `timm.models.layers` for
`timm.layers`)."""
import warnings

from ._zoo import (  # noqa: F401
    OUR_MODELS, PAPER_BASELINE_GMACS, PAPER_MODELS, ZOO_COLUMNS, PaperModel, ZooRow, baseline_of,
    count_params_and_macs, describe_zoo, measure, zoo_table_rows)

__all__ = [
    'OUR_MODELS', 'PAPER_BASELINE_GMACS', 'PAPER_MODELS', 'ZOO_COLUMNS', 'PaperModel', 'ZooRow', 'baseline_of',
    'count_params_and_macs', 'describe_zoo', 'measure', 'zoo_table_rows',
]

warnings.warn('timm_mod.models.zoo is deprecated: import from timm_mod.models',
              FutureWarning, stacklevel=2)
