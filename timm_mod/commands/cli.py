""" The `timm-mod` command: argument parsing only, the work is done by library functions.

Each subcommand imports what it runs when it runs: the runtimes, matplotlib and scikit-learn are optional extras."""
import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

from timm.utils import ParseKwargs

if TYPE_CHECKING:
    import torch.nn as nn

__all__ = ['main', 'build_parser']


def _list(args: argparse.Namespace) -> None:
    from ..models import ZOO_COLUMNS, describe_zoo, zoo_table_rows
    from ..utils.tables import format_table
    print(format_table(ZOO_COLUMNS, zoo_table_rows(describe_zoo(args.filter)), markdown=args.markdown))


def _digits(args: argparse.Namespace) -> None:
    from ..experiments.quickstart import write_digits
    print(write_digits(args.data_dir))


def _quickstart(args: argparse.Namespace) -> None:
    from ..experiments.quickstart import format_results, run_quickstart
    rows, _ = run_quickstart(
        train_args_file=args.config,
        data_dir=args.data_dir,
        output_dir=args.output,
        model_name=args.model,
        baseline_name=args.baseline,
        epochs=args.epochs,
    )
    print(format_results(rows))


def _compare(args: argparse.Namespace) -> None:
    from ..experiments.compare import ModelSpec, compare, format_comparison, write_comparison
    from ..experiments.recipe import load_train_args
    specs = [ModelSpec.parse(text) for text in args.models]
    rows, results = compare(
        specs, load_train_args(args.config), args.data_dir, args.output_dir, seeds=args.seeds, epochs=args.epochs,
        unfinished=args.unfinished, measure_speed=not args.no_speed, bench_batch_size=args.bench_batch_size,
        threads=args.threads, rounds=args.rounds, data_path=args.data_path)
    if rows:
        for path in write_comparison(rows, args.output_dir, results):
            print(path, file=sys.stderr)
    print(format_comparison(rows, markdown=args.markdown))


def _dense_quickstart(args: argparse.Namespace) -> None:
    from ..experiments.dense_quickstart import format_dense_results, run_dense_quickstart
    rows = run_dense_quickstart(
        args.task, backbone=args.backbone, baseline=args.baseline, data_dir=args.data_dir, epochs=args.epochs)
    print(format_dense_results(args.task, rows))


def _publish(args: argparse.Namespace) -> None:
    from ..experiments.publish import publish
    location = publish(
        args.model,
        args.checkpoint,
        out_dir=args.out_dir,
        repo_id=args.repo_id,
        num_classes=args.num_classes,
        use_ema=args.ema,
        model_kwargs=args.model_kwargs,
        results_file=args.results,
        data_dir=args.data_dir,
        dataset=args.dataset,
        overwrite=args.overwrite,
    )
    print(location)


def _convert(args: argparse.Namespace) -> None:
    from ..experiments.quickstart import finetune_args_file
    from ..experiments.convert import convert_plain_weights, plain_counterpart
    path = convert_plain_weights(
        args.model, args.output, checkpoint_path=args.checkpoint, pretrained=args.pretrained, overwrite=args.overwrite,
        use_ema=args.ema)
    source = "timm's pretrained weights" if args.pretrained else f'{_weights_key(args.ema)} of {args.checkpoint}'
    print(f'{plain_counterpart(args.model)} weights in {args.model}: {path}, from {source}\n'
          f'fine-tune: python train.py -c {finetune_args_file()} --model {args.model} '
          f'--initial-checkpoint {path} --data-dir DATA')


def _benchmark(args: argparse.Namespace) -> None:
    import itertools
    import torch
    from ..experiments.benchmark import (
        bench_columns, bench_table_rows, check_device, run_benchmark, settings_grid, write_results)
    from ..experiments.profiling import format_profile_gap, format_time_share, profile_gap, time_shares
    from ..utils.output import check_output_folder
    from ..utils.tables import format_table
    check_device(args.device)
    if args.output is not None:
        check_output_folder(args.output)
    settings = settings_grid(args.batch_size, args.threads, args.task, args.mode, channels_last=args.channels_last,
                             bf16=args.bf16, device=args.device, int8=args.int8)
    # the breakdown first: a setting it cannot time is refused before the long side-by-side timing
    shares = time_shares(args.models, settings) if args.breakdown else []
    rows = run_benchmark(args.models, settings, rounds=args.rounds, min_run_time=args.min_run_time)
    print(f'device: {rows[0].device_name}; torch {torch.__version__}')
    print(format_table(bench_columns(rows), bench_table_rows(rows), markdown=args.markdown))
    if args.output:
        for path in write_results(rows, args.output):
            print(path, file=sys.stderr)
    if shares:
        print('time inside the MoD blocks, per forward (forward hooks):')
        for share in shares:
            print(format_time_share(share))
    if args.profile:
        for model_name, setting in itertools.product(args.models, settings):
            print('\n' + format_profile_gap(model_name, setting, profile_gap(model_name, setting), args.markdown))


