""" 0.3's module paths still import, warn with the new path, and give the very objects of the new modules."""
import importlib
import sys

import pytest

MOVED = {
    'timm_mod.models.hub': ['timm_mod.experiments.publish'],
    'timm_mod.models.checkpoint': ['timm_mod.models._helpers', 'timm_mod.experiments.convert'],
    'timm_mod.models.zoo': ['timm_mod.models._zoo'],
    'timm_mod.utils.runtimes': ['timm_mod.experiments.runtimes'],
    'timm_mod.utils.in_memory_data': ['timm_mod.experiments.in_memory_data'],
}


@pytest.mark.parametrize('old', MOVED)
def test_an_old_path_warns_and_gives_the_moved_objects(old: str) -> None:
    sys.modules.pop(old, None)
    with pytest.warns(FutureWarning, match=f'{old} is deprecated: import from'):
        module = importlib.import_module(old)
    homes = [importlib.import_module(new) for new in MOVED[old]]
    assert module.__all__
    for name in module.__all__:
        assert any(getattr(home, name, None) is getattr(module, name) for home in homes), name
