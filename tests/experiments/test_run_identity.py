""" A study reuses a run only when it is the same run, trains nothing it cannot train, and never writes into its
data: the model in any spelling, the data changed in place, results put back from elsewhere, studies started by
timm-mod 0.3, a split smaller than a batch, an output folder inside the data."""
import hashlib
import json
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from timm_mod.experiments.compare import ModelSpec, compare
from timm_mod.experiments.recipe import load_train_args
from timm_mod.experiments.training import train_and_evaluate

from conftest import CONSOLE_SCRIPT, TINY_RECIPE, write_noise_folder


def _study(specs, data: Path, out: Path, **kwargs):
    return compare([ModelSpec.parse(text) for text in specs], dict(TINY_RECIPE), data, out, epochs=1,
                   measure_speed=False, progress=False, **kwargs)


def _listing(folder: Path) -> list:
    return sorted((str(p.relative_to(folder)), p.stat().st_size if p.is_file() else -1) for p in folder.rglob('*'))


def test_the_same_model_in_any_spelling_is_one_run(image_folder: Path, tmp_path: Path) -> None:
    """ Options in another order, a default written out, a list for a tuple: one folder, trained once."""
    assert ModelSpec.parse('resnet18_mod:c=64').canonical(2) == ModelSpec.parse('resnet18_mod').canonical(2)
    assert ModelSpec.parse('resnet18_mod:r=16,c=16').canonical(2).folder_name == 'resnet18_mod@c=16'
    assert ModelSpec.parse('resnet18:channels=[32,64,128,256]').canonical(2).folder_name == \
        'resnet18@channels=(32,64,128,256)'
    assert ModelSpec.parse('resnet18:zero_init_last=False').canonical(2).kwargs == {'zero_init_last': False}, \
        'a kwarg that changes only the initial weights is kept'
    assert ModelSpec.parse('resnet18_mod:selector_decay=False').canonical(2).kwargs == {'selector_decay': False}, \
        'a kwarg that changes no weight but how the model trains is kept'
    assert ModelSpec.parse('resnet18_mod:selector_decay=True').canonical(2).kwargs == {}

    _, first = _study(['resnet18_mod:c=16,r=8'], image_folder, tmp_path)
    trained = _listing(tmp_path)
    rows, again = _study(['resnet18_mod:r=8,c=16,fusion=first'], image_folder, tmp_path)
    assert _listing(tmp_path) == trained, 'nothing was trained again'
    assert [r.top1 for r in again] == [r.top1 for r in first] and rows[0].seeds == 1
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ['resnet18_mod@c=16,r=8']

    with pytest.raises(ValueError, match=r"'resnet18_mod c=64' is given twice \(as 'resnet18_mod': the same model\)"):
        _study(['resnet18_mod', 'resnet18_mod:c=64'], image_folder, tmp_path / 'twice')


def test_data_changed_in_place_is_refused_before_training(tmp_path: Path) -> None:
    data = write_noise_folder(tmp_path / 'data', {'train': 24, 'validation': 4})
    _study(['resnet18@0'], data, tmp_path / 'study')
    shutil.copy(data / 'train' / 'dark' / '000.png', data / 'train' / 'dark' / 'extra.png')
    before = _listing(tmp_path / 'study')
    with pytest.raises(ValueError, match=r'differs in: train data \(48 images there, 49 images now\)'):
        _study(['resnet18@0', 'resnet18_mod@0'], data, tmp_path / 'study')
    assert _listing(tmp_path / 'study') == before, 'nothing was trained or written'