def build_parser() -> argparse.ArgumentParser:
    from ..experiments.benchmark import MODES
    from ..experiments.dense_quickstart import DEFAULT_DENSE_DIR
    from ..experiments.quickstart import DEFAULT_DATA_DIR
    from ..experiments.runtimes import RUNTIMES
    parser = argparse.ArgumentParser(prog='timm-mod', description='CNN Mixture-of-Depths models for timm.')
    commands = parser.add_subparsers(dest='command', required=True)

    list_parser = commands.add_parser(
        'list', help='the MoD zoo: paper name, depths, c, params and MACs beside the published figures')
    list_parser.add_argument('--filter', default='*_mod*', help='timm model name pattern (default: *_mod*)')
    list_parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
    list_parser.set_defaults(run=_list)

    quickstart = commands.add_parser(
        'quickstart', help="train a MoD ResNet and its timm counterpart on sklearn's digits, on the CPU")
    quickstart.add_argument('-c', '--config', type=Path, default=None,
                            help='train.py arg file (default: the packaged train_args/quickstart.yaml)')
    quickstart.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR,
                            help=f'where the digits ImageFolder is written once (default: {DEFAULT_DATA_DIR})')
    quickstart.add_argument('--output', type=Path, default=Path('output/quickstart'),
                            help='checkpoint folder, <model>/seed<N>/ per run (default: output/quickstart)')
    quickstart.add_argument('--model', default=None, help='MoD model (default: the arg file\'s model)')
    quickstart.add_argument('--baseline', default=None,
                            help="plain timm model trained with the same recipe (default: the paper's baseline)")
    quickstart.add_argument('--epochs', type=int, default=None, help='override the arg file\'s epochs')
    quickstart.set_defaults(run=_quickstart)

    from ..experiments.compare import UNFINISHED
    from ..experiments.in_memory_data import DATA_PATHS
    compare_parser = commands.add_parser(
        'compare', help='train timm models with one train.py arg file on an ImageFolder and tabulate accuracy, '
                        'params, MACs and measured CPU speed-up (resumable)')
    compare_parser.add_argument('-c', '--config', type=Path, required=True, help='train.py arg file (YAML)')
    compare_parser.add_argument('--data-dir', type=Path, required=True,
                                help="ImageFolder root with the arg file's train_split and val_split folders")
    compare_parser.add_argument('--models', nargs='+', required=True, metavar='NAME[:KEY=VALUE,...][@SEEDS]',
                                help='timm models with optional create_model kwargs and seeds, e.g. resnet18 '
                                     'resnet18_mod resnet18_mod:routing=random@0; speed-ups are against the first '
                                     'model without MoD blocks')
    compare_parser.add_argument('--seeds', type=int, nargs='*', default=[0],
                                help='seeds of every model that names none (default: 0)')
    compare_parser.add_argument('--output-dir', type=Path, default=Path('output/compare'),
                                help='one folder per model and seed, and the results table (default: output/compare)')
    compare_parser.add_argument('--epochs', type=int, default=None, help="override the arg file's epochs")
    compare_parser.add_argument('--unfinished', choices=UNFINISHED, default='resume',
                                help='what to do with an interrupted run: resume it from its last epoch (default) '
                                     'or skip it')
    compare_parser.add_argument('--data-path', choices=DATA_PATHS, default='auto',
                                help='memory: decode the images once and augment batches as tensors; loader: '
                                     "timm's loaders; auto (default): memory where the data fit and the recipe "
                                     'allows it')
    compare_parser.add_argument('--no-speed', action='store_true', help='train and tabulate only, time nothing')
    compare_parser.add_argument('--bench-batch-size', type=int, default=None,
                                help="batch of the speed measurement (default: the arg file's batch_size)")
    compare_parser.add_argument('--threads', type=int, default=1, help='CPU threads of the speed measurement')
    compare_parser.add_argument('--rounds', type=int, default=5,
                                help='alternating timing rounds, the median is reported (default: 5)')
    compare_parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
    compare_parser.set_defaults(run=_compare)

    dense = commands.add_parser(
        'dense-quickstart',
        help='FCN or Faster R-CNN over a MoD backbone and its timm counterpart, on digit scenes, on the CPU')
    dense.add_argument('--task', required=True, choices=['detection', 'segmentation'])
    dense.add_argument('--backbone', default='resnet18_mod', help='MoD backbone (default: resnet18_mod)')
    dense.add_argument('--baseline', default=None, help="plain backbone under the same head (default: the MoD "
                                                       "model's baseline)")
    dense.add_argument('--data-dir', type=Path, default=DEFAULT_DENSE_DIR,
                       help=f'digit scenes, written once if absent (default: {DEFAULT_DENSE_DIR})')
    dense.add_argument('--epochs', type=int, default=None, help='override the default epochs')
    dense.set_defaults(run=_dense_quickstart)

    publish = commands.add_parser(
        'publish', help='a Hugging Face Hub folder (config.json, model.safetensors, README.md) from a checkpoint')
    publish.add_argument('--model', required=True, help='registered model name the checkpoint was trained as')
    publish.add_argument('--checkpoint', type=Path, required=True,
                         help="train.py's model_best.pth.tar / checkpoint-*.pth.tar, or a .safetensors file")
    target = publish.add_mutually_exclusive_group(required=True)
    target.add_argument('--out-dir', type=Path, help='write the folder here, no network needed')
    target.add_argument('--repo-id', help="push to this Hub repo (ORG/NAME) with the user's token")
    publish.add_argument('--num-classes', type=int, default=None, help="default: the checkpoint's classifier size")
    publish.add_argument('--ema', action='store_true', help="publish train.py's EMA weights (state_dict_ema)")
    publish.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                         help="model arguments such as c=32 (default: those train.py recorded)")
    publish.add_argument('--results', type=Path, default=None, help="validate.py --results-file output for the card")
    publish.add_argument('--data-dir', type=Path, default=None,
                         help="training data root for the label names (default: the one train.py recorded)")
    publish.add_argument('--dataset', default=None,
                         help='Hub dataset id for the card (default: imagenet-1k for 1000 classes)')
    publish.add_argument('--overwrite', action='store_true', help='replace a non-empty --out-dir')
    publish.set_defaults(run=_publish)

    convert = commands.add_parser(
        'convert', help="a plain model's trained weights as an --initial-checkpoint for its MoD model (to_mod)")
    convert.add_argument('--model', required=True, help='registered MoD model, e.g. resnet50_mod')
    source = convert.add_mutually_exclusive_group(required=True)
    source.add_argument('--checkpoint', type=Path, help='checkpoint of the plain counterpart (e.g. resnet50)')
    source.add_argument('--pretrained', action='store_true', help="timm's pretrained weights of the plain counterpart")
    convert.add_argument('--output', type=Path, required=True, help='state dict to write (.pth or .safetensors)')
    convert.add_argument('--ema', action='store_true', help="convert train.py's EMA weights (state_dict_ema)")
    convert.add_argument('--overwrite', action='store_true',
                         help='replace an existing --output (never the --checkpoint it reads)')
    convert.set_defaults(run=_convert)

    bench = commands.add_parser(
        'benchmark', help="speed-up over the paper's baseline beside the identity bound, measured side by side")
    bench.add_argument('--models', nargs='+', default=['resnet50_mod', 'resnet75_mod', 'mobilenetv2_mod'])
    bench.add_argument('--batch-size', type=int, nargs='+', default=[1, 16])
    bench.add_argument('--threads', type=int, nargs='+', default=[1, 0], help='CPU threads; 0 = all cores')
    bench.add_argument('--task', nargs='+', choices=['inference', 'train'], default=['inference'])
    bench.add_argument('--mode', nargs='+', choices=MODES, default=['eager'],
                       help="cudagraphs: torch.compile(mode='reduce-overhead'), CUDA graphs on a GPU; freezing: "
                            "torch.compile with Inductor's freezing (inference); onnxruntime, openvino: the ONNX "
                            "export in that runtime (pip install 'timm-mod[deploy]'), its parity with PyTorch checked")
    bench.add_argument('--channels-last', action='store_true')
    bench.add_argument('--bf16', action='store_true', help='bfloat16 autocast')
    bench.add_argument('--int8', action='store_true',
                       help='runtime modes: time the exports quantized to int8 (onnxruntime static quantization, '
                            'QDQ, calibrated on random batches; the routing stays float32)')
    bench.add_argument('--device', default='cuda' if _cuda_available() else 'cpu')
    bench.add_argument('--rounds', type=int, default=5, help='interleaved rounds; the median is reported')
    bench.add_argument('--min-run-time', type=float, default=0.2, help='seconds per timing block')
    bench.add_argument('--output', type=Path, default=None, help='write benchmark.csv, .json and .png here')
    bench.add_argument('--breakdown', action='store_true',
                       help="the MoD blocks' share of the forward: selectors, slim blocks, top-k + gather + fusion "
                            '(eager CPU inference)')
    bench.add_argument('--profile', action='store_true',
                       help='after the table, the operators where each MoD model spends more than its identity '
                            "bound (torch.profiler, kernel time on CUDA; in a runtime mode the runtime's profiler)")
    bench.add_argument('--markdown', action='store_true', help='print a Markdown table')
    bench.set_defaults(run=_benchmark)

    selection = commands.add_parser(
        'selection', help='how often each channel is selected, per MoD block and class (paper Figure 4)')
    _add_trained_model_arguments(selection)
    selection.add_argument('--classes', nargs='+', default=None, help='class folder names to count (default: all)')
    selection.add_argument('--max-per-class', type=int, default=None, help='cap on samples per class')
    selection.add_argument('--output', type=Path, required=True, help='folder for selection.csv/.json and PNGs')
    selection.set_defaults(run=_selection)

    quantize = commands.add_parser(
        'quantize', help='int8 post-training quantization of a trained model: its ONNX export and the int8 version, '
                         'scored beside PyTorch in onnxruntime and OpenVINO')
    _add_trained_model_arguments(quantize)
    quantize.add_argument('--calibration-split', default='train', help='split to calibrate on (default: train)')
    quantize.add_argument('--calibration-images', type=int, default=256, help='images to calibrate on (default: 256)')
    quantize.add_argument('--runtime', nargs='+', choices=RUNTIMES, default=list(RUNTIMES))
    quantize.add_argument('--threads', type=int, default=0, help='runtime CPU threads; 0 = all cores')
    quantize.add_argument('--train-split', default='train',
                          help='the split the model was trained on: its classes label the held-out images '
                               '(default: train)')
    quantize.add_argument('--output', type=Path, required=True,
                          help='new folder for model.onnx, model_int8.onnx and accuracy.json, written whole')
    quantize.add_argument('--overwrite', action='store_true',
                          help='replace a non-empty --output whole (never one holding the data or the checkpoint)')
    quantize.set_defaults(run=_quantize)

    digits = commands.add_parser(
        'digits', help="write sklearn's digits as an ImageFolder for train.py and print its path")
    digits.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR, help=f'(default: {DEFAULT_DATA_DIR})')
    digits.set_defaults(run=_digits)
    return parser


