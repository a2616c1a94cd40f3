""" The studies' scripts on made-up run files: the CIFAR-10 study's summarize.py (the tables and verdicts against
numbers computed here, only runs of the study's recipe and epochs collected, arms.txt mistakes refused, results
restored from any folder as runs that compare reuses in that study and refuses in any other), the selector study's
summarize.py and switched_off.py."""
import argparse
import importlib.util
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch
from timm.utils import random_seed

from timm_mod.experiments.compare import ModelSpec, compare
from timm_mod.experiments.recipe import load_train_args

from conftest import write_noise_folder

SCRIPT = Path(__file__).parents[1] / 'docs' / 'cifar10_study' / 'summarize.py'


@pytest.fixture
def study(tmp_path: Path, monkeypatch) -> ModuleType:
    """ summarize.py with its folders moved under tmp_path (its recipes stay the repository's)."""
    spec = importlib.util.spec_from_file_location('study_summarize', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    docs, root = tmp_path / 'docs', tmp_path / 'repo'
    for name, path in dict(ROOT=root, RUNS=docs / 'runs', FINETUNE=docs / 'finetune', INT8=docs / 'int8',
                           TRAIN_PY=docs / 'trainpy', TIMING=docs / 'timing.json', ARMS=docs / 'arms.txt',
                           LANES=(root / 'output/lane1', root / 'output/lane2'),
                           FINETUNE_OUTPUT=root / 'output/finetune/resnet18_mod/seed0',
                           INT8_OUTPUT=root / 'output/int8', TRAIN_PY_OUTPUT=root / 'output/trainpy').items():
        monkeypatch.setattr(module, name, path)
    (docs / 'runs').mkdir(parents=True)
    (docs / 'arms.txt').write_text('resnet18@0,1,2  # plain\nresnet18_mod@0,1,2\n')
    return module


def _result(model: str, seed: int, top1: float, epochs: int = 30, **extra) -> dict:
    curve = [dict(epoch=epoch, train_loss=1.0, top1=top1 - 0.1 * (epochs - epoch)) for epoch in range(1, epochs + 1)]
    return dict(model_name=model, params=1000, macs=2e6 if model == 'resnet18' else 1e6, top1=top1,
                checkpoint_dir=f'output/lane1/{model}/seed{seed}', label=model, seed=seed, model_kwargs={},
                epochs=epochs, train_seconds=1.0, curve=curve, **extra)


TOP1 = {'resnet18': [82.0, 82.5, 83.25], 'resnet18_mod': [81.0, 81.75, 82.0]}


def _write_runs(study: ModuleType) -> None:
    for model, values in TOP1.items():
        for seed, top1 in enumerate(values):
            (study.RUNS / f'{model}_seed{seed}.json').write_text(json.dumps(_result(model, seed, top1)))


def test_claim_1_is_the_difference_of_means_with_the_pooled_standard_error(study: ModuleType, capsys) -> None:
    _write_runs(study)
    arms = study.read_arms()
    rows = study.summarize_runs(arms, study.read_results(study.RUNS))
    pooled = math.sqrt(statistics.mean(statistics.variance(values) for values in TOP1.values()))
    difference = statistics.mean(TOP1['resnet18_mod']) - statistics.mean(TOP1['resnet18'])
    error = pooled * math.sqrt(1 / 3 + 1 / 3)
    claim = next(line for line in study.claims_table(rows, []).splitlines() if line.startswith('| 1.'))
    assert f'| 3 vs 3 | {difference:+.2f} +- {error:.2f} | -1.67 (Table 9, CIFAR-10 R18) |' in claim
    expected = ('confirmed' if difference - 2 * error > -1.67 else
                'contradicted' if difference + 2 * error < -1.67 else 'cannot tell')
    assert claim.endswith(f'| {expected} |')
    arms_rows = study.arms_table(rows, study.read_results(study.RUNS), rows[0].mmacs).splitlines()
    assert arms_rows[2].startswith(f'| resnet18 | 3 | {statistics.mean(TOP1["resnet18"]):.2f} +- '
                                   f'{statistics.stdev(TOP1["resnet18"]):.2f} | 82.00 82.50 83.25 | 0.50 0.50 0.50 |')


def test_collect_takes_only_runs_of_the_studys_recipe_and_epochs(study: ModuleType, capsys) -> None:
    _write_runs(study)
    committed = study.RUNS / 'resnet18_mod_seed0.json'
    before = committed.read_text()
    smoke = study.LANES[0] / 'resnet18_mod' / 'seed0' / 'result.json'
    smoke.parent.mkdir(parents=True)
    smoke.write_text(json.dumps(_result('resnet18_mod', 0, 97.2, epochs=7)))
    other_recipe = study.LANES[1] / 'resnet18' / 'seed1' / 'result.json'
    other_recipe.parent.mkdir(parents=True)
    recipe = dict(study.study_recipe(study.RECIPE), lr=0.5)
    other_recipe.write_text(json.dumps(_result('resnet18', 1, 10.0, identity=dict(recipe=recipe))))
    same_recipe = study.LANES[1] / 'resnet18' / 'seed2' / 'result.json'
    same_recipe.parent.mkdir(parents=True)
    same_recipe.write_text(json.dumps(_result('resnet18', 2, 84.0, identity=dict(recipe=study.study_recipe()))))
    study.collect(study.read_arms())
    err = capsys.readouterr().err
    assert committed.read_text() == before
    assert f"not collected: {smoke} (trained 7 epochs, not the study's 30)" in err
    assert f'not collected: {other_recipe} (trained with another recipe (lr))' in err
    collected = json.loads((study.RUNS / 'resnet18_seed2.json').read_text())
    assert collected['top1'] == 84.0 and collected['checkpoint_dir'] == 'output/lane2/resnet18/seed2'


@pytest.mark.parametrize('arms, message', [
    ('resnet18@0,1\nresnet18_mod\n', r"'resnet18_mod' names no seeds; write it as resnet18_mod@0,1,2"),
    ('resnet18@0\nresnet18_mod:c=64@1\nresnet18_mod@0\n', r"'resnet18_mod' is given twice \(as 'resnet18_mod c=64'"),
    ('resnet18@0\nresnet81_mod@0\n', r"Unknown model 'resnet81_mod'"),
    ('resnet18@0\nresnet18_mod:c=one@0\n', r"'resnet18_mod c=one' cannot be built with these kwargs"),
])
def test_arms_txt_mistakes_are_clear_errors(study: ModuleType, arms: str, message: str) -> None:
    study.ARMS.write_text(arms)
    with pytest.raises(ValueError, match=message):
        study.read_arms()


def test_restored_results_are_reused_by_their_study_and_refused_by_another(
        study: ModuleType, tmp_path: Path, monkeypatch) -> None:
    _write_runs(study)
    data = write_noise_folder(tmp_path / 'data', {'train': 64, 'validation': 2})
    monkeypatch.chdir(tmp_path)  # any folder: the results go under the repository's output/
    study.restore(study.read_arms(), data)
    restored = study.LANES[0] / 'resnet18' / 'seed0' / 'result.json'
    assert restored.exists() and not (tmp_path / 'output').exists()
    recipe = load_train_args(study.RECIPE)
    _, results = compare([ModelSpec('resnet18', seeds=(0,))], recipe, data, study.LANES[0], measure_speed=False,
                         progress=False)
    assert results[0].top1 == TOP1['resnet18'][0], 'reused, not trained'
    smoke = tmp_path / 'smoke' / 'resnet18' / 'seed0'  # the same results, put where a one-epoch study looks
    smoke.mkdir(parents=True)
    smoke.joinpath('result.json').write_text(restored.read_text())
    with pytest.raises(ValueError, match=r'holds another run than resnet18 seed 0 .*recipe: epochs \(24 there, 1 now'):
        compare([ModelSpec('resnet18', seeds=(0,))], recipe, data, tmp_path / 'smoke', epochs=1, measure_speed=False,
                progress=False)


@pytest.mark.parametrize('args, message', [
    (['--time', 'no/such/data'], "No 'train' split in no/such/data"),
    (['--restore', 'no/such/data'], "No 'train' split in no/such/data"),
    (['--plot-dir', '{file}/plots'], 'lies inside the file'),
])
def test_script_mistakes_are_one_line_errors_before_any_work(tmp_path: Path, args: list, message: str) -> None:
    (tmp_path / 'file').write_text('')
    args = [arg.format(file=tmp_path / 'file') for arg in args]
    run = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)
    assert run.returncode == 1 and run.stdout == '', run.stdout
    assert run.stderr.startswith('summarize.py: error: ') and message in run.stderr, run.stderr
    assert len(run.stderr.strip().splitlines()) == 1 and sorted(p.name for p in tmp_path.iterdir()) == ['file']