def test_a_result_put_back_from_another_study_is_not_adopted(image_folder: Path, tmp_path: Path) -> None:
    _study(['resnet18@0'], image_folder, tmp_path / 'one_epoch')
    put_back = tmp_path / 'other' / 'resnet18' / 'seed0'
    put_back.mkdir(parents=True)
    shutil.copy(tmp_path / 'one_epoch' / 'resnet18' / 'seed0' / 'result.json', put_back)
    with pytest.raises(ValueError, match=r'holds another run than resnet18 seed 0 of this study \(differs in: '
                                         r'recipe: epochs \(1 there, 2 now\)\)'):
        compare([ModelSpec('resnet18', seeds=(0,))], dict(TINY_RECIPE), image_folder, tmp_path / 'other',
                measure_speed=False, progress=False)

    record = json.loads((put_back / 'result.json').read_text())
    del record['identity']  # a result file as timm-mod 0.3 wrote it, or committed by hand
    (put_back / 'result.json').write_text(json.dumps(record))
    with pytest.raises(ValueError, match='holds a run with no record of what it trained'):
        compare([ModelSpec('resnet18', seeds=(0,))], dict(TINY_RECIPE), image_folder, tmp_path / 'other',
                measure_speed=False, progress=False)
    assert not (put_back.parent / 'seed0' / 'last.pth.tar').exists()


def test_a_study_started_by_timm_mod_0_3_is_adopted_with_its_runs(image_folder: Path, tmp_path: Path) -> None:
    """ 0.3's study.json hashed the arg file as given (epochs set, seed left out) and recorded no data; its runs
    recorded no identity. Same recipe and data folder: the study goes on, its runs reused."""
    _, first = _study(['resnet18@0'], image_folder, tmp_path)
    result_file = tmp_path / 'resnet18' / 'seed0' / 'result.json'
    result = json.loads(result_file.read_text())
    del result['identity']
    result_file.write_text(json.dumps(result))
    recipe = {key: value for key, value in dict(TINY_RECIPE, epochs=1).items() if key != 'seed'}
    (tmp_path / 'study.json').write_text(json.dumps(dict(
        recipe=recipe, data_dir=str(image_folder.resolve()),
        recipe_sha256=hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest())))
    _, again = _study(['resnet18@0'], image_folder, tmp_path)
    assert again[0].top1 == first[0].top1 and not (tmp_path / 'resnet18' / 'seed0' / 'run.json').exists()
    assert json.loads(result_file.read_text())['identity']['seed'] == 0, 'the adopted run now records its identity'
    assert 'data' in json.loads((tmp_path / 'study.json').read_text())


def test_a_split_smaller_than_one_batch_is_refused_before_training(image_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r'train has 192 training images, fewer than one batch of 256: training '
                                         r'would take no step'):
        compare([ModelSpec('resnet18')], dict(TINY_RECIPE, batch_size=256), image_folder, tmp_path / 'out',
                progress=False)
    assert not (tmp_path / 'out').exists()


def test_no_output_inside_the_data(image_folder: Path, tmp_path: Path) -> None:
    data = tmp_path / 'data'
    shutil.copytree(image_folder, data)
    before = _listing(data)
    for output in (data / 'train' / 'figures', data):
        with pytest.raises(ValueError, match='lies inside the data folder'):
            _study(['resnet18'], data, output)
    run = subprocess.run([str(CONSOLE_SCRIPT), 'selection', '--model', 'resnet18_mod', '--data-dir', str(data),
                          '--output', str(data / 'validation' / 'selection')], capture_output=True, text=True)
    assert run.returncode != 0 and 'lies inside the data folder' in run.stderr and 'Traceback' not in run.stderr
    assert _listing(data) == before


def test_ctrl_c_is_one_line_saying_how_to_resume(image_folder: Path, recipe_file: Path, tmp_path: Path) -> None:
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), 'compare', '-c', str(recipe_file), '--data-dir', str(image_folder), '--output-dir',
         str(tmp_path / 'study'), '--models', 'resnet18', '--no-speed', '--epochs', '30'],  # long enough to interrupt
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        # as in a terminal: a test runner started in the background (`cmd &`) passes SIGINT on ignored
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (tmp_path / 'study' / 'resnet18' / 'seed0' / 'last.pth.tar').exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert process.poll() is None, 'the study must still be running'
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    last_line = stderr.strip().splitlines()[-1]
    assert process.returncode == 1 and 'Traceback' not in stderr, stderr
    assert last_line == ('timm-mod compare: interrupted; run the same command again to resume: finished runs are '
                         'kept, an interrupted one continues after its last finished epoch.')