def _add_trained_model_arguments(parser: argparse.ArgumentParser) -> None:
    """ A trained model and the ImageFolder to run it on, with its preprocessing (selection, quantize)."""
    parser.add_argument('--model', required=True, help='registered name, hf-hub:ORG/NAME or local-dir:PATH')
    parser.add_argument('--checkpoint', type=Path, default=None, help='train.py checkpoint or .safetensors')
    parser.add_argument('--ema', action='store_true', help="use train.py's EMA weights (state_dict_ema)")
    parser.add_argument('--model-kwargs', nargs='*', default={}, action=ParseKwargs,
                        help='model arguments such as fusion=last (default: those train.py recorded)')
    parser.add_argument('--num-classes', type=int, default=None, help="default: the checkpoint's classifier")
    parser.add_argument('--data-dir', type=Path, default=None, help='ImageFolder root (default: the quickstart digits)')
    parser.add_argument('--split', default='validation', help='split folder (default: validation)')
    parser.add_argument('--input-size', type=int, nargs=3, default=None, help="default: the run's or the model's")
    parser.add_argument('--crop-pct', type=float, default=None)
    parser.add_argument('--interpolation', default=None)
    parser.add_argument('-b', '--batch-size', type=int, default=32)


def _trained_model_and_data(args: argparse.Namespace, convert_plain: bool = True
                            ) -> Tuple['nn.Module', Path, Dict[str, Any]]:
    """ The model, its data folder and the preprocessing its training run used (overridden by the arguments);
    a plain timm model becomes its MoD version unless `convert_plain` is False."""
    from timm.data import resolve_data_config
    from ..experiments.quickstart import DEFAULT_DATA_DIR, write_digits
    from ..models import load_trained_model
    model, train_args = load_trained_model(args.model, args.checkpoint, args.num_classes, convert_plain=convert_plain,
                                           use_ema=args.ema, model_kwargs=args.model_kwargs)
    if args.checkpoint is not None:
        print(f'weights: {_weights_key(args.ema)} of {args.checkpoint}', file=sys.stderr)
    data_dir = args.data_dir or write_digits(DEFAULT_DATA_DIR)
    overrides = {key: value for key, value in (('input_size', args.input_size), ('crop_pct', args.crop_pct),
                                                 ('interpolation', args.interpolation)) if value is not None}
    return model, data_dir, resolve_data_config({**train_args, **overrides}, model=model)


