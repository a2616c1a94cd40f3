""" Publishing trained MoD models the timm way: a Hub folder of config.json, model.safetensors and README.md.

The weights and config come from timm's own `save_for_hf`, so `timm.create_model("local-dir:DIR")` and
`timm.create_model("hf-hub:ORG/NAME")` rebuild the model, non-default MoD arguments (c, r, ...) included.
The model card is rendered from `hub_cards/model_card.md` with this model's architecture, the paper's
published row and this checkpoint's own results.
"""
import csv
import io
import json
import os
import tempfile
from dataclasses import fields
from pathlib import Path
from string import Template
from typing import Any, Dict, List, Optional

import torch.nn as nn
import yaml
from timm.data import resolve_data_config
from timm.models import save_for_hf

from ..layers import ModArgs, mod_blocks
from ..utils.output import check_replaceable_folder, staged_output
from ..utils.package_data import package_file
from ..models import OUR_MODELS, PAPER_MODELS, Checkpoint, find_family, measure, model_from_checkpoint

__all__ = ['read_results', 'reconstruction_args', 'render_model_card', 'check_hub_access', 'publish']

CARD_TEMPLATE = 'model_card.md'
PLAIN_CARD_TEMPLATE = 'plain_model_card.md'  # a plain timm model: a teacher


def read_results(path: Path) -> Dict[str, Any]:
    """ The first row of a validate.py `--results-file`, JSON or CSV whatever the file is called: validate.py writes
    CSV unless given `--results-format json`, also to a file named results.json."""
    text = Path(path).read_text()
    try:
        results = json.loads(text)
    except json.JSONDecodeError:
        return next(csv.DictReader(io.StringIO(text, newline='')), {})
    results = results[0] if isinstance(results, list) else results
    return results.get('results', results) if isinstance(results, dict) else {}


def _training_results(checkpoint: Checkpoint) -> Dict[str, Any]:
    """ The checkpoint's metric, with top-5 from train.py's summary.csv beside it when there is one, and where
    the figures come from."""
    results: Dict[str, Any] = {}
    sources = []
    if checkpoint.metric is not None:
        results['top1'] = checkpoint.metric
        sources.append('the checkpoint\'s metric')
    summary = checkpoint.path.parent / 'summary.csv'
    if summary.is_file() and checkpoint.epoch is not None:
        with open(summary, newline='') as f:
            row = next((r for r in csv.DictReader(f) if r.get('epoch') == str(checkpoint.epoch)), None)
        if row:
            results.setdefault('top1', row.get('eval_top1'))
            results['top5'] = row.get('eval_top5')
            sources.append(f"train.py's summary.csv, epoch {checkpoint.epoch}")
    if sources:
        results['source'] = 'training run: ' + ' and '.join(sources)
    return results


# train.py arguments that name places on the training machine: a public card has no use for them
MACHINE_LOCAL_ARGS = ('data_dir', 'data', 'output', 'resume', 'initial_checkpoint', 'class_map', 'log_wandb')


