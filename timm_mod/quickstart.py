""" The quickstart: sklearn's handwritten digits as an ImageFolder, and a short CPU training run with timm.

The run uses the components timm's train.py uses (`create_dataset`, `create_loader`, `optimizer_kwargs` +
`create_optimizer_v2`, `scheduler_kwargs` + `create_scheduler_v2`, `LabelSmoothingCrossEntropy`,
`CheckpointSaver`, `accuracy`), configured by the same YAML file train.py reads with `-c`, so stock
train.py and validate.py reproduce it on the same data folder.
"""
import argparse
import shutil
import sys
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any, Dict, List, Optional

import timm
import torch
import torch.nn as nn
import yaml
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2, optimizer_kwargs
from timm.scheduler import create_scheduler_v2, scheduler_kwargs
from timm.utils import AverageMeter, CheckpointSaver, accuracy

from ._builder import require_registered
from .zoo import baseline_of, format_table, measure

__all__ = [
    'DIGITS_SPLITS', 'DEFAULT_DATA_DIR', 'quickstart_args_file', 'load_train_args', 'write_digits',
    'check_image_folder', 'RunResult', 'train_and_evaluate', 'run_quickstart', 'format_results',
]

DIGITS_SPLITS = ('train', 'validation')
DIGITS_COUNT = 1797
DEFAULT_DATA_DIR = Path.home() / '.cache' / 'timm-mod' / 'digits'


def quickstart_args_file() -> Path:
    """ train_args/quickstart.yaml as installed with the package."""
    return Path(str(files('timm_mod') / 'train_args' / 'quickstart.yaml'))


def finetune_args_file() -> Path:
    """ train_args/finetune_from_dense.yaml as installed, an absolute path that train.py finds from any folder."""
    return Path(str(files('timm_mod') / 'train_args' / 'finetune_from_dense.yaml'))


def load_train_args(path: Path) -> Dict[str, Any]:
    """ A train.py arg file, read the way train.py reads `-c FILE` (a flat YAML mapping of option names)."""
    with open(path) as f:
        args = yaml.safe_load(f)
    if not isinstance(args, dict):
        raise ValueError(f'{path} is not a train.py arg file: expected a mapping of train.py option names.')
    return args


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
    rng = np.random.default_rng(seed)
    staging = root.with_name(root.name + '.partial')
    shutil.rmtree(staging, ignore_errors=True)
    for label in range(10):
        indices = rng.permutation(np.flatnonzero(digits.target == label))
        num_validation = round(len(indices) * validation_fraction)
        for split, split_indices in (('validation', indices[:num_validation]), ('train', indices[num_validation:])):
            folder = staging / split / str(label)
            folder.mkdir(parents=True)
            for index in split_indices:
                pixels = (digits.images[index] * (255 / 16)).round().astype(np.uint8)
                Image.fromarray(pixels, mode='L').save(folder / f'{index:04d}.png')
    root.parent.mkdir(parents=True, exist_ok=True)
    staging.replace(root)
    return root


def check_image_folder(root: Path, split: str) -> Path:
    """ The split folder, or a clear error when it is not an ImageFolder (class subfolders of images)."""
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise FileNotFoundError(f'No {split!r} split in {root}: expected the folder {folder}/<class name>/<images>.')
    if not any(child.is_dir() for child in folder.iterdir()):
        raise ValueError(
            f'{folder} has no class subfolders: an ImageFolder split holds one folder per class, '
            f'{folder}/<class name>/<image files>.')
    return folder


@dataclass(frozen=True)
class RunResult:
    """ One trained model, evaluated on the held-out split."""
    model_name: str
    params: int
    macs: float
    top1: float
    checkpoint_dir: Path


def _evaluate(model: nn.Module, loader) -> float:
    model.eval()
    top1 = AverageMeter()
    with torch.no_grad():
        for images, targets in loader:
            top1.update(accuracy(model(images), targets)[0].item(), images.shape[0])
    return top1.avg


