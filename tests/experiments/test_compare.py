""" The compare tool: model specs, a study end to end on a tiny ImageFolder, interruption and resume, its outputs."""
import json
import re
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

from timm_mod.experiments.compare import (
    ModelSpec, compare, first_seed_curves, format_comparison, summarize_runs, write_comparison)
from timm_mod.experiments.recipe import load_train_args
from timm_mod.experiments.training import RunResult

from conftest import CONSOLE_SCRIPT, TINY_RECIPE, write_noise_folder

RECIPE = TINY_RECIPE


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


def test_the_plot_follows_each_models_first_seed_over_its_evaluated_epochs(tmp_path: Path) -> None:
    def run(seed: int, top1: list, **kwargs) -> RunResult:
        curve = [dict(epoch=epoch, train_loss=1.0, top1=value) for epoch, value in enumerate(top1, 1)]
        spec = ModelSpec('resnet18_mod', tuple(kwargs.items()))
        return RunResult('resnet18_mod', 100, 2e6, top1[-1], tmp_path, label=spec.label, seed=seed,
                         model_kwargs=kwargs, curve=curve)
    results = [run(2, [30.0, 50.0]), run(1, [40.0, None, 60.0]), run(0, [10.0, 20.0], routing='random')]
    specs = [ModelSpec('resnet18_mod'), ModelSpec('resnet18_mod', (('routing', 'random'),))]
    rows = summarize_runs(specs, results)
    assert first_seed_curves(rows, results) == {
        'resnet18_mod': [(1, 40.0), (3, 60.0)], 'resnet18_mod routing=random': [(1, 10.0), (2, 20.0)]}
    written = write_comparison(rows, tmp_path, results)
    assert [path.name for path in written] == ['compare.csv', 'compare.json', 'compare.png']
    without_runs = write_comparison(rows, tmp_path / 'without_runs')[-1]  # MACs only: no curves panel
    assert Image.open(tmp_path / 'compare.png').width > Image.open(without_runs).width


