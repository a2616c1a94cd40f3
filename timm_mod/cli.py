""" The `timm-mod` command: argument parsing only, the work is done by library functions."""
import argparse
from typing import List, Optional

__all__ = ['main']


def _list(args: argparse.Namespace) -> None:
    from .zoo import ZOO_COLUMNS, describe_zoo, format_table, zoo_table_rows
    print(format_table(ZOO_COLUMNS, zoo_table_rows(describe_zoo(args.filter)), markdown=args.markdown))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='timm-mod', description='CNN Mixture-of-Depths models for timm.')
    commands = parser.add_subparsers(dest='command', required=True)

    list_parser = commands.add_parser(
        'list', help='the MoD zoo: paper name, depths, c, params and MACs beside the published figures')
    list_parser.add_argument('--filter', default='*_mod*', help='timm model name pattern (default: *_mod*)')
    list_parser.add_argument('--markdown', action='store_true', help='print a Markdown table')
    list_parser.set_defaults(run=_list)
    return parser


def main(argv: Optional[List[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    import timm_mod  # noqa: F401  registers the zoo before any subcommand looks it up
    args.run(args)


if __name__ == '__main__':
    main()