def train_and_evaluate(
        model_name: str,
        train_args: Dict[str, Any],
        data_dir: Path,
        output_dir: Path,
        epochs: Optional[int] = None,
        progress: bool = True,
) -> RunResult:
    """ Train `model_name` from scratch with train.py's recipe semantics and evaluate on the held-out split.

    Args:
        model_name: Any timm model name.
        train_args: train.py options (a loaded arg file); `epochs` overrides its epoch count.
        data_dir: ImageFolder root with the arg file's train and validation splits.
        output_dir: Where CheckpointSaver writes last.pth.tar / model_best.pth.tar and args.yaml.
        progress: Print one line per epoch to stderr.
    """
    # an argparse.Namespace like train.py's: CheckpointSaver stores it, and timm's loaders allow-list it
    cfg = argparse.Namespace(**dict(
        train_args, model=model_name, epochs=train_args['epochs'] if epochs is None else epochs,
        data_dir=str(data_dir)))
    for split in (cfg.train_split, cfg.val_split):
        check_image_folder(data_dir, split)
    torch.manual_seed(cfg.seed)
    model = timm.create_model(
        require_registered(model_name), num_classes=cfg.num_classes, drop_rate=getattr(cfg, 'drop', 0.0))
    data_config = resolve_data_config(vars(cfg), model=model)

    dataset_train = create_dataset('', root=str(data_dir), split=cfg.train_split, is_training=True)
    dataset_eval = create_dataset('', root=str(data_dir), split=cfg.val_split)
    loader_kwargs = dict(
        input_size=data_config['input_size'], mean=data_config['mean'], std=data_config['std'],
        num_workers=cfg.workers, use_prefetcher=False, device=torch.device('cpu'), persistent_workers=False)
    loader_train = create_loader(
        dataset_train, batch_size=cfg.batch_size, is_training=True, scale=cfg.scale, ratio=cfg.ratio,
        hflip=cfg.hflip, color_jitter=cfg.color_jitter, interpolation=cfg.train_interpolation, **loader_kwargs)
    loader_eval = create_loader(
        dataset_eval, batch_size=cfg.batch_size, interpolation=data_config['interpolation'],
        crop_pct=data_config['crop_pct'], **loader_kwargs)

    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg))
    scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(cfg))
    loss_fn = LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing else nn.CrossEntropyLoss()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / 'args.yaml', 'w') as f:
        yaml.safe_dump(vars(cfg), f)
    saver = CheckpointSaver(
        model, optimizer, args=cfg, checkpoint_dir=str(output_dir), recovery_dir=str(output_dir),
        decreasing=False, max_history=1)

    top1 = 0.0
    for epoch in range(num_epochs):
        start, losses = time.time(), AverageMeter()
        model.train()
        for images, targets in loader_train:
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.update(loss.item(), images.shape[0])
        scheduler.step(epoch + 1)
        top1 = _evaluate(model, loader_eval)
        saver.save_checkpoint(epoch, metric=top1)
        if progress:
            print(f'{model_name}  epoch {epoch + 1}/{num_epochs}  loss {losses.avg:.3f}  held-out top-1 {top1:.2f}  '
                  f'({time.time() - start:.1f} s)', file=sys.stderr, flush=True)

    params, macs = measure(model, input_size=data_config['input_size'])
    return RunResult(model_name, params, macs, top1, output_dir)


def run_quickstart(
        train_args_file: Optional[Path] = None,
        data_dir: Path = DEFAULT_DATA_DIR,
        output_dir: Path = Path('output/quickstart'),
        model_name: Optional[str] = None,
        baseline_name: Optional[str] = None,
        epochs: Optional[int] = None,
        progress: bool = True,
) -> List[RunResult]:
    """ Write the digits once, then train the MoD model and its plain timm counterpart with one recipe."""
    if epochs is not None and epochs < 1:
        raise ValueError(f'--epochs must be at least 1, got {epochs}; leave it out for the arg file\'s epochs.')
    train_args = load_train_args(train_args_file or quickstart_args_file())
    model_name = model_name or train_args['model']
    for name in (model_name, baseline_name or model_name):
        require_registered(name)
    baseline_name = baseline_name or baseline_of(model_name)
    data_dir = write_digits(data_dir)
    return [
        train_and_evaluate(name, train_args, data_dir, Path(output_dir) / name, epochs=epochs, progress=progress)
        for name in (model_name, baseline_name)
    ]


def format_results(results: List[RunResult]) -> str:
    """ The results table; its last line is the MoD model's held-out accuracy as `top-1: NN.NN`."""
    rows = [(r.model_name, f'{r.params / 1e6:.2f}', f'{r.macs / 1e6:.1f}', f'{r.top1:.2f}') for r in results]
    table = format_table(('model', 'params (M)', 'MMACs', 'held-out top-1 (%)'), rows)
    return f'{table}\ntop-1: {results[0].top1:.2f}'
