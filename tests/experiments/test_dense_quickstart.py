""" The dense-prediction quickstart: digit scenes in standard formats, both heads trained and evaluated, metrics,
the command end to end."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import timm_mod  # noqa: F401
from timm_mod.experiments.dense_quickstart import (
    DigitScenes, check_dense_folder, format_dense_results, run_dense_quickstart, segmentation_metrics, train_dense,
    write_dense_data)


@pytest.fixture(scope='module')
def scenes(tmp_path_factory) -> Path:
    return write_dense_data(tmp_path_factory.mktemp('dense') / 'scenes')


def test_scenes_are_deterministic_standard_files(scenes: Path, tmp_path: Path) -> None:
    again = write_dense_data(tmp_path / 'again')
    for relative in ('train/annotations.json', 'validation/masks/00007.png', 'train/images/00100.png'):
        assert (scenes / relative).read_bytes() == (again / relative).read_bytes()
    coco = json.loads((scenes / 'validation' / 'annotations.json').read_text())
    assert len(coco['images']) == 300 and {c['name'] for c in coco['categories']} == {str(d) for d in range(10)}
    for annotation in coco['annotations'][:50]:  # every box holds its digit's pixels in the mask
        image = coco['images'][annotation['image_id']]
        mask = np.array(Image.open(scenes / 'validation' / 'masks' / image['file_name']))
        x, y, w, h = annotation['bbox']
        assert (mask[y:y + h, x:x + w] == annotation['category_id']).any()
    assert write_dense_data(scenes) == scenes, 'a complete copy is reused'


def test_data_folders_in_the_wrong_format_are_clear_errors(scenes: Path, tmp_path: Path) -> None:
    (tmp_path / 'train' / 'images').mkdir(parents=True)
    with pytest.raises(ValueError, match=r'is not a detection split: annotations.json missing'):
        check_dense_folder(tmp_path, 'train', 'detection')
    with pytest.raises(ValueError, match=r'is not a segmentation split: masks missing'):
        DigitScenes(tmp_path, 'train', 'segmentation')
    with pytest.raises(FileExistsError, match='not a complete copy'):
        write_dense_data(tmp_path)
    assert DigitScenes(scenes, 'validation', 'detection')[0][1]['boxes'].shape[1] == 4


@pytest.mark.parametrize('task', ['segmentation', 'detection'])
def test_both_heads_train_with_falling_loss_and_evaluate(scenes: Path, task: str) -> None:
    _, result = train_dense(task, 'resnet18_mod', scenes, epochs=3, max_steps=6, max_validation=16, progress=False)
    assert result.losses[-1] < result.losses[0]
    expected = {'mIoU', 'mAcc', 'aAcc'} if task == 'segmentation' else {'mAP', 'mAP50'}
    assert set(result.metrics) == expected and all(0 <= v <= 100 for v in result.metrics.values())


def test_segmentation_metrics_from_a_confusion_matrix() -> None:
    confusion = torch.tensor([[8, 2, 0], [1, 3, 0], [0, 0, 0]])  # class 2 never labelled: not averaged
    metrics = segmentation_metrics(confusion)
    assert metrics['aAcc'] == pytest.approx(100 * 11 / 14)
    assert metrics['mAcc'] == pytest.approx(100 * (8 / 10 + 3 / 4) / 2)
    assert metrics['mIoU'] == pytest.approx(100 * (8 / 11 + 3 / 6) / 2)


@pytest.mark.parametrize('task, headline', [('segmentation', 'mIoU'), ('detection', 'mAP50')])
def test_dense_quickstart_end_to_end_on_a_reduced_budget(scenes: Path, task: str, headline: str) -> None:
    rows = run_dense_quickstart(task, data_dir=scenes, epochs=1, max_steps=2, max_validation=8, progress=False)
    assert [row['backbone'] for row in rows] == ['resnet18_mod', 'resnet18']
    assert rows[0]['params'] < rows[1]['params'] and rows[0]['macs'] < rows[1]['macs']
    assert rows[1]['speedup'] == pytest.approx(1.0)
    text = format_dense_results(task, rows)
    assert text.splitlines()[-1] == f'{headline}: {rows[0][headline]:.2f}'
    assert 'resnet18_mod' in text and 'speed-up' in text