def _weights_key(ema: bool) -> str:
    return 'the EMA weights (state_dict_ema)' if ema else 'the weights (state_dict)'


def _quantize(args: argparse.Namespace) -> None:
    from ..experiments.quantize import ACCURACY_COLUMNS, accuracy_table_rows, check_accuracy_options, int8_accuracy
    from ..experiments.quickstart import DEFAULT_DATA_DIR
    from ..utils.output import check_replaceable_folder
    from ..experiments.runtimes import require_runtime
    from ..utils.tables import format_table
    check_replaceable_folder(args.output, args.overwrite, keep=(args.data_dir or DEFAULT_DATA_DIR, args.checkpoint))
    check_accuracy_options(args.calibration_images, args.batch_size, args.threads)
    for runtime in ('onnxruntime', *args.runtime):  # onnxruntime quantizes, whichever runtimes score
        require_runtime(runtime)
    model, data_dir, data_config = _trained_model_and_data(args, convert_plain=False)  # plain models as they are
    rows = int8_accuracy(
        model, data_dir, data_config, args.output, runtimes=tuple(args.runtime), split=args.split,
        calibration_split=args.calibration_split, calibration_images=args.calibration_images,
        batch_size=args.batch_size, threads=args.threads, train_split=args.train_split, overwrite=args.overwrite)
    print(args.output, file=sys.stderr)
    print(format_table(ACCURACY_COLUMNS, accuracy_table_rows(rows)))


