""" The project's data folders (`train_args/`, `hub_cards/`) wherever the package runs from: inside an installed
wheel they are `timm_mod/<folder>` (hatch's force-include), in a source checkout the repository's top-level
folders, so no symbolic link is needed (Windows checkouts have none)."""
from importlib.resources import files
from pathlib import Path

__all__ = ['package_file']


def package_file(folder: str, name: str) -> Path:
    """ The path of `folder/name`, in the installed package or else in the source checkout around it."""
    installed = Path(str(files('timm_mod'))) / folder / name
    if installed.exists():
        return installed
    checkout = Path(__file__).resolve().parents[2] / folder / name
    if not checkout.exists():
        raise FileNotFoundError(f'timm-mod ships {folder}/{name}, but neither {installed} nor {checkout} exists; '
                                f'reinstall timm-mod.')
    return checkout
