""" The package's floors, arrows one way: utils <- layers <- models <- experiments <- commands. A module imports
only its own floor and those below; the deprecated 0.3 aliases are the named exceptions."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / 'timm_mod'
FLOORS = ('utils', 'layers', 'models', 'experiments', 'commands')
ALIASES = {'models/hub.py', 'models/checkpoint.py', 'models/zoo.py', 'utils/runtimes.py', 'utils/in_memory_data.py'}


def imported_floors(path: Path):
    """ The floors of timm_mod a module imports, relative (`from ..models import x`) or absolute."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2 and node.module:
                yield node.module.split('.')[0]
            elif node.level == 0 and (node.module or '').startswith('timm_mod.'):
                yield node.module.split('.')[1]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith('timm_mod.'):
                    yield alias.name.split('.')[1]


def test_no_module_imports_a_floor_above_its_own() -> None:
    upward = []
    for path in sorted(PACKAGE.glob('*/*.py')):
        floor, name = path.parent.name, f'{path.parent.name}/{path.name}'
        if floor not in FLOORS or name in ALIASES:
            continue
        upward += [f'{name} imports {other}' for other in imported_floors(path)
                   if other in FLOORS and FLOORS.index(other) > FLOORS.index(floor)]
    assert not upward, upward


def test_utils_knows_nothing_of_timm_mod_and_models_holds_families_and_private_machinery() -> None:
    for path in PACKAGE.glob('utils/*.py'):
        if f'utils/{path.name}' not in ALIASES:
            assert not list(imported_floors(path)), path.name
    public = {p.name for p in PACKAGE.glob('models/*.py') if not p.name.startswith('_')} - {
        Path(alias).name for alias in ALIASES if alias.startswith('models/')}
    assert public == {'resnet.py', 'efficientnet.py', 'convnext.py', 'regnet.py', 'dense_prediction.py'}