def _selection(args: argparse.Namespace) -> None:
    from ..experiments.quickstart import DEFAULT_DATA_DIR
    from ..experiments.selection import PROBE_IMAGES, count_selections, summarize, write_selection
    from ..utils.output import check_outside_data, check_output_folder
    from ..utils.tables import format_table
    check_output_folder(args.output)
    check_outside_data(args.output, args.data_dir or DEFAULT_DATA_DIR)
    model, data_dir, data_config = _trained_model_and_data(args)
    selection = count_selections(
        model, data_dir, args.split, classes=args.classes, max_per_class=args.max_per_class,
        batch_size=args.batch_size, data_config=data_config)
    for path in write_selection(selection, args.output, plot_classes=args.classes):
        print(path, file=sys.stderr)
    rows = [(s.block, str(s.channels), str(s.k), str(s.ever_selected), f'{s.entropy_bits:.2f}',
             f'{s.max_entropy_bits:.2f}', f'{s.class_overlap:.2f}') for s in summarize(selection)]
    header = ('block', 'C', 'k', 'ever selected', 'entropy (bits)', 'max entropy', 'class top-k overlap')
    print(format_table(header, rows))
    states = [(name, f'{s.dead_units}/{s.hidden_units}', f'{s.score_spread:.4f}', f'{s.distinct_channels}/{s.channels}',
               f'{s.weight_norm:.3f}') for name, s in selection.states.items()]
    print(f'\nthe selectors on the first {PROBE_IMAGES} images (eval mode):')
    print(format_table(('block', 'dead hidden units', 'score spread (max - min, mean)', 'channels routed',
                        'weight norm'), states))
    ablation = selection.ablation
    if ablation is not None:
        print(f'\nwhat the routing carries, on the {ablation.images} images counted: top-1 {ablation.top1_learned:.2f} '
              f'with the learned top k, {ablation.top1_fixed_random:.2f} with a fixed random set of k channels per '
              f'block (seed {ablation.seed}): {ablation.carried:+.2f} points; {ablation.top1_neighbour:.2f} with each '
              f'image routed as the previous image of its batch: {ablation.carried_per_image:+.2f} points')


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    import timm_mod  # noqa: F401  registers the zoo before any subcommand looks it up
    from ..utils.output import exit_cleanly_on_sigterm
    exit_cleanly_on_sigterm()  # a killed command cleans up its staged output as on Ctrl-C
    try:
        args.run(args)
    except KeyboardInterrupt:
        then = ('run the same command again to resume: finished runs are kept, an interrupted one continues after '
                'its last finished epoch' if args.command in ('compare', 'quickstart') else
                'nothing half-written was left; run the command again')
        sys.exit(f'timm-mod {args.command}: interrupted; {then}.')
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, PermissionError, ConnectionError,
            NotADirectoryError, IsADirectoryError) as error:
        sys.exit(f'timm-mod {args.command}: error: {error}')


if __name__ == '__main__':
    main()
