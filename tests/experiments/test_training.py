""" A run can start from trained weights, as train.py's --initial-checkpoint: a plain model converted to MoD."""
from pathlib import Path

import pytest
import torch
import yaml

from timm_mod.experiments.compare import ModelSpec, compare
from timm_mod.experiments.recipe import load_train_args
from timm_mod.experiments.training import train_and_evaluate
from timm_mod.experiments.convert import convert_plain_weights

from conftest import TINY_RECIPE, train_py_checkpoint


def test_a_run_starts_from_the_initial_checkpoint(tmp_path: Path, image_folder: Path) -> None:
    train_py_checkpoint(tmp_path / 'resnet18.pth.tar', 'resnet18', num_classes=2)
    start = convert_plain_weights('resnet18_mod', tmp_path / 'start.pth', checkpoint_path=tmp_path / 'resnet18.pth.tar')
    expected = torch.load(start, map_location='cpu')
    # a learning rate too small to move a weight: after one epoch the convolutions are still the checkpoint's
    recipe = dict(TINY_RECIPE, epochs=1, lr=1e-12, weight_decay=0.0, initial_checkpoint=str(start))
    for name, kwargs in (('fine-tuned', recipe), ('from scratch', dict(recipe, initial_checkpoint=''))):
        train_and_evaluate('resnet18_mod', kwargs, image_folder, tmp_path / name, progress=False)
        trained = torch.load(tmp_path / name / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']
        convs = [key for key, value in expected.items() if value.ndim == 4]
        assert len(convs) == 20  # stem, 16 block convs (4 of them slim), 3 downsample convs
        same = [torch.allclose(trained[key], expected[key], atol=1e-9) for key in convs]
        assert all(same) if name == 'fine-tuned' else not any(same)


def test_a_missing_initial_checkpoint_is_refused_before_anything_is_written(
        tmp_path: Path, image_folder: Path) -> None:
    args_file = tmp_path / 'args.yaml'
    args_file.write_text(yaml.safe_dump(dict(TINY_RECIPE, initial_checkpoint=str(tmp_path / 'nowhere.pth'))))
    args = load_train_args(args_file)  # an arg file may name a checkpoint that an earlier step writes
    with pytest.raises(FileNotFoundError, match='nowhere.pth.*timm-mod convert'):
        compare([ModelSpec('resnet18_mod')], args, image_folder, tmp_path / 'study', measure_speed=False)
    assert not (tmp_path / 'study').exists()