def reconstruction_args(model: nn.Module, model_kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """ config.json's `model_args`: what rebuilds this architecture from its registered name (the MoD arguments,
    the run's other model arguments and a non-default in_chans), nothing that config.json holds elsewhere
    (num_classes, global_pool) or that only training uses (drop rates): transformers' TimmWrapper passes
    num_classes itself beside `**model_args`."""
    block = next(iter(mod_blocks(model).values()), None)  # None: a plain timm model
    mod_args = () if block is None else [field.name for field in fields(ModArgs)]  # the block's own, below
    args = {key: value for key, value in model_kwargs.items()
            if key not in ('num_classes', 'global_pool', 'pretrained', *mod_args) and 'drop' not in key}
    if block is not None:
        args.update(block.args.as_kwargs())
    in_chans = model.pretrained_cfg.get('input_size', (3,))[0]
    if in_chans != 3:
        args['in_chans'] = in_chans
    return dict(sorted(args.items()))


def _label_names(train_args: Dict[str, Any], data_dir: Optional[Path]) -> Optional[List[str]]:
    """ Class folder names of the training split, in the order timm's ImageFolder reader numbers them."""
    from timm.data.readers.reader_image_folder import find_images_and_targets
    root = Path(data_dir) if data_dir else Path(train_args['data_dir']) if train_args.get('data_dir') else None
    if root is None:
        return None
    split = root / train_args.get('train_split', 'train')
    if not split.is_dir():
        return None
    _, class_to_idx = find_images_and_targets(str(split))
    return sorted(class_to_idx, key=class_to_idx.get)


def _mod_stage_rows(model: nn.Module) -> str:
    rows = ['| block | channels C | c | k | routing | fusion |', '|---|---|---|---|---|---|']
    for name, block in mod_blocks(model).items():
        cells = (f'`{name}`', block.in_channels, block.c, block.k, block.routing, block.fusion)
        rows.append('| ' + ' | '.join(map(str, cells)) + ' |')
    return '\n'.join(rows)


def render_model_card(
        model: nn.Module,
        model_name: str,
        model_kwargs: Dict[str, Any],
        repo_name: str,
        results: Dict[str, Any],
        train_args: Dict[str, Any],
        dataset: Optional[str],
) -> str:
    """ The Hub README.md: metadata header, architecture, the paper's row, this checkpoint's results."""
    params, macs = measure(model, input_size=model.pretrained_cfg['input_size'])
    if results.get('top1') is not None:
        own = f"top-1 {float(results['top1']):.2f} %" + (
            f", top-5 {float(results['top5']):.2f} %" if results.get('top5') not in (None, '') else '')
    else:
        own = 'not measured: publish with `--results` (a validate.py results file) to record them'
    shown_args = {k: v for k, v in sorted(train_args.items()) if _is_plain(v) and k not in MACHINE_LOCAL_ARGS}
    args_yaml = yaml.safe_dump(shown_args, default_flow_style=None)
    fields = dict(
        datasets_header=f'datasets:\n- {dataset}\n' if dataset else '',
        repo_name=repo_name,
        model_name=model_name,
        num_classes=model.num_classes,
        params_m=f'{params / 1e6:.2f}',
        gmacs=f'{macs / 1e9:.3f}',
        input_size='x'.join(map(str, model.pretrained_cfg['input_size'][1:])),
        model_args=json.dumps(model_kwargs, sort_keys=True),
        own_results=own,
        results_source=results.get('source', '-'),
        train_command='python train.py -c args.yaml' if train_args else '# not recorded: a bare weight file',
        train_args_yaml=args_yaml.strip() if train_args else '# not recorded',
    )
    if not mod_blocks(model):
        return Template(package_file('hub_cards', PLAIN_CARD_TEMPLATE).read_text()).substitute(fields)
    paper = PAPER_MODELS.get(model_name)
    if paper:
        paper_row = (f'| {paper.paper_name} | {paper.top1} | {paper.gmacs} | {paper.params} | {paper.cpu_ms} '
                     f'| {paper.gpu_ms} |')
    else:
        origin = f"timm-mod's MoD version of timm's `{OUR_MODELS[model_name]}`" if model_name in OUR_MODELS else '-'
        paper_row = f'| not in the paper: {origin} | - | - | - | - | - |'
    return Template(package_file('hub_cards', CARD_TEMPLATE).read_text()).substitute(
        fields,
        paper_name=paper.paper_name if paper else model_name,
        depths=','.join(str(len(list(stage.children()))) for stage in find_family(model).stages(model)),
        mod_blocks=_mod_stage_rows(model),
        paper_row=paper_row,
    )


def _is_plain(value: Any) -> bool:
    """ YAML-safe: the train args worth showing in a card (not the objects some scripts store there)."""
    if isinstance(value, dict):
        return all(_is_plain(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    return isinstance(value, (str, int, float, bool, type(None)))


def check_hub_access(repo_id: str) -> str:
    """ The user's token, after checking it reaches the Hub; raises before any work is done otherwise."""
    from huggingface_hub import HfApi, get_token
    if '/' not in repo_id:
        raise ValueError(f'--repo-id {repo_id!r} must be ORG/NAME.')
    if os.environ.get('HF_HUB_OFFLINE', '').lower() in ('1', 'true', 'yes'):
        raise ConnectionError('HF_HUB_OFFLINE is set, so nothing can be pushed; unset it, or use --out-dir.')
    token = get_token()
    if not token:
        raise PermissionError('No Hugging Face token: run `hf auth login` or set HF_TOKEN, or use --out-dir.')
    try:
        HfApi().whoami(token=token)
    except Exception as error:
        raise ConnectionError(f'Cannot reach the Hugging Face Hub with this token ({error}); use --out-dir.') from error
    return token


def publish(
        model_name: str,
        checkpoint_path: Path,
        out_dir: Optional[Path] = None,
        repo_id: Optional[str] = None,
        num_classes: Optional[int] = None,
        use_ema: bool = False,
        model_kwargs: Optional[Dict[str, Any]] = None,
        results_file: Optional[Path] = None,
        data_dir: Optional[Path] = None,
        dataset: Optional[str] = None,
        overwrite: bool = False,
) -> str:
    """ Build the Hub folder for a trained model and write it to `out_dir` or push it to `repo_id`.

    The folder is built beside `out_dir` and swapped in only when complete (`staged_output`), so an interrupted
    publish leaves the old folder or the new one, whole. An existing non-empty `out_dir` is replaced only with
    `overwrite`.
    """
    if (out_dir is None) == (repo_id is None):
        raise ValueError('Give exactly one of --out-dir (a local folder) or --repo-id (push to the Hub).')
    token = check_hub_access(repo_id) if repo_id else None
    # a plain timm model (a teacher) is published as it is; weights of a to_mod-converted one do not fit it, and
    # timm could not rebuild that from a Hub config
    model, checkpoint, model_kwargs = model_from_checkpoint(
        model_name, checkpoint_path, num_classes=num_classes, model_kwargs=model_kwargs, use_ema=use_ema,
        convert_plain=False)
    recorded_data = checkpoint.train_args.get('data_dir') or checkpoint.train_args.get('data')
    if out_dir is not None:  # never over what publish reads, nor the data folder training read
        out_dir = check_replaceable_folder(out_dir, overwrite, option='--out-dir',
                                           keep=(checkpoint_path, results_file, data_dir, recorded_data))

    if results_file is not None:
        results = dict(read_results(results_file), source=f'validate.py results file `{Path(results_file).name}`')
    else:
        results = _training_results(checkpoint)
    label_names = _label_names(checkpoint.train_args, data_dir)
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f'{data_dir or recorded_data} has {len(label_names)} classes, but the checkpoint\'s '
                         f'classifier has {model.num_classes}: the label names would be wrong; give the --data-dir '
                         f'the model was trained on.')
    # the preprocessing the weights were trained and evaluated with, as train.py resolves it
    data_config = resolve_data_config(checkpoint.train_args, model=model) if checkpoint.train_args else None
    dataset = dataset or ('imagenet-1k' if model.num_classes == 1000 else None)
    repo_name = repo_id.split('/')[-1] if repo_id else out_dir.name

    if repo_id is not None:
        with tempfile.TemporaryDirectory(prefix='timm-mod-publish-') as staging:
            _write_hub_folder(Path(staging) / 'hub', model, model_name, model_kwargs, repo_name, results, checkpoint,
                              label_names, data_config, dataset)
            from huggingface_hub import HfApi
            api = HfApi(token=token)
            api.create_repo(repo_id, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(Path(staging) / 'hub'),
                              commit_message=f'Add {model_name} weights')
        return f'https://huggingface.co/{repo_id}'
    with staged_output(out_dir) as staging:
        _write_hub_folder(staging, model, model_name, model_kwargs, repo_name, results, checkpoint, label_names,
                          data_config, dataset)
    return str(out_dir)


def _write_hub_folder(folder: Path, model: nn.Module, model_name: str, model_kwargs: Dict[str, Any], repo_name: str,
                      results: Dict[str, Any], checkpoint: Checkpoint, label_names: Optional[List[str]],
                      data_config: Optional[Dict[str, Any]], dataset: Optional[str]) -> None:
    """ config.json and model.safetensors from timm's `save_for_hf`, and the model card."""
    save_for_hf(
        model, str(folder), model_config=dict(label_names=label_names) if label_names else None,
        safe_serialization=True, data_config=data_config)
    config = json.loads((folder / 'config.json').read_text())
    config['model_args'] = reconstruction_args(model, model_kwargs)
    (folder / 'config.json').write_text(json.dumps(config, indent=2))
    model.pretrained_cfg = {**model.pretrained_cfg, **(data_config or {})}
    (folder / 'README.md').write_text(render_model_card(
        model, model_name, config['model_args'], repo_name, results, checkpoint.train_args, dataset))
    umask = os.umask(0)
    os.umask(umask)
    for path in folder.iterdir():  # readable like any file the user writes (safetensors writes 0600)
        path.chmod(0o666 & ~umask)