SELECTOR_SCRIPT = Path(__file__).parents[1] / 'docs' / 'selector_study' / 'summarize.py'


@pytest.fixture
def selector_study(tmp_path: Path, monkeypatch) -> ModuleType:
    """ docs/selector_study/summarize.py with its folders moved under tmp_path."""
    spec = importlib.util.spec_from_file_location('selector_summarize', SELECTOR_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name, path in dict(HERE=tmp_path / 'docs', RUNS=tmp_path / 'docs/runs', SELECTION=tmp_path / 'docs/selection',
                           CONVERGED_RUNS=tmp_path / 'converged', DISTILLED_RUNS=tmp_path / 'distilled',
                           VERDICT_PLOT=tmp_path / 'docs/verdict.png').items():
        monkeypatch.setattr(module, name, path)
    monkeypatch.setattr(module, 'STUDIES', {'c16': tmp_path / 'causes', 'verdict_c16': tmp_path / 'verdict',
                                            'verdict_c16_option': tmp_path / 'verdict'})
    for folder in ('docs/selection', 'converged', 'distilled'):
        (tmp_path / folder).mkdir(parents=True)
    return module


def _write_run(folder: Path, run_folder: str, seed: int, **result) -> None:
    run_dir = folder / run_folder / f'seed{seed}'
    run_dir.mkdir(parents=True)
    (run_dir / 'result.json').write_text(json.dumps(dict(result, seed=seed)))


def _ablation(module: ModuleType, study: str, run_folder: str, seed: int, learned: float, fixed: float,
              neighbour: float) -> None:
    path = module.SELECTION / module.run_file_name(study, run_folder, f'seed{seed}')
    path.write_text(json.dumps({'routing_ablation': dict(images=10, top1_learned=learned, top1_fixed_random=fixed,
                                                         seed=0, top1_neighbour=neighbour)}))


def test_selector_study_cause_table_from_made_up_runs(selector_study: ModuleType, tmp_path: Path) -> None:
    """ The cause table: one row per arm with top-1, the routing ablation's difference, the first and last epoch's
    score spreads, the last epoch's dead units, routed channels and gradient against decay per block; a
    random-routing arm has no selector columns, a run without selection.json no ablation, an arm without selector
    decay no decay ratio; unfinished runs are not collected."""
    def state(spread: float, dead: int) -> dict:
        return dict(hidden_units=4, dead_units=dead, score_spread=spread, distinct_channels=7, k=4, channels=64,
                    weight_norm=4.0, grad_norm=0.01 * (dead + 1))

    identity = dict(recipe=dict(weight_decay=5e-4))
    causes = tmp_path / 'causes' / 'c16'
    _write_run(causes, 'resnet18_mod@c=16', 0, label='resnet18_mod c=16', top1=81.25, model_kwargs={'c': 16},
               identity=identity, curve=[
                   dict(epoch=1, selectors={'layer1.1': state(0.4, 0), 'layer2.1': state(0.2, 1)}),
                   dict(epoch=2, selectors={'layer1.1': state(0.01, 4), 'layer2.1': state(0.0, 3)})])
    _write_run(causes, 'resnet18_mod@c=16,routing=random', 0, label='resnet18_mod c=16 routing=random', top1=80.5,
               model_kwargs={'c': 16, 'routing': 'random'}, identity=identity, curve=[dict(epoch=1), dict(epoch=2)])
    _write_run(causes, 'resnet18_mod@c=16,selector_decay=False', 0, label='resnet18_mod c=16 selector_decay=False',
               top1=81.0, identity=identity, model_kwargs={'c': 16, 'selector_decay': False},
               curve=[dict(epoch=1, selectors={'layer1.1': state(0.3, 0)})])
    (causes / 'unfinished/seed0').mkdir(parents=True)
    _ablation(selector_study, 'c16', 'resnet18_mod@c=16', 0, 81.25, 80.0, 81.0)
    selector_study.collect()
    assert sorted(p.name for p in selector_study.RUNS.iterdir()) == [
        'c16_resnet18_mod_c=16_routing=random_seed0.json', 'c16_resnet18_mod_c=16_seed0.json',
        'c16_resnet18_mod_c=16_selector_decay=False_seed0.json']
    runs = selector_study.read_runs()
    lines = selector_study.cause_table(runs).splitlines()
    # gradient / decay: 0.05 / (5e-4 * 4) = 25 and 0.04 / (5e-4 * 4) = 20
    assert lines[2] == '| c16 | resnet18_mod c=16 routing=random | 80.50 | - | - | - | - | - | - | - |'
    assert lines[3] == ('| c16 | resnet18_mod c=16 | 81.25 | +1.25 | +0.25 | 0.400 / 0.200 | 0.010 / 0.000 '
                        '| 4/4, 3/4 | 7 / 7 | 25.0 / 20.0 |')
    assert lines[4] == ('| c16 | resnet18_mod c=16 selector_decay=False | 81.00 | - | - | 0.300 | 0.300 | 0/4 | 7 '
                        '| - |')
    assert len(lines) == 5
    assert selector_study.verdict_arms(runs) == {}  # no verdict run yet: no verdict table


def test_selector_study_verdicts_from_made_up_runs(selector_study: ModuleType, tmp_path: Path) -> None:
    """ The verdict tables: per arm top-1 and routing carried, mean +- sample std over seeds, the converged study's
    c = 64 arms read beside them, and each comparison called by the two-standard-error rule, numbers computed
    here."""
    verdict = tmp_path / 'verdict'
    top1 = {'paper': [81.0, 81.2, 81.4], 'random': [80.0, 80.1, 80.2], 'option': [81.1, 81.5, 81.0],
            'fixed': [81.3, 80.9, 81.2]}
    for seed in range(3):
        _write_run(verdict / 'verdict_c16', 'resnet18_mod@c=16', seed, label='resnet18_mod c=16',
                   top1=top1['paper'][seed], curve=[])
        _write_run(verdict / 'verdict_c16', 'resnet18_mod@c=16,routing=random', seed,
                   label='resnet18_mod c=16 routing=random', top1=top1['random'][seed], curve=[])
        _write_run(verdict / 'verdict_c16', 'resnet18_mod@c=16,routing=fixed', seed,
                   label='resnet18_mod c=16 routing=fixed', top1=top1['fixed'][seed], curve=[])
        _write_run(verdict / 'verdict_c16_option', 'resnet18_mod@c=16,selector_gain=10', seed,
                   label='resnet18_mod c=16 selector_gain=10', top1=top1['option'][seed], curve=[])
        _ablation(selector_study, 'verdict_c16', 'resnet18_mod@c=16', seed, 81.0, 80.0, 81.0 - 0.1 * seed)
        for name, value in (('resnet18_mod', 81.5 + seed / 10), ('resnet18_mod@routing=random', 81.3)):
            (tmp_path / 'converged' / f'{name}_seed{seed}.json').write_text(json.dumps({'top1': value}))
        (tmp_path / 'distilled' / f'scratch_kd_seed{seed}.json').write_text(json.dumps({'top1': 82.5 + seed / 10}))
        _ablation(selector_study, 'scratch_kd', 'resnet18_mod@kd_model_name=teacher~1234', seed, 82.5, 82.0, 82.6)
    selector_study.collect()
    arms = selector_study.verdict_arms(selector_study.read_runs())
    assert arms['resnet18_mod c=16'][0] == top1['paper']
    assert [round(v, 6) for v in arms['resnet18_mod c=16'][1]] == [0.0, 0.1, 0.2]
    assert arms['resnet18_mod (c=64, converged study)'][0] == [81.5, 81.6, 81.7]
    distilled = arms[selector_study.DISTILLED_ARM]
    assert distilled[0] == [82.5, 82.6, 82.7] and [round(v, 6) for v in distilled[1]] == [-0.1] * 3
    assert list(arms) == [  # c = 16 first: the paper's selector, static and random routing, the option
        'resnet18_mod c=16', 'resnet18_mod c=16 routing=fixed', 'resnet18_mod c=16 routing=random',
        'resnet18_mod c=16 selector_gain=10', 'resnet18_mod (c=64, converged study)', selector_study.DISTILLED_ARM,
        'resnet18_mod routing=random (c=64, converged study)']
    pairs = selector_study.verdict_pairs(arms)
    assert pairs == [('resnet18_mod c=16 selector_gain=10', 'resnet18_mod c=16 routing=random'),
                     ('resnet18_mod c=16 selector_gain=10', 'resnet18_mod c=16'),
                     ('resnet18_mod c=16 selector_gain=10', 'resnet18_mod c=16 routing=fixed'),
                     ('resnet18_mod c=16', 'resnet18_mod c=16 routing=random'),
                     ('resnet18_mod c=16', 'resnet18_mod c=16 routing=fixed')]
    lines = selector_study.verdict_tables(arms, pairs).splitlines()
    assert '| resnet18_mod c=16 | 3 | 81.20 +- 0.20 | 0.10 +- 0.10 |' in lines

    def row(first: str, second: str, a: list, b: list) -> str:
        diff = statistics.mean(a) - statistics.mean(b)
        error = math.sqrt(statistics.variance(a) / len(a) + statistics.variance(b) / len(b))
        called = 'first ahead' if diff > 2 * error else 'second ahead' if diff < -2 * error else 'not called'
        return f'| {first} | {second} | {diff:+.2f} | {error:.2f} | {called} |'
    assert lines[-7:] == [
        row(*pairs[0], top1['option'], top1['random']),
        row(*pairs[1], top1['option'], top1['paper']),
        row(*pairs[2], top1['option'], top1['fixed']),
        row(*pairs[3], top1['paper'], top1['random']),
        row(*pairs[4], top1['paper'], top1['fixed']),
        "| resnet18_mod c=16: each image's routing | the previous image's | +0.10 | 0.06 | not called |",
        f"| {selector_study.DISTILLED_ARM}: each image's routing | the previous image's | -0.10 | 0.00 | "
        "second ahead |"]
    assert lines[-7].endswith('| first ahead |') and lines[-6].endswith('| not called |')
    assert selector_study.plot_verdict(arms, selector_study.VERDICT_PLOT).stat().st_size > 0


def test_switched_off_rebuilds_the_selectors_initial_weights(digits: Path, tmp_path: Path) -> None:
    """ docs/selector_study/switched_off.py on a run that never trained (its weights are compare's initial ones for
    its seed): the initial weights it rebuilds are the run's, so both on-shares are equal and the cosine is 1."""
    spec = importlib.util.spec_from_file_location('switched_off', SELECTOR_SCRIPT.parent / 'switched_off.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    random_seed(3)
    model = timm.create_model('resnet18_mod', num_classes=10, c=16)
    run = tmp_path / 'study' / 'resnet18_mod@c=16' / 'seed3'
    run.mkdir(parents=True)
    torch.save({'state_dict': model.state_dict(), 'args': argparse.Namespace(
        model='resnet18_mod', model_kwargs={'c': 16}, seed=3, input_size=[3, 32, 32])}, run / 'last.pth.tar')
    found = module.measure(run, digits)
    assert list(found) == ['layer1.1', 'layer2.1', 'layer3.1', 'layer4.1']
    for block in found.values():
        assert block['on_trained'] == block['on_initial'] and 0 < block['on_trained'] < 1
        assert block['cosine_to_initial'] == pytest.approx(1.0, abs=1e-6)
