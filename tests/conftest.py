""" Fixtures shared by the test modules: small real ImageFolders and a train.py arg file sized for them."""
import argparse
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image

CONSOLE_SCRIPT = Path(sys.executable).parent / 'timm-mod'
INPUT = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # leaves the global RNG alone

TINY_RECIPE = dict(
    num_classes=2, train_split='train', val_split='validation', input_size=[3, 32, 32], crop_pct=1.0,
    interpolation='bilinear', train_interpolation='bilinear', scale=[0.64, 1.0], ratio=[0.75, 1.33], hflip=0.5,
    color_jitter=0.0, smoothing=0.1, batch_size=16, epochs=2, opt='sgd', lr=0.05, momentum=0.9, weight_decay=5e-4,
    sched='cosine', warmup_epochs=0, min_lr=0.0, seed=0, workers=0)


def write_noise_folder(root: Path, counts: dict, size: int = 32, seed: int = 0) -> Path:
    """ An ImageFolder of two classes a network can tell apart, bright and dark noise: `counts` maps each split
    to its number of images per class."""
    rng = np.random.default_rng(seed)
    for split, count in counts.items():
        for label, brightness in (('bright', 160), ('dark', 60)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(rng.normal(brightness, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'{index:03d}.png')
    return root


@pytest.fixture(scope='session')
def image_folder(tmp_path_factory) -> Path:
    """ Bright and dark noise, 96 training and 16 held-out images each (read-only for the tests)."""
    return write_noise_folder(tmp_path_factory.mktemp('tiny'), {'train': 96, 'validation': 16})


@pytest.fixture(scope='session')
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('recipe') / 'tiny.yaml'
    path.write_text(yaml.safe_dump(TINY_RECIPE))
    return path


def train_py_checkpoint(
        path: Path, model_name: str, num_classes: int = 5, ema: bool = False, **model_kwargs) -> torch.nn.Module:
    """ A checkpoint laid out as train.py's CheckpointSaver writes it, from two real SGD steps."""
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=num_classes, **model_kwargs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(INPUT), torch.tensor([0, 1])).backward()
        optimizer.step()
    args = argparse.Namespace(model=model_name, num_classes=num_classes, model_kwargs=model_kwargs,
                              input_size=[3, 64, 64], crop_pct=0.9, interpolation='bicubic')
    checkpoint = {'epoch': 1, 'arch': model_name, 'state_dict': model.state_dict(), 'args': args, 'metric': 12.5}
    if ema:
        checkpoint['state_dict_ema'] = {
            k: v + 0.5 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(checkpoint, path)
    return model.eval()


@pytest.fixture(scope='session')
def digits(tmp_path_factory) -> Path:
    """ The quickstart's digits ImageFolder, written once for the session (read-only for the tests)."""
    from timm_mod.experiments.quickstart import write_digits
    return write_digits(tmp_path_factory.mktemp('data') / 'digits')
