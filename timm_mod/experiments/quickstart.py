""" The quickstart: sklearn's handwritten digits as an ImageFolder, and a short CPU comparison run on them.

It is `compare` (experiments/compare.py) of a MoD model and its plain timm counterpart, one seed, with the packaged
train_args/quickstart.yaml, which stock train.py and validate.py read unchanged.
"""
from pathlib import Path
from typing import List, Optional, Tuple

from ..models import baseline_of, is_mod_model_name, require_registered
from ..utils.image_folder import stratified_split
from ..utils.output import check_outside_data, staged_output
from ..utils.package_data import package_file
from .compare import ComparisonRow, ModelSpec, compare, format_comparison
from .recipe import load_train_args
from .training import RunResult

__all__ = [
    'DIGITS_SPLITS', 'DEFAULT_DATA_DIR', 'quickstart_args_file', 'finetune_args_file', 'write_digits',
    'run_quickstart', 'format_results',
]

DIGITS_SPLITS = ('train', 'validation')
DIGITS_COUNT = 1797
DEFAULT_DATA_DIR = Path.home() / '.cache' / 'timm-mod' / 'digits'


def quickstart_args_file() -> Path:
    """ train_args/quickstart.yaml as installed with the package."""
    return package_file('train_args', 'quickstart.yaml')


def finetune_args_file() -> Path:
    """ train_args/finetune_from_plain.yaml as installed, an absolute path that train.py finds from any folder."""
    return package_file('train_args', 'finetune_from_plain.yaml')


def write_digits(root: Path, validation_fraction: float = 0.2, seed: int = 0) -> Path:
    """ Write sklearn's 1797 handwritten digits (8x8 px) once, as root/{train,validation}/<digit>/<n>.png.

    The split is stratified and fixed by `seed`. An existing complete copy is reused; any other
    non-empty folder is refused rather than overwritten.
    """
    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()):
        if all((root / split).is_dir() for split in DIGITS_SPLITS) and \
                sum(1 for _ in root.glob('*/*/*.png')) == DIGITS_COUNT:
            return root
        raise FileExistsError(
            f'{root} exists and is not a complete copy of the digits data set; choose another --data-dir '
            f'(nothing was written).')
    import numpy as np
    from PIL import Image
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "The quickstart data are scikit-learn's digits: pip install 'timm-mod[quickstart]'") from error

    digits = load_digits()
    splits = stratified_split(digits.target, validation_fraction, np.random.default_rng(seed))
    with staged_output(root) as staging:
        for split, indices in zip(('train', 'validation'), splits):
            for index in indices:
                folder = staging / split / str(digits.target[index])
                folder.mkdir(parents=True, exist_ok=True)
                pixels = (digits.images[index] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode='L').save(folder / f'{index:04d}.png')
    return root


def run_quickstart(
        train_args_file: Optional[Path] = None,
        data_dir: Path = DEFAULT_DATA_DIR,
        output_dir: Path = Path('output/quickstart'),
        model_name: Optional[str] = None,
        baseline_name: Optional[str] = None,
        epochs: Optional[int] = None,
        progress: bool = True,
) -> Tuple[List[ComparisonRow], List[RunResult]]:
    """ Write the digits once, then compare the MoD model with its plain timm counterpart under one recipe.

    Returns the comparison rows (MoD model first) and the two runs; checkpoints are in
    `output_dir/<model>/seed<seed>/`, and a run already finished there is reused, not trained again.
    """
    if epochs is not None and epochs < 1:
        raise ValueError(f'--epochs must be at least 1, got {epochs}; leave it out for the arg file\'s epochs.')
    train_args = load_train_args(train_args_file or quickstart_args_file())
    model_name = require_registered(model_name or train_args['model'])
    if not is_mod_model_name(model_name):
        raise ValueError(f'--model takes a MoD model, trained beside its plain timm counterpart; {model_name!r} is '
                         f'plain: give --model {model_name}_mod (`timm-mod list` lists them), or --baseline '
                         f'{model_name} with a MoD --model.')
    baseline_name = require_registered(baseline_name or baseline_of(model_name))
    check_outside_data(output_dir, data_dir)
    data_dir = write_digits(data_dir)
    return compare([ModelSpec(model_name), ModelSpec(baseline_name)], train_args, data_dir, output_dir,
                   seeds=(train_args.get('seed', 0),), epochs=epochs, progress=progress)


def format_results(rows: List[ComparisonRow]) -> str:
    """ The comparison table; its last line is the MoD model's held-out accuracy as `top-1: NN.NN`."""
    return f'{format_comparison(rows)}\ntop-1: {rows[0].top1_mean:.2f}'
