""" The `timm-mod` command: argument parsing only, the work is done by library functions."""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

__all__ = ['main', 'build_parser']


def _list(args: argparse.Namespace) -> None:
    from .zoo import ZOO_COLUMNS, describe_zoo, format_table, zoo_table_rows
    print(format_table(ZOO_COLUMNS, zoo_table_rows(describe_zoo(args.filter)), markdown=args.markdown))


def _digits(args: argparse.Namespace) -> None:
    from .quickstart import write_digits
    print(write_digits(args.data_dir))


def _quickstart(args: argparse.Namespace) -> None:
    from .quickstart import format_results, run_quickstart
    results = run_quickstart(
        train_args_file=args.config,
        data_dir=args.data_dir,
        output_dir=args.output,
        model_name=args.model,
        baseline_name=args.baseline,
        epochs=args.epochs,
    )
    print(format_results(results))


def build_parser() -> argparse.ArgumentParser:
    from .quickstart import DEFAULT_DATA_DIR
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
                            help='checkpoint folder, one subfolder per model (default: output/quickstart)')
    quickstart.add_argument('--model', default=None, help='MoD model (default: the arg file\'s model)')
    quickstart.add_argument('--baseline', default=None,
                            help="plain timm model trained with the same recipe (default: the paper's baseline)")
    quickstart.add_argument('--epochs', type=int, default=None, help='override the arg file\'s epochs')
    quickstart.set_defaults(run=_quickstart)

    digits = commands.add_parser('digits', help="write sklearn's digits as an ImageFolder for train.py and print its path")
    digits.add_argument('--data-dir', type=Path, default=DEFAULT_DATA_DIR, help=f'(default: {DEFAULT_DATA_DIR})')
    digits.set_defaults(run=_digits)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    import timm_mod  # noqa: F401  registers the zoo before any subcommand looks it up
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as error:
        sys.exit(f'timm-mod {args.command}: error: {error}')


if __name__ == '__main__':
    main()