def _run_command(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([str(CONSOLE_SCRIPT), 'compare', *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, **kwargs)


def _state_dict(run_dir: Path):
    return torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']


def test_a_study_survives_interruption_and_resumes_to_the_uninterrupted_result(
        image_folder: Path, recipe_file: Path, tmp_path: Path) -> None:
    epochs = 5  # room to be sure the SIGTERM comes mid-run, even on a busy machine
    models = ['resnet18_mod@0,1', 'resnet18']
    study = tmp_path / 'study'
    common = ['-c', str(recipe_file), '--data-dir', str(image_folder), '--output-dir', str(study), '--rounds', '1',
              '--epochs', str(epochs), '--models', *models]
    # killed by SIGTERM during the first run, after its first epoch
    process = _run_command(*common)
    first_epoch = study / 'resnet18_mod' / 'seed0' / 'checkpoint-0.pth.tar'
    deadline = time.monotonic() + 300
    while not first_epoch.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, 'the study must still be running'
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
    assert re.search(rf'resnet18_mod seed 0: resumed after epoch [1-{epochs - 1}]/{epochs}', resumed.stderr)
    assert resumed.stderr.count('finished before') == 2
    assert len(list((study / 'resnet18_mod' / 'seed0').glob('checkpoint-*'))) == 1, "train.py's history of one"
    uninterrupted_rows, uninterrupted = compare(
        [ModelSpec('resnet18_mod', seeds=(0,))], load_train_args(recipe_file), image_folder, tmp_path / 'whole',
        epochs=epochs, measure_speed=False, progress=False)
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
    with pytest.raises(ValueError,
                       match=r'another recipe or data set \(differs in: recipe: epochs \(1 there, 2 now\)\)'):
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


@pytest.mark.parametrize('text, message', [
    ('resnet18_mod@-1', 'seed -1 is out of range'),
    ('resnet18_mod@', 'the seeds after @ must be integers'),
    ('resnet18_mod@0,0', 'a seed is given twice'),
])
def test_bad_seeds_are_clear_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelSpec.parse(text)


@pytest.mark.parametrize('models, seeds, message', [
    (['resnet18', 'resnet18_mod:foo=1'], (0,), "'resnet18_mod foo=1' cannot be built with these kwargs"),
    (['resnet18', 'resnet18_mod:c=abc'], (0,), "'resnet18_mod c=abc' cannot be built with these kwargs"),
    (['resnet18', 'resnet18'], (0,), "'resnet18' is given twice"),
    (['resnet18@0', 'resnet18_mod', 'resnet18@1'], (0,), r"'resnet18' is given twice; name it once, with all its "
                                                         r"seeds \(e.g. resnet18@0,1,2\)"),
    (['resnet18'], (0, -1), '--seeds: seed -1 is out of range'),
])
def test_every_spec_is_checked_before_anything_trains_or_is_written(
        image_folder: Path, recipe_file: Path, tmp_path: Path, models, seeds, message: str) -> None:
    specs = [ModelSpec.parse(text) for text in models]
    with pytest.raises(ValueError, match=message):
        compare(specs, load_train_args(recipe_file), image_folder, tmp_path / 'out', seeds=seeds, progress=False)
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('text, message', [
    (b'lr: [0.1,\nepochs: 2\n', 'is not valid YAML (line 3)'),
    (b'\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe', 'is not a text file'),
    (b'- lr\n- epochs\n', 'is not a train.py arg file: expected a mapping'),
    (b'num_classes: 2\nepochs: 0\n', 'epochs must be a whole number of at least 1, got 0'),
    (b'num_classes: 2\nbatch_size: sixteen\n', "batch_size must be a whole number of at least 1, got 'sixteen'"),
    (b'num_classes: 2\nmixup: 0.2\naa: rand-m9\n', 'sets aa, mixup, which timm-mod compare does not implement'),
])
def test_arg_file_mistakes_are_one_line_errors_naming_the_file(image_folder: Path, tmp_path: Path, text: bytes,
                                                                message: str) -> None:
    arg_file = tmp_path / 'recipe.yaml'
    arg_file.write_bytes(text)
    run = subprocess.run([str(CONSOLE_SCRIPT), 'compare', '-c', str(arg_file), '--data-dir', str(image_folder),
                          '--output-dir', str(tmp_path / 'out'), '--models', 'resnet18'],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert run.stderr.strip().splitlines() == [run.stderr.strip()] and 'Traceback' not in run.stderr, run.stderr
    assert str(arg_file) in run.stderr and message in run.stderr, run.stderr
    assert not (tmp_path / 'out').exists()


def test_an_arg_file_trains_what_it_leaves_out_as_train_py_would(image_folder: Path, tmp_path: Path) -> None:
    """ No input_size, split names, lr or augmentation: train.py's defaults, its lr = 0.1 * batch / 256, and the
    speed measured at the model's own input size (224 px for resnet18_mod)."""
    arg_file = tmp_path / 'short.yaml'
    arg_file.write_text('num_classes: 2\nepochs: 1\nbatch_size: 32\nworkers: 0\n')
    rows, results = compare([ModelSpec('resnet18_mod')], load_train_args(arg_file), image_folder, tmp_path / 'out',
                            bench_batch_size=1, rounds=1, progress=False)
    recorded = yaml.safe_load((results[0].checkpoint_dir / 'args.yaml').read_text())
    assert recorded['lr'] == pytest.approx(0.1 * 32 / 256)
    assert (recorded['scale'], recorded['smoothing'], recorded['train_split']) == ([0.08, 1.0], 0.1, 'train')
    assert rows[0].inference_ms > 0 and 'batch 1 of 3x224x224' in rows[0].speed_setting


def _predictions(run_dir: Path, folder: Path) -> np.ndarray:
    """ The class indices a trained run predicts for the images of `folder`, computed here image by image."""
    import timm
    from timm.data import create_transform
    checkpoint = torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)
    model = timm.create_model(checkpoint['arch'], num_classes=2)
    model.load_state_dict(checkpoint['state_dict'])
    transform = create_transform(input_size=(3, 32, 32), crop_pct=1.0, interpolation='bilinear')
    with torch.no_grad():
        return np.array([int(model.eval()(transform(Image.open(path).convert('RGB'))[None]).argmax(1))
                         for path in sorted(folder.glob('*.png'))])


def test_held_out_images_are_labelled_with_the_training_class_map(recipe_file: Path, tmp_path: Path) -> None:
    """ `validation/bright` is empty: timm's reader would number `dark` 0 on its own; it is class 1, as in train."""
    data = write_noise_folder(tmp_path / 'data', {'train': 48, 'validation': 12})
    for image in (data / 'validation' / 'bright').iterdir():
        image.unlink()
    _, results = compare([ModelSpec('resnet18')], load_train_args(recipe_file), data, tmp_path / 'out', epochs=1,
                         measure_speed=False, progress=False)
    predicted = _predictions(results[0].checkpoint_dir, data / 'validation' / 'dark')
    assert results[0].top1 == pytest.approx(100 * np.mean(predicted == 1))

    (data / 'validation' / 'grey').mkdir()
    (data / 'train' / 'dark' / '000.png').rename(data / 'validation' / 'grey' / '000.png')
    with pytest.raises(ValueError, match='has classes with no image in .*train: grey'):
        compare([ModelSpec('resnet18')], load_train_args(recipe_file), data, tmp_path / 'out2', progress=False)
    (data / 'validation' / 'grey' / '000.png').rename(data / 'train' / 'dark' / '000.png')
    with pytest.raises(ValueError, match='num_classes is 1, but .* has 2 classes'):
        compare([ModelSpec('resnet18')], dict(load_train_args(recipe_file), num_classes=1), data, tmp_path / 'out2',
                progress=False)
    assert not (tmp_path / 'out2').exists()


def _limited_file_size(limit: int):
    def apply() -> None:
        import resource
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes fail with EFBIG
    return apply


@pytest.mark.parametrize('limit, message', [
    (0, 'Cannot write to'), (2 ** 20, 'Cannot write the checkpoint of epoch 1')])
def test_a_full_disk_is_a_one_line_error_that_leaves_no_partial_checkpoint(
        image_folder: Path, recipe_file: Path, tmp_path: Path, limit: int, message: str) -> None:
    """ Files that cannot grow (a process file-size limit, as on a full disk): refused before training when
    nothing can be written, else a clear error at the first checkpoint with no 45 MB tmp.pth.tar left."""
    run = subprocess.run([str(CONSOLE_SCRIPT), 'compare', '-c', str(recipe_file), '--data-dir', str(image_folder),
                          '--output-dir', str(tmp_path / 'out'), '--models', 'resnet18', '--epochs', '1'],
                         capture_output=True, text=True, timeout=300, preexec_fn=_limited_file_size(limit))
    assert run.returncode != 0 and message in run.stderr and 'Traceback' not in run.stderr, run.stderr[-2000:]
    assert not list(tmp_path.rglob('tmp.pth.tar')) and not list(tmp_path.rglob('*.partial'))


def test_a_second_compare_on_the_same_folder_is_refused_while_the_first_runs(
        image_folder: Path, recipe_file: Path, tmp_path: Path) -> None:
    common = ['-c', str(recipe_file), '--data-dir', str(image_folder), '--output-dir', str(tmp_path / 'study'),
              '--models', 'resnet18', '--no-speed']
    first = _run_command(*common)
    deadline = time.monotonic() + 120
    while not (tmp_path / 'study' / 'study.json').exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, 'the first compare must still be running'
    first.send_signal(signal.SIGSTOP)  # it holds the folder, however long the second takes to start on a busy machine
    try:
        second = subprocess.run([str(CONSOLE_SCRIPT), 'compare', *common], capture_output=True, text=True,
                                timeout=120)
    finally:
        first.send_signal(signal.SIGTERM)
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=120)
    assert second.returncode != 0
    assert 'Another timm-mod compare is running in' in second.stderr and 'Traceback' not in second.stderr, \
        second.stderr
    after = subprocess.run([str(CONSOLE_SCRIPT), 'compare', *common, '--epochs', '2'], capture_output=True,
                           text=True, timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]


def test_a_sigterm_swallowed_by_a_finalizer_still_stops_the_next_step() -> None:
    """ Python runs the SIGTERM handler wherever the main thread is; inside a `__del__` its SystemExit is printed
    as ignored and lost (the race behind an interrupted study that once ran to the end with rc 0)."""
    script = '\n'.join([
        'import os, signal',
        'from timm_mod.utils.output import exit_cleanly_on_sigterm, stop_if_terminated',
        'exit_cleanly_on_sigterm()',
        'class Finalized:',
        '    def __del__(self):',
        '        os.kill(os.getpid(), signal.SIGTERM)',
        '        sum(range(1000))',
        'Finalized()',
        'print("handler swallowed", flush=True)',
        'for step in range(3):',
        '    stop_if_terminated()',
        'print("ran to the end")',
    ])
    run = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, timeout=60)
    assert run.stdout.splitlines() == ['handler swallowed'] and 'Exception ignored' in run.stderr
    assert run.returncode == 128 + signal.SIGTERM
