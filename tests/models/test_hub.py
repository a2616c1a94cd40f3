""" Publishing: a Hub folder from train.py checkpoints, loaded back every way timm loads, and its errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors.torch import save_file

from timm_mod.experiments.publish import publish, read_results

from conftest import INPUT, train_py_checkpoint

COMMIT = '0123456789abcdef0123456789abcdef01234567'


def logits(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(INPUT)


def load_from_offline_hub_cache(folder: Path, cache: Path, repo_id: str, tmp_path: Path, use_tag: bool) -> torch.Tensor:
    """ Lay `folder` out as a Hugging Face cache snapshot and load it in a fresh offline process."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / 'snapshots' / COMMIT
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo / 'refs').mkdir()
    (repo / 'refs' / 'main').write_text(COMMIT)
    config = json.loads((folder / 'config.json').read_text())
    create = (f"timm.create_model('{config['architecture']}', pretrained=True, "
              f"pretrained_cfg_overlay=dict(hf_hub_id='{repo_id}', num_classes={config['num_classes']}), "
              f"**{config['model_args']!r})"
              if use_tag else f"timm.create_model('hf-hub:{repo_id}', pretrained=True)")
    out = tmp_path / 'logits.pt'
    script = f"import timm, torch\nmodel = {create}.eval()\nx = torch.load('{tmp_path / 'input.pt'}')\n" \
             f"with torch.no_grad():\n    torch.save(model(x), '{out}')\n"
    torch.save(INPUT, tmp_path / 'input.pt')
    env = dict(os.environ, HF_HUB_OFFLINE='1', HF_HUB_CACHE=str(cache))
    run = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    return torch.load(out)


@pytest.mark.parametrize('model_name, model_kwargs', [
    ('resnet18_mod', {}),
    ('resnet18_mod', {'c': 32, 'selector_act': 'leaky_relu', 'score_scaling': 'straight_through'}),
    ('mobilenetv2_mod', {}),
    ('convnext_nano_mod', {}),
])


def test_publish_then_load_by_local_dir_and_offline_hub(tmp_path: Path, model_name: str, model_kwargs: dict) -> None:
    trained = train_py_checkpoint(tmp_path / 'model_best.pth.tar', model_name, **model_kwargs)
    folder = Path(publish(model_name, tmp_path / 'model_best.pth.tar', out_dir=tmp_path / 'hub' / 'repo'))
    assert sorted(p.name for p in folder.iterdir()) == ['README.md', 'config.json', 'model.safetensors']
    config = json.loads((folder / 'config.json').read_text())
    assert config['architecture'] == model_name and config['num_classes'] == 5
    assert {k: config['model_args'][k] for k in model_kwargs} == model_kwargs
    assert config['pretrained_cfg']['input_size'] == [3, 64, 64] and config['pretrained_cfg']['crop_pct'] == 0.9

    expected = logits(trained)
    from_folder = timm.create_model(f'local-dir:{folder}', pretrained=True)
    torch.testing.assert_close(logits(from_folder), expected, rtol=0, atol=0)
    for use_tag in (False, True):
        cache = tmp_path / f'cache-{use_tag}'
        got = load_from_offline_hub_cache(folder, cache, 'someone/repo', tmp_path, use_tag)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_safetensors_checkpoint_and_inferred_classes(tmp_path: Path) -> None:
    model = timm.create_model('resnet18_mod', num_classes=7).eval()
    save_file(model.state_dict(), str(tmp_path / 'weights.safetensors'))
    folder = Path(publish('resnet18_mod', tmp_path / 'weights.safetensors', out_dir=tmp_path / 'out'))
    assert json.loads((folder / 'config.json').read_text())['num_classes'] == 7
    torch.testing.assert_close(logits(timm.create_model(f'local-dir:{folder}', pretrained=True)), logits(model))