def _damaged_copy(image_folder: Path, tmp_path: Path, damage) -> Path:
    data = tmp_path / 'data'
    shutil.copytree(image_folder, data)
    damage(data / 'train' / 'dark' / '007.png')
    return data


@pytest.mark.parametrize('damage, data_path, message', [
    (lambda path: path.write_bytes(path.read_bytes()[:200]), 'auto', r'Cannot decode the image .*007.png'),
    (lambda path: path.write_bytes(b''), 'auto', r'Cannot decode the image .*007.png'),
])
def test_damaged_images_are_one_line_errors_naming_the_file(
        image_folder: Path, recipe_file: Path, tmp_path: Path, damage, data_path: str, message: str) -> None:
    data = _damaged_copy(image_folder, tmp_path, damage)
    run = subprocess.run([str(CONSOLE_SCRIPT), 'compare', '-c', str(recipe_file), '--data-dir', str(data),
                          '--output-dir', str(tmp_path / 'out'), '--models', 'resnet18', '--no-speed',
                          '--data-path', data_path], capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and 'Traceback' not in run.stderr, run.stderr[-3000:]
    assert re.search(message, run.stderr.strip().splitlines()[-1]), run.stderr


def test_one_image_of_another_size_is_named_with_the_way_out(recipe_file: Path, tmp_path: Path) -> None:
    """ 600 training images: the size check before decoding samples every second one, so the odd image at an
    odd position (dark/007 is the 308th) is met while decoding, and named there."""
    from PIL import Image
    data = write_noise_folder(tmp_path / 'data', {'train': 300, 'validation': 2})
    Image.new('RGB', (40, 40)).save(data / 'train' / 'dark' / '007.png')
    run = subprocess.run([str(CONSOLE_SCRIPT), 'compare', '-c', str(recipe_file), '--data-dir', str(data),
                          '--output-dir', str(tmp_path / 'out'), '--models', 'resnet18', '--no-speed'],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and 'Traceback' not in run.stderr, run.stderr[-3000:]
    assert re.search(r'dark/007.png is 40x40 px, the images before it 32x32: the in-memory path needs one size; '
                     r'resize that image, or train with --data-path loader.$', run.stderr.strip()), run.stderr


def test_an_initial_checkpoint_that_does_not_fit_is_refused_before_any_training(
        image_folder: Path, tmp_path: Path) -> None:
    import timm
    other = tmp_path / 'resnet34.pth'
    torch.save(timm.create_model('resnet34', num_classes=2).state_dict(), other)
    five_classes = tmp_path / 'resnet18_5.pth'
    torch.save(timm.create_model('resnet18', num_classes=5).state_dict(), five_classes)
    for path, message in ((other, r'does not fit resnet18 with num_classes 2: the checkpoint has layer1.2, layer2.2, '
                                  r'layer2.3, layer3.2, layer3.3, layer3.4 the model lacks'),
                          (five_classes, r'does not fit resnet18 with num_classes 2: the classifier has 5 classes in '
                                         r'the checkpoint, 2 in the model: pass num_classes=5')):
        with pytest.raises(ValueError, match=message):
            compare([ModelSpec('resnet18'), ModelSpec('resnet18_mod')], dict(TINY_RECIPE, initial_checkpoint=str(path)),
                    image_folder, tmp_path / 'out', measure_speed=False, progress=False)
    assert not (tmp_path / 'out').exists()


def test_a_damaged_checkpoint_to_resume_is_named_before_anything_trains(image_folder: Path, tmp_path: Path) -> None:
    _study(['resnet18_mod@0', 'resnet18@0'], image_folder, tmp_path)
    run_dir = tmp_path / 'resnet18' / 'seed0'
    record = json.loads((run_dir / 'result.json').read_text())
    (run_dir / 'run.json').write_text(json.dumps(dict(identity=record['identity'])))  # an interrupted run
    (run_dir / 'result.json').unlink()
    (run_dir / 'last.pth.tar').write_bytes((run_dir / 'last.pth.tar').read_bytes()[:1000])
    shutil.rmtree(tmp_path / 'resnet18_mod')  # trains first, unless the refusal comes first
    with pytest.raises(ValueError, match=rf'{run_dir}/last.pth.tar cannot be resumed from .* remove the folder '
                                         rf'{run_dir} and run the same command again'):
        _study(['resnet18_mod@0', 'resnet18@0'], image_folder, tmp_path)
    assert not (tmp_path / 'resnet18_mod' / 'seed0' / 'result.json').exists()


def test_a_run_resumes_only_on_the_data_path_it_started_on(image_folder: Path, tmp_path: Path) -> None:
    args = dict(TINY_RECIPE, epochs=2)
    train_and_evaluate('resnet18', dict(args, epochs=1), image_folder, tmp_path, progress=False)
    with pytest.raises(ValueError, match=r'started with --data-path memory, not loader: resume it with the same'):
        train_and_evaluate('resnet18', args, image_folder, tmp_path, progress=False, data_path='loader')
    copy = shutil.copytree(image_folder, tmp_path.parent / f'{tmp_path.name}_copy')
    with pytest.raises(ValueError, match=r'started with --data-dir .*tiny0, not .*_copy'):
        train_and_evaluate('resnet18', args, copy, tmp_path, progress=False)
    recorded = yaml.safe_load((tmp_path / 'args.yaml').read_text())
    assert recorded['data_dir'] == str(image_folder.absolute()) and recorded['data_path'] == 'memory'


def test_arg_file_gaps_and_unknown_keys_are_said(tmp_path: Path, caplog) -> None:
    arg_file = tmp_path / 'recipe.yaml'
    arg_file.write_text('num_classes: 2\nweight-decay: 0.01\nbatchsize: 64\n')
    with caplog.at_level('WARNING'):
        args = load_train_args(arg_file)
    messages = [record.getMessage() for record in caplog.records]
    assert f"warning: {arg_file}: 'weight-decay' is not a train.py option; train.py ignores it, and so does this " \
           f"study (did you mean 'weight_decay'?)." in messages
    assert any("'batchsize' is not a train.py option" in m and "'batch_size'" in m for m in messages)
    assert f"note: {arg_file} sets no epochs; train.py's default of 300 applies." in messages
    assert 'epochs' not in args


def test_cooldown_epochs_are_said_when_training_starts(image_folder: Path, tmp_path: Path, capsys) -> None:
    result = train_and_evaluate('resnet18', dict(TINY_RECIPE, epochs=1, cooldown_epochs=1), image_folder, tmp_path,
                                progress_prefix='[run] ')
    assert result.epochs == 2
    assert "[run] training 2 epochs: 1 and the arg file's 1 cooldown epochs" in capsys.readouterr().err


def test_a_distillation_compare_cannot_do_is_refused_rather_than_trained_without_the_teacher(
        image_folder: Path, tmp_path: Path) -> None:
    """ compare distils logits (test_distillation.py); train.py's feature and token distillation it refuses."""
    with pytest.raises(ValueError, match='sets kd_distill_type, which timm-mod compare does not implement'):
        compare([ModelSpec('resnet18')], dict(TINY_RECIPE, kd_model_name='resnet34', kd_distill_type='feature'),
                image_folder, tmp_path / 'out')
    assert not (tmp_path / 'out').exists()


def test_quickstart_says_it_takes_a_mod_model(tmp_path: Path) -> None:
    run = subprocess.run([str(CONSOLE_SCRIPT), 'quickstart', '--model', 'resnet18', '--output', str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and 'Traceback' not in run.stderr
    assert "--model takes a MoD model, trained beside its plain timm counterpart; 'resnet18' is plain" in run.stderr
