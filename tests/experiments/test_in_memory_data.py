""" The in-memory training path against timm's loader: the same images, labels and class map, the same eval
tensors, crops as PIL computes them, the same augmentation statistics, and the fallback to timm's loader."""
import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.utils import random_seed

from timm_mod.experiments.compare import ModelSpec, compare
from timm_mod.experiments.recipe import complete_train_args, load_train_args
from timm_mod.experiments.training import train_and_evaluate
from timm_mod.utils.image_folder import check_class_maps
from timm_mod.experiments.in_memory_data import (
    InMemorySplit, eval_batches, eval_split, in_memory_unsupported, resized_crops, train_batches)

from conftest import TINY_RECIPE, write_noise_folder

DATA_CONFIG = dict(input_size=(3, 32, 32), interpolation='bilinear', crop_pct=1.0, crop_mode='center',
                   mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def _cfg(**overrides) -> argparse.Namespace:
    return argparse.Namespace(**complete_train_args(dict(TINY_RECIPE, **overrides)))


def test_decoded_splits_hold_timm_readers_images_labels_and_class_map(tmp_path: Path) -> None:
    data = write_noise_folder(tmp_path, {'train': 5, 'validation': 3})
    for image in (data / 'validation' / 'bright').iterdir():  # labels come from the training split's class map
        image.unlink()
    class_map = check_class_maps(data, 'train', 'validation', 2)
    for split in ('train', 'validation'):
        dataset = create_dataset('', root=str(data), split=split, class_map=class_map)
        decoded = InMemorySplit.load(data, split, class_map)
        assert decoded.images.dtype == torch.uint8 and decoded.images.shape == (len(dataset), 3, 32, 32)
        for index, (image, target) in enumerate(dataset):
            assert torch.equal(decoded.images[index], torch.from_numpy(np.array(image)).permute(2, 0, 1))
            assert decoded.targets[index] == target
    assert InMemorySplit.load(data, 'validation', class_map).targets.tolist() == [1, 1, 1]

    held_out = eval_split(data, 'validation', class_map, DATA_CONFIG)
    loader = create_loader(create_dataset('', root=str(data), split='validation', class_map=class_map),
                           batch_size=2, use_prefetcher=False, **{k: v for k, v in DATA_CONFIG.items()
                                                                   if k != 'crop_mode'})
    for (mine, my_targets), (theirs, their_targets) in zip(eval_batches(held_out, 2), loader):
        assert torch.equal(mine, theirs) and torch.equal(my_targets, their_targets)


@pytest.mark.parametrize('box', [(0, 0, 32, 32), (3, 5, 28, 30), (10, 2, 30, 18), (0, 7, 21, 32)])
def test_crops_are_pils_bilinear_resize_of_the_box(box) -> None:
    """ PIL computes RandomResizedCrop's resize; enlarging (what a crop of a 32 px image to 32 px does), ours
    matches it to one uint8 level (PIL resamples in fixed point, so a fifth of the pixels round the other way)."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    theirs = np.asarray(Image.fromarray(pixels).resize((32, 32), Image.BILINEAR, box=box)).astype(int)
    ours = resized_crops(torch.from_numpy(pixels).permute(2, 0, 1)[None], torch.tensor([box], dtype=torch.float32),
                         (32, 32))[0].permute(1, 2, 0).numpy().astype(int)
    assert np.abs(ours - theirs).max() <= 1 and np.abs(ours - theirs).mean() < 0.3


def test_augmented_batches_have_the_statistics_of_timms_loader(tmp_path: Path) -> None:
    """ Crop scale and flips over many draws: per-pixel mean and spread of the normalized batches, and how often
    a left-right gradient image comes out mirrored, agree with timm's training loader."""
    root = tmp_path / 'ramp'
    for split in ('train', 'validation'):
        (root / split / 'ramp').mkdir(parents=True)
        ramp = np.tile(np.linspace(0, 255, 32, dtype=np.uint8)[None, :, None], (32, 1, 3))
        for index in range(64):
            Image.fromarray(ramp).save(root / split / 'ramp' / f'{index}.png')
    cfg = _cfg(num_classes=1, scale=[0.3, 1.0], ratio=[0.75, 1.333], hflip=0.5, batch_size=64)
    data_config = resolve_data_config(dict(input_size=(3, 32, 32), crop_pct=1.0, interpolation='bilinear'))
    class_map = {'ramp': 0}
    split = InMemorySplit.load(root, 'train', class_map)
    loader = create_loader(create_dataset('', root=str(root), split='train', is_training=True), batch_size=64,
                           is_training=True, scale=cfg.scale, ratio=cfg.ratio, hflip=cfg.hflip, color_jitter=0.0,
                           interpolation='bilinear', input_size=(3, 32, 32), mean=data_config['mean'],
                           std=data_config['std'], use_prefetcher=False, num_workers=0)
    random_seed(0)  # timm's loader draws crops from Python's random, flips from torch's
    ours = torch.cat([batch for seed in range(30) for batch, _ in
                      train_batches(split, cfg, data_config, torch.Generator().manual_seed(seed))])
    theirs = torch.cat([batch for _ in range(30) for batch, _ in loader])
    assert ours.shape == theirs.shape == (30 * 64, 3, 32, 32)
    mirrored = [float((batch[:, 0, :, 0] > batch[:, 0, :, -1]).float().mean()) for batch in (ours, theirs)]
    assert mirrored[0] == pytest.approx(0.5, abs=0.05) and mirrored[1] == pytest.approx(0.5, abs=0.05)
    width = [float((batch[:, 0, 16, -1] - batch[:, 0, 16, 0]).abs().mean()) for batch in (ours, theirs)]
    assert width[0] == pytest.approx(width[1], rel=0.05), 'crops span the same share of the ramp'
    assert float(ours.mean()) == pytest.approx(float(theirs.mean()), abs=0.04)  # 2.5 standard errors
    assert float(ours.std()) == pytest.approx(float(theirs.std()), rel=0.02)


def test_recipes_or_data_the_path_does_not_cover_fall_back_to_timms_loader(image_folder: Path, tmp_path: Path
                                                                         ) -> None:
    assert in_memory_unsupported(_cfg(), image_folder, (3, 32, 32)) is None
    assert 'bicubic' in in_memory_unsupported(_cfg(train_interpolation='bicubic'), image_folder, (3, 32, 32))
    assert 'color_jitter 0.4' in in_memory_unsupported(_cfg(color_jitter=0.4), image_folder, (3, 32, 32))
    assert 'GiB of decoded images, over half' in in_memory_unsupported(_cfg(), image_folder, (3, 32, 32),
                                                                       available_bytes=10_000)
    mixed = write_noise_folder(tmp_path / 'mixed', {'train': 2, 'validation': 1})
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(mixed / 'train' / 'dark' / 'big.png')
    assert 'of 2 sizes' in in_memory_unsupported(_cfg(), mixed, (3, 32, 32))
    with pytest.raises(ValueError, match='--data-path memory cannot train this run: color_jitter'):
        train_and_evaluate('resnet18', dict(TINY_RECIPE, color_jitter=0.4), image_folder, tmp_path / 'run',
                           data_path='memory', progress=False)


def test_both_paths_learn_the_same_task_and_record_a_learning_curve(image_folder: Path, recipe_file: Path,
                                                                    tmp_path: Path) -> None:
    """ Both paths separate bright from dark noise; the curve has one point per epoch, evaluated per val_interval
    and at the last epoch, as train.py evaluates."""
    args = dict(load_train_args(recipe_file), epochs=3, val_interval=2)
    runs = {path: compare([ModelSpec('resnet18')], args, image_folder, tmp_path / path, measure_speed=False,
                          progress=False, data_path=path)[1][0] for path in ('memory', 'loader')}
    for path, run in runs.items():
        assert run.top1 > 90, path
        assert [point['epoch'] for point in run.curve] == [1, 2, 3]
        assert [point['top1'] is not None for point in run.curve] == [False, True, True]
        assert run.curve[-1]['top1'] == run.top1