def test_ema_weights_when_asked(tmp_path: Path) -> None:
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet18_mod', ema=True)
    ema = torch.load(tmp_path / 'ckpt.pth.tar', weights_only=False)['state_dict_ema']
    folder = Path(publish('resnet18_mod', tmp_path / 'ckpt.pth.tar', out_dir=tmp_path / 'out', use_ema=True))
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    torch.testing.assert_close(loaded.state_dict()['fc.weight'], ema['fc.weight'])
    train_py_checkpoint(tmp_path / 'plain.pth.tar', 'resnet18_mod')
    with pytest.raises(ValueError, match='no EMA weights'):
        publish('resnet18_mod', tmp_path / 'plain.pth.tar', out_dir=tmp_path / 'out2', use_ema=True)


def card_header(card: str) -> dict:
    assert card.startswith('---\n')
    return yaml.safe_load(card.split('---\n')[1])


def test_card_has_header_numbers_results_and_citation(tmp_path: Path) -> None:
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet75_mod', num_classes=1000)
    results = tmp_path / 'results.json'
    results.write_text(json.dumps({'model': 'resnet75_mod', 'top1': 76.31, 'top5': 93.02, 'param_count': 23.1}))
    folder = Path(publish('resnet75_mod', tmp_path / 'ckpt.pth.tar', out_dir=tmp_path / 'resnet75_mod.in1k',
                          results_file=results))
    card = (folder / 'README.md').read_text()
    header = card_header(card)
    assert header['library_name'] == 'timm' and header['license'] == 'apache-2.0'
    assert header['datasets'] == ['imagenet-1k'] and 'image-classification' in header['tags']
    assert '# Model card for resnet75_mod.in1k' in card
    assert 'Params: 23.10 M' in card and 'stage depths 3,4,14,3' in card
    assert '| `layer3.13` | 1024 | 64 | 16 | learned | first |' in card
    assert '| ResNet75-MoD | 76.27 +- 0.07 | 3.48 | 23.10 | 128.90 | 2.19 |' in card
    assert 'top-1 76.31 %, top-5 93.02 %' in card
    assert 'model: resnet75_mod' in card and 'python train.py -c args.yaml' in card
    assert '@inproceedings{cakaj2024cnnmod' in card and 'CNN Mixture-of-Depths' in card


def test_card_without_results_file_uses_the_training_metric(tmp_path: Path) -> None:
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet18_mod')
    card = (Path(publish('resnet18_mod', tmp_path / 'ckpt.pth.tar', out_dir=tmp_path / 'o')) / 'README.md').read_text()
    assert 'This checkpoint: top-1 12.50 %' in card
    assert 'datasets' not in card_header(card)


def test_results_file_csv(tmp_path: Path) -> None:
    (tmp_path / 'r.csv').write_text('model,top1,top5\nresnet18_mod,64.1,85.0\n')
    assert read_results(tmp_path / 'r.csv')['top1'] == '64.1'
    # validate.py --results-file results.json writes CSV unless --results-format json is given too
    (tmp_path / 'results.json').write_text('model,top1,top5\nresnet18_mod,64.1,85.0\n')
    assert read_results(tmp_path / 'results.json')['top1'] == '64.1'
    (tmp_path / 'results.json').write_text('[{"model": "resnet18_mod", "top1": 64.1}]')
    assert read_results(tmp_path / 'results.json')['top1'] == 64.1


