""" MoD from a model already trained: the distillation loss against its formula written out, a teacher of another
class count refused, and a converted resnet18_mod distilled from its published plain teacher by `compare` with
train_args/cifar10_distill.yaml on the digits, interrupted and resumed to the bit-identical result."""
import argparse
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F

from timm_mod.experiments.compare import ModelSpec, compare
from timm_mod.experiments.recipe import complete_train_args, load_train_args
from timm_mod.experiments.training import training_loss
from timm_mod.experiments.convert import convert_plain_weights
from timm_mod.experiments.publish import publish

from conftest import CONSOLE_SCRIPT, TINY_RECIPE, train_py_checkpoint

DISTILL_ARGS = Path(__file__).parents[2] / 'train_args' / 'cifar10_distill.yaml'


@pytest.mark.parametrize('weights, task_weight, distill_weight', [
    (dict(), 1.0, 1.0),                                              # train.py's default: both 1
    (dict(task_loss_weight=0.25), 0.25, 0.75),                       # only the task weight: they add to 1
    (dict(task_loss_weight=0.4, distill_loss_weight=0.7), 0.4, 0.7),
])
def test_the_distilled_loss_is_cross_entropy_plus_the_tempered_kl_to_the_teacher(
        weights: dict, task_weight: float, distill_weight: float) -> None:
    torch.manual_seed(0)
    student, teacher = timm.create_model('resnet18_mod', num_classes=3), timm.create_model('resnet18', num_classes=3)
    images, targets = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 1])
    cfg = argparse.Namespace(**complete_train_args(dict(TINY_RECIPE, smoothing=0.0, kd_temperature=3.0, **weights)))
    loss = training_loss(student.train(), cfg, teacher)(images, targets)
    with torch.no_grad():
        teacher_logits = teacher.eval()(images)  # the teacher scores in eval mode: its batch norms do not move
    student_logits = student(images)
    p_teacher = torch.softmax(teacher_logits / 3.0, dim=1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(student_logits / 3.0, dim=1))).sum(1).mean()
    expected = task_weight * F.cross_entropy(student_logits, targets) + distill_weight * 9.0 * kl
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()) and student.fc.weight.grad is not None


def test_a_teacher_of_another_class_count_is_refused_before_training(image_folder: Path, tmp_path: Path) -> None:
    train_py_checkpoint(tmp_path / 'teacher.pth.tar', 'resnet18', num_classes=5)
    folder = publish('resnet18', tmp_path / 'teacher.pth.tar', out_dir=tmp_path / 'teacher')
    for source in (f'local-dir:{folder}', str(tmp_path / 'teacher.pth.tar')):
        with pytest.raises(ValueError, match=r'has a classifier of 5 classes, the student 2: timm would distil a '
                                             r'randomly initialised classifier'):
            compare([ModelSpec.parse(f'resnet18_mod:kd_model_name={source}@0')], dict(TINY_RECIPE), image_folder,
                    tmp_path / 'out', progress=False)
    assert not (tmp_path / 'out').exists()


def _state_dict(run_dir: Path) -> dict:
    return torch.load(run_dir / 'last.pth.tar', map_location='cpu', weights_only=False)['state_dict']


def test_a_converted_model_distilled_from_its_published_teacher_resumes_bit_identically(
        digits: Path, tmp_path: Path) -> None:
    """ The README's workflow on the digits: a trained plain resnet18, published as the teacher and converted to
    resnet18_mod; the student, an arm that names both, trains with cifar10_distill.yaml's recipe."""
    recipe = dict(load_train_args(DISTILL_ARGS), batch_size=64, workers=0)
    del recipe['initial_checkpoint'], recipe['kd_model_name']  # the arm names them
    _, (plain,) = compare([ModelSpec('resnet18', seeds=(0,))], recipe, digits, tmp_path / 'teacher_run', epochs=1,
                          measure_speed=False, progress=False)
    checkpoint = plain.checkpoint_dir / 'last.pth.tar'
    teacher = publish('resnet18', checkpoint, out_dir=tmp_path / 'teacher')
    init = convert_plain_weights('resnet18_mod', tmp_path / 'init.pth', checkpoint_path=checkpoint)
    arm = f'resnet18_mod:initial_checkpoint={init},kd_model_name=local-dir:{teacher}@0'
    recipe_file = tmp_path / 'distill.yaml'
    recipe_file.write_text(json.dumps(recipe))

    study = tmp_path / 'study'
    process = subprocess.Popen([str(CONSOLE_SCRIPT), 'compare', '-c', str(recipe_file), '--data-dir', str(digits),
                                '--output-dir', str(study), '--epochs', '1', '--no-speed', '--models', arm],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    spec = ModelSpec.parse(arm).canonical(10)
    run_dir = study / spec.folder_name / 'seed0'
    deadline = time.monotonic() + 300
    while not (run_dir / 'checkpoint-0.pth.tar').exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=120)
    assert not (run_dir / 'result.json').exists(), 'cut short after its first of two epochs'
    resumed = subprocess.run([str(CONSOLE_SCRIPT), 'compare', '-c', str(recipe_file), '--data-dir', str(digits),
                              '--output-dir', str(study), '--epochs', '1', '--no-speed', '--models', arm],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert 'resumed after epoch 1/2' in resumed.stderr
    assert f'kd_model_name=local-dir:{teacher}' in resumed.stdout, 'the table says what the arm was distilled from'

    _, (whole,) = compare([ModelSpec.parse(arm)], recipe, digits, tmp_path / 'whole', epochs=1, measure_speed=False,
                          progress=False)
    for name, value in _state_dict(whole.checkpoint_dir).items():
        assert torch.equal(_state_dict(run_dir)[name], value), name
    result = json.loads((run_dir / 'result.json').read_text())
    assert result['top1'] == whole.top1 and result['train_options'] == {
        'initial_checkpoint': str(init), 'kd_model_name': f'local-dir:{teacher}'}
    assert len(result['identity']['recipe']['kd_model_name_sha256']) == 64
    started = torch.load(init, map_location='cpu')
    assert not torch.equal(_state_dict(run_dir)['conv1.weight'], started['conv1.weight']), 'it trained'
