""" The compare tool: model specs, a study end to end on a tiny ImageFolder, interruption and resume, its outputs."""
import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from timm_mod.compare import ModelSpec, RunResult, compare, format_comparison, load_train_args, summarize_runs

CONSOLE_SCRIPT = Path(sys.executable).parent / 'timm-mod'
RECIPE = dict(
    num_classes=2, train_split='train', val_split='validation', input_size=[3, 32, 32], crop_pct=1.0,
    interpolation='bilinear', train_interpolation='bilinear', scale=[0.64, 1.0], ratio=[0.75, 1.33], hflip=0.5,
    color_jitter=0.0, smoothing=0.1, batch_size=16, epochs=2, opt='sgd', lr=0.05, momentum=0.9, weight_decay=5e-4,
    sched='cosine', warmup_epochs=0, min_lr=0.0, seed=0, workers=0)


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory) -> Path:
    """ Two classes a network can tell apart (bright and dark noise), 96 training and 16 held-out images each."""
    root = tmp_path_factory.mktemp('tiny')
    rng = np.random.default_rng(0)
    for split, count in (('train', 96), ('validation', 16)):
        for label, brightness in (('bright', 160), ('dark', 60)):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = np.clip(rng.normal(brightness, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f'{index:03d}.png')
    return root


@pytest.fixture(scope='module')
def recipe_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp('recipe') / 'tiny.yaml'
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def test_model_specs_parse_kwargs_as_train_py_does_and_name_their_folders() -> None:
    spec = ModelSpec.parse('resnet18:channels=(32,64,128,256),zero_init_last=False@1,2')
    assert spec.model_name == 'resnet18' and spec.seeds == (1, 2)
    assert spec.kwargs == {'channels': (32, 64, 128, 256), 'zero_init_last': False}
    assert spec.folder_name == 'resnet18@channels=(32,64,128,256),zero_init_last=False'
    random = ModelSpec.parse('resnet18_mod:routing=random,c=16')
    assert random.kwargs == {'routing': 'random', 'c': 16} and random.seeds is None
    assert random.label == 'resnet18_mod routing=random c=16'
    assert ModelSpec.parse('resnet18_mod').folder_name == 'resnet18_mod'


@pytest.mark.parametrize('text, message', [
    ('resnet18_mod:routing', "'routing' is not KEY=VALUE"),
    ('resnet18_mod@first', 'the seeds after @ must be integers'),
    ('resnet18_moe', "Unknown model 'resnet18_moe'"),
])
def test_bad_model_specs_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec.parse(text)


def test_summary_is_mean_and_sample_std_over_seeds(tmp_path: Path) -> None:
    top1 = {0: 71.0, 1: 74.5, 2: 70.25}
    results = [RunResult('resnet18_mod', 100, 2e6, value, tmp_path, seed=seed, label='resnet18_mod')
               for seed, value in top1.items()]
    results.append(RunResult('resnet18_mod', 100, 2e6, 10.0, tmp_path, model_kwargs={'c': 16}))
    narrow = ModelSpec.parse('resnet18:channels=(32,64,128,256)')
    stored = RunResult('resnet18', 100, 3e6, 20.0, tmp_path, model_kwargs=narrow.kwargs).to_json()
    results.append(RunResult.from_json(json.loads(json.dumps(stored))))  # as read back from result.json
    specs = [ModelSpec('resnet18_mod'), ModelSpec('resnet18_mod', (('c', 16),)), ModelSpec('resnet18'), narrow]
    rows = summarize_runs(specs, results)
    assert [row.label for row in rows] == ['resnet18_mod', 'resnet18_mod c=16', narrow.label], \
        'specs without runs are left out; tuple kwargs read back from JSON still match'
    assert rows[0].seeds == 3 and rows[0].top1_mean == pytest.approx(np.mean(list(top1.values())))
    assert rows[0].top1_std == pytest.approx(np.std(list(top1.values()), ddof=1))
    assert (rows[1].seeds, rows[1].top1_std) == (1, 0.0)
    table = format_comparison(rows)
    assert f'{statistics.fmean(top1.values()):.2f} +- {statistics.stdev(top1.values()):.2f}' in table
    assert table.splitlines()[2].split()[:4] == ['resnet18_mod', 'c=16', '1', '10.00']


def _run_command(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([str(CONSOLE_SCRIPT), 'compare', *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def _state_dict(run_dir: Path):
    return torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']


def test_a_study_survives_interruption_and_resumes_to_the_uninterrupted_result(
        image_folder: Path, recipe_file: Path, tmp_path: Path) -> None:
    models = ['resnet18_mod@0,1', 'resnet18']
    study = tmp_path / 'study'
    common = ['-c', str(recipe_file), '--data-dir', str(image_folder), '--output-dir', str(study), '--rounds', '1',
              '--models', *models]
    # killed by SIGTERM during the first run's second (last) epoch
    process = _run_command(*common)
    first_epoch = study / 'resnet18_mod' / 'seed0' / 'checkpoint-0.pth.tar'
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert process.returncode != 0
    assert (study / 'resnet18_mod' / 'seed0' / 'last.pth.tar').exists()
    assert not (study / 'resnet18_mod' / 'seed0' / 'result.json').exists(), 'the run must have been cut short'

    # skipping the unfinished run trains the others and leaves it out of the table
    skipping = subprocess.run([str(CONSOLE_SCRIPT), 'compare', *common, '--unfinished', 'skip', '--no-speed'],
                              capture_output=True, text=True)
    assert skipping.returncode == 0, skipping.stderr
    assert 'resnet18_mod seed 0: unfinished, skipped' in skipping.stderr
    table = skipping.stdout.splitlines()
    assert [line.split()[:2] for line in table[1:]] == [['resnet18_mod', '1'], ['resnet18', '1']]
    assert not (study / 'resnet18_mod' / 'seed0' / 'result.json').exists()

    # resumed: finishes from its last epoch, reuses the finished runs, and ends where an uninterrupted run ends
    resumed = subprocess.run([str(CONSOLE_SCRIPT), 'compare', *common], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert 'resnet18_mod seed 0: resumed after epoch 1/2' in resumed.stderr
    assert resumed.stderr.count('finished before') == 2
    assert len(list((study / 'resnet18_mod' / 'seed0').glob('checkpoint-*'))) == 1, "train.py's history of one"
    uninterrupted_rows, uninterrupted = compare(
        [ModelSpec('resnet18_mod', seeds=(0,))], load_train_args(recipe_file), image_folder, tmp_path / 'whole',
        measure_speed=False, progress=False)
    for name, value in _state_dict(uninterrupted[0].checkpoint_dir).items():
        assert torch.equal(_state_dict(study / 'resnet18_mod' / 'seed0')[name], value), name
    records = json.loads((study / 'compare.json').read_text())
    seed_results = [json.loads((study / 'resnet18_mod' / f'seed{s}' / 'result.json').read_text())['top1']
                    for s in (0, 1)]
    assert seed_results[0] == uninterrupted_rows[0].top1_mean
    assert records[0]['top1_mean'] == pytest.approx(statistics.fmean(seed_results))
    assert records[1]['inference_speedup'] == records[1]['train_speedup'] == 1.0
    assert {'compare.csv', 'compare.json', 'compare.png'} <= {p.name for p in study.iterdir()}
    assert not list(study.rglob('.*partial*')), 'no staging files are left behind'


def test_a_study_refuses_another_recipe_in_its_folder_before_training(
        image_folder: Path, recipe_file: Path, tmp_path: Path) -> None:
    args = load_train_args(recipe_file)
    compare([ModelSpec('resnet18')], args, image_folder, tmp_path, epochs=1, measure_speed=False, progress=False)
    finished = sorted(p.name for p in tmp_path.rglob('*'))
    with pytest.raises(ValueError, match=r'another recipe or data set \(differs in: epochs\)'):
        compare([ModelSpec('resnet18_mod')], args, image_folder, tmp_path, epochs=2, progress=False)
    assert sorted(p.name for p in tmp_path.rglob('*')) == finished, 'nothing was trained or written'


@pytest.mark.parametrize('kwargs, message', [
    (dict(unfinished='restart'), "--unfinished must be one of \\('resume', 'skip'\\)"),
    (dict(epochs=0), '--epochs must be at least 1, got 0'),
    (dict(seeds=()), '--seeds is empty'),
    (dict(bench_batch_size=0), '--bench-batch-size must be at least 1'),
])
def test_bad_study_arguments_are_refused_before_anything_is_written(
        image_folder: Path, recipe_file: Path, tmp_path: Path, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compare([ModelSpec('resnet18')], load_train_args(recipe_file), image_folder, tmp_path / 'out', **kwargs)
    assert not (tmp_path / 'out').exists()