def test_non_empty_out_dir_is_refused_unless_overwrite(tmp_path: Path) -> None:
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet18_mod')
    out = tmp_path / 'out'
    out.mkdir()
    (out / 'keep.txt').write_text('mine')
    with pytest.raises(FileExistsError, match='not empty'):
        publish('resnet18_mod', tmp_path / 'ckpt.pth.tar', out_dir=out)
    assert [p.name for p in out.iterdir()] == ['keep.txt']
    publish('resnet18_mod', tmp_path / 'ckpt.pth.tar', out_dir=out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ['README.md', 'config.json', 'model.safetensors']


def assert_nothing_left(parent: Path, out: Path) -> None:
    assert not out.exists()
    assert not [p for p in parent.iterdir() if p.name.startswith('.timm-mod-')]


def test_corrupt_safetensors_is_a_clear_error_leaving_nothing(tmp_path: Path) -> None:
    model = timm.create_model('resnet18_mod', num_classes=3)
    save_file(model.state_dict(), str(tmp_path / 'w.safetensors'))
    data = (tmp_path / 'w.safetensors').read_bytes()
    (tmp_path / 'w.safetensors').write_bytes(data[:len(data) // 2])
    with pytest.raises(ValueError, match='not a readable safetensors file'):
        publish('resnet18_mod', tmp_path / 'w.safetensors', out_dir=tmp_path / 'out')
    assert_nothing_left(tmp_path, tmp_path / 'out')


@pytest.mark.parametrize('trained_kwargs, published_kwargs, message', [
    ({'c': 32}, {'c': 64}, r'layer1.1 processes k=1 channels of 64 \(c=64\) but the checkpoint has k=2 \(c=32\)'),
    ({}, {'routing': 'random'}, 'the checkpoint has learned routing, the model random'),
])


def test_other_mod_configuration_names_the_mismatch(tmp_path: Path, trained_kwargs, published_kwargs, message) -> None:
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet18_mod', **trained_kwargs)
    with pytest.raises(ValueError, match=message):
        publish('resnet18_mod', tmp_path / 'ckpt.pth.tar', out_dir=tmp_path / 'out', model_kwargs=published_kwargs)
    assert_nothing_left(tmp_path, tmp_path / 'out')


def test_other_depth_or_name_is_a_clear_error(tmp_path: Path) -> None:
    model = timm.create_model('resnet50_mod', num_classes=3)
    save_file(model.state_dict(), str(tmp_path / 'w.safetensors'))
    with pytest.raises(ValueError, match='checkpoint lacks layer3.6, layer3.7'):
        publish('resnet75_mod', tmp_path / 'w.safetensors', out_dir=tmp_path / 'out')
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet18_mod')
    with pytest.raises(ValueError, match="trained as 'resnet18_mod', not 'resnet34_mod'"):
        publish('resnet34_mod', tmp_path / 'ckpt.pth.tar', out_dir=tmp_path / 'out')
    assert_nothing_left(tmp_path, tmp_path / 'out')


def test_create_model_names_the_mismatch_of_another_c(tmp_path: Path) -> None:
    save_file(timm.create_model('resnet18_mod', c=32).state_dict(), str(tmp_path / 'w.safetensors'))
    with pytest.raises(RuntimeError, match='but the checkpoint has k=2 \\(c=32\\): another c'):
        timm.create_model(
            'resnet18_mod', pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / 'w.safetensors')))


def test_push_without_token_or_network_fails_before_any_work(tmp_path: Path) -> None:
    env = dict(os.environ, HF_HOME=str(tmp_path / 'hf'), HF_TOKEN='')
    env.pop('HF_TOKEN')
    command = [str(Path(sys.executable).parent / 'timm-mod'), 'publish', '--model', 'resnet18_mod',
               '--checkpoint', str(tmp_path / 'missing.pth.tar'), '--repo-id', 'someone/repo']
    run = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0 and 'No Hugging Face token' in run.stderr
    run = subprocess.run(command, env=dict(env, HF_HUB_OFFLINE='1'), capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0 and 'HF_HUB_OFFLINE is set' in run.stderr
    run = subprocess.run(
        command, env=dict(env, HF_TOKEN='hf_notarealtoken'), capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode != 0 and 'Cannot reach the Hugging Face Hub' in run.stderr
    assert {p.name for p in tmp_path.iterdir()} <= {'hf'}, 'nothing may be written'


def test_publish_needs_exactly_one_target(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='exactly one of --out-dir'):
        publish('resnet18_mod', tmp_path / 'x.pth.tar')


def test_published_weights_become_tags_and_only_they() -> None:
    """ Weight tags sit inline in each family's default_cfgs, as in timm: timm lists a `*_mod` model as pretrained
    exactly where a cfg names a weight source (none yet), and a tagged cfg with a Hub id becomes the default."""
    from timm.models import generate_default_cfgs
    from timm_mod.models import convnext, efficientnet, mod_cfg, regnet, resnet
    with_weights = sorted(f'{name}.{tag}' for family in (convnext, efficientnet, regnet, resnet)
                          for name, default in family.default_cfgs.items()
                          for tag, cfg in default.cfgs.items() if cfg.has_weights)
    assert timm.list_pretrained('*_mod*') == with_weights == []
    default = generate_default_cfgs({'resnet75_mod.in1k': mod_cfg(hf_hub_id='org/resnet75_mod.in1k'),
                                     'resnet75_mod': mod_cfg()})['resnet75_mod']
    assert default.tags[0] == 'in1k' and default.is_pretrained
    assert default.cfgs['in1k'].hf_hub_id == 'org/resnet75_mod.in1k' and not default.cfgs[''].has_weights


def test_card_of_our_model_says_it_is_not_the_papers(tmp_path: Path) -> None:
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'regnety_016_mod')
    folder = Path(publish('regnety_016_mod', tmp_path / 'ckpt.pth.tar', out_dir=tmp_path / 'o'))
    card = (folder / 'README.md').read_text()
    assert "| not in the paper: timm-mod's MoD version of timm's `regnety_016` |" in card
    assert 'stage depths 2,6,17,2' in card


def test_a_plain_model_publishes_as_a_teacher_and_loads_back_with_its_classes(tmp_path: Path) -> None:
    """ The teacher of a distillation: timm's own resnet18, trained for 5 classes, loads back by `local-dir:` with
    the same logits and its classifier (config.json carries num_classes), and offline from a Hub cache."""
    trained = train_py_checkpoint(tmp_path / 'teacher.pth.tar', 'resnet18', num_classes=5)
    folder = Path(publish('resnet18', tmp_path / 'teacher.pth.tar', out_dir=tmp_path / 'teacher'))
    config = json.loads((folder / 'config.json').read_text())
    assert (config['architecture'], config['num_classes'], config['model_args']) == ('resnet18', 5, {})
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True)
    assert loaded.num_classes == 5 and torch.equal(logits(loaded), logits(trained))
    offline = load_from_offline_hub_cache(folder, tmp_path / 'cache', 'org/teacher', tmp_path, use_tag=False)
    assert torch.equal(offline, logits(trained))
    card = (folder / 'README.md').read_text()
    assert "timm's `resnet18`, a plain image classifier (no Mixture-of-Depths blocks)" in card
    assert 'Model: `resnet18`, 5 classes' in card and 'mixture-of-depths' not in card


def test_mod_weights_published_under_a_plain_name_are_refused(tmp_path: Path) -> None:
    model = train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet18_mod')
    with pytest.raises(ValueError, match=r"ckpt.pth.tar was trained as 'resnet18_mod', not 'resnet18'; use --model "
                                         r"resnet18_mod"):
        publish('resnet18', tmp_path / 'ckpt.pth.tar', out_dir=tmp_path / 'o')
    save_file(model.state_dict(), str(tmp_path / 'bare.safetensors'))  # no record of what it was trained as
    with pytest.raises(ValueError, match=r"The weights in .*bare.safetensors do not fit 'resnet18' : layer1.1, "
                                         r"layer2.1, layer3.1, layer4.1 are MoD blocks in the checkpoint, dense in "
                                         r"the model: a checkpoint of the MoD model\?"):
        publish('resnet18', tmp_path / 'bare.safetensors', out_dir=tmp_path / 'o')
    assert not (tmp_path / 'o').exists()


TRANSFORMERS_CHECK = '''
import importlib.util, json, sys
assert importlib.util.find_spec('timm') is not None  # probed first, as transformers' is_timm_available does
import numpy as np, torch
from PIL import Image
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline
folder = sys.argv[1]
image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 48, 3), dtype=np.uint8))
model = AutoModelForImageClassification.from_pretrained(folder).eval()
processor = AutoImageProcessor.from_pretrained(folder)
pixels = processor(image, return_tensors='pt')['pixel_values']
with torch.no_grad():
    logits = model(pixel_values=pixels).logits
top = pipeline('image-classification', model=folder)(image, top_k=1)[0]['label']
import timm
reference = timm.create_model('local-dir:' + folder, pretrained=True).eval()
config = timm.data.resolve_model_data_config(reference)
expected_pixels = timm.data.create_transform(**config, is_training=False)(image)[None]
with torch.no_grad():
    expected = reference(expected_pixels)
labels = json.load(open(folder + '/config.json'))['label_names']
print(json.dumps(dict(
    pixels_equal=torch.equal(pixels, expected_pixels), logits_diff=(logits - expected).abs().max().item(),
    pipeline_label=top, timm_label=labels[expected.argmax().item()])))
'''


def test_transformers_loads_a_published_folder_as_timm_does(tmp_path: Path) -> None:
    """ transformers' TimmWrapper: from_pretrained, AutoImageProcessor and pipeline, in a fresh offline process
    that never imports timm_mod itself (the start-up hook registers the zoo when timm is imported)."""
    from PIL import Image
    data = tmp_path / 'data'
    for name in ('ant', 'bee', 'cat', 'dog', 'elk'):
        (data / 'train' / name).mkdir(parents=True)
        Image.new('RGB', (8, 8)).save(data / 'train' / name / '0.png')
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet18_mod', c=32)
    folder = publish('resnet18_mod', tmp_path / 'ckpt.pth.tar', out_dir=tmp_path / 'hub', data_dir=data)
    config = json.loads((Path(folder) / 'config.json').read_text())
    assert config['model_args'] == {'c': 32, 'fusion': 'first', 'r': 16, 'routing': 'learned'}
    env = dict(os.environ, HF_HUB_OFFLINE='1', TRANSFORMERS_OFFLINE='1', HF_HOME=str(tmp_path / 'hf'))
    run = subprocess.run([sys.executable, '-c', TRANSFORMERS_CHECK, folder], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result['pixels_equal'], 'AutoImageProcessor must give timm\'s preprocessing'
    # the same weights and pixels; transformers 5.24's wrapper runs the model through forward_features and
    # forward_head in its own process state, which rounds the last float bit differently (7e-9 measured)
    assert result['logits_diff'] < 1e-6
    assert result['pipeline_label'] == result['timm_label']


def test_card_metadata_and_files_are_fit_to_publish(tmp_path: Path) -> None:
    from huggingface_hub import ModelCard
    train_py_checkpoint(tmp_path / 'ckpt.pth.tar', 'resnet18_mod')
    checkpoint = torch.load(tmp_path / 'ckpt.pth.tar', weights_only=False)
    checkpoint['args'].data_dir = '/home/someone/private/datasets/digits'
    torch.save(checkpoint, tmp_path / 'ckpt.pth.tar')
    folder = Path(publish('resnet18_mod', tmp_path / 'ckpt.pth.tar', out_dir=tmp_path / 'o', dataset='cifar10'))
    card = ModelCard.load(folder / 'README.md')
    metadata = card.data.to_dict()
    assert metadata['library_name'] == 'timm' and metadata['pipeline_tag'] == 'image-classification'
    assert metadata['license'] == 'apache-2.0' and metadata['datasets'] == ['cifar10']
    assert {'timm', 'image-classification'} <= set(metadata['tags'])
    assert '/home/someone' not in card.text, 'the training machine\'s paths stay private'
    assert "(source: training run: the checkpoint's metric)" in card.text, 'no summary.csv was there to cite'
    assert '"c": 64' in card.text
    for path in folder.iterdir():
        assert path.stat().st_mode & 0o044 == 0o044 & ~current_umask(), f'{path.name} must be readable by others'


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
