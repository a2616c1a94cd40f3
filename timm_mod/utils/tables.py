""" Results as people read them: text and Markdown tables, CSV and JSON files, and figures, each written whole."""
import csv
import io
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .output import write_text_whole

__all__ = ['format_table', 'write_records', 'pyplot', 'save_figure']


def format_table(header: Tuple[str, ...], rows: List[Tuple[str, ...]], markdown: bool = False) -> str:
    """ Left-aligned text columns, or a Markdown table for README.md."""
    if markdown:
        lines = ['| ' + ' | '.join(header) + ' |', '|' + '---|' * len(header)]
        return '\n'.join(lines + ['| ' + ' | '.join(row) + ' |' for row in rows])
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    return '\n'.join('  '.join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                     for line in [header, *rows])


def write_records(records: Sequence[Dict[str, Any]], output_dir: Path, stem: str) -> List[Path]:
    """ `stem`.csv and `stem`.json of one table's rows in `output_dir`, each written beside and swapped in whole."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    table = io.StringIO(newline='')
    writer = csv.DictWriter(table, fieldnames=list(records[0]))
    writer.writeheader()
    writer.writerows(records)
    paths = [output_dir / f'{stem}.csv', output_dir / f'{stem}.json']
    for path, text in zip(paths, (table.getvalue(), json.dumps(list(records), indent=2))):
        write_text_whole(path, text)
    return paths


def pyplot(figure: str) -> Optional[Any]:
    """ matplotlib's pyplot on the Agg backend (no display needed), or None with a note on stderr that `figure`
    is skipped when matplotlib is not installed (it is the `plots` extra)."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"{figure} skipped: pip install 'timm-mod[plots]' for matplotlib", file=sys.stderr)
        return None
    return plt


def save_figure(figure: Any, path: Path, dpi: int = 120) -> Path:
    """ Save and close a matplotlib figure, written beside `path` and swapped in whole."""
    path = Path(path)
    staging = path.with_name(f'.{path.stem}.partial{path.suffix}')
    figure.savefig(staging, dpi=dpi)
    import matplotlib.pyplot as plt  # there is a figure, so there is matplotlib
    plt.close(figure)
    os.replace(staging, path)
    return path
