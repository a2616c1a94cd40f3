""" ImageFolder splits as timm's reader sees them: checked, their class maps, fingerprints and stratified splits."""
import hashlib
import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    'check_image_folder', 'eval_image_folder', 'split_classes', 'check_class_maps', 'split_fingerprint',
    'stratified_split',
]


def check_image_folder(root: Path, split: str) -> Path:
    """ The split folder, or a clear error when it is not an ImageFolder (class subfolders of images)."""
    folder = Path(root).expanduser() / split
    if not folder.is_dir():
        raise FileNotFoundError(f'No {split!r} split in {root}: expected the folder {folder}/<class name>/<images>.')
    if not any(child.is_dir() for child in folder.iterdir()):
        raise ValueError(
            f'{folder} has no class subfolders: an ImageFolder split holds one folder per class, '
            f'{folder}/<class name>/<image files>.')
    return folder


def eval_image_folder(root: Path, split: str, data_config: Dict[str, Any],
                      class_map: Optional[Dict[str, int]] = None) -> Any:
    """ A checked split as timm's dataset, through timm's eval transform for `data_config`; labelled with
    `class_map` (the training split's) where given, else by its own folders."""
    from timm.data import create_dataset, create_transform
    check_image_folder(root, split)
    dataset = create_dataset('', root=str(root), split=split, class_map=class_map)
    dataset.transform = create_transform(**data_config)
    return dataset


def split_classes(root: Path, split: str) -> Dict[str, int]:
    """ The class map timm's ImageFolder reader builds for a split: class folders holding at least one image."""
    from timm.data.readers.reader_image_folder import find_images_and_targets
    return find_images_and_targets(str(check_image_folder(root, split)))[1]


def check_class_maps(root: Path, train_split: str, val_split: str, num_classes: Optional[int]) -> Dict[str, int]:
    """ The training split's class map, with which the held-out split is labelled; a clear error when the
    held-out split has classes training never saw, or the classifier is smaller than the class count.

    timm's reader numbers each split's classes on its own, so a class folder empty in one split would shift
    every label after it and report a wrong accuracy.
    """
    train_classes = split_classes(root, train_split)
    unseen = sorted(set(split_classes(root, val_split)) - set(train_classes))
    if unseen:
        raise ValueError(f'{Path(root) / val_split} has classes with no image in {Path(root) / train_split}: '
                         f'{", ".join(unseen[:5])}{" ..." if len(unseen) > 5 else ""}; a model cannot learn them. '
                         f'Give both splits the same class folders.')
    if num_classes is not None and num_classes < len(train_classes):
        raise ValueError(f'num_classes is {num_classes}, but {Path(root) / train_split} has {len(train_classes)} '
                         f'classes; set num_classes to at least {len(train_classes)}.')
    return train_classes


def split_fingerprint(root: Path, split: str) -> Dict[str, Any]:
    """ The split's image count and a hash of its sorted image paths (relative to the split): a cheap record of
    which images a run trained or was scored on, which changes when images are added, removed or renamed."""
    from timm.data.readers.img_extensions import get_img_extensions
    folder = check_image_folder(root, split)
    extensions = get_img_extensions(as_set=True)
    paths = sorted(
        os.path.relpath(os.path.join(parent, name), folder)
        for parent, _, names in os.walk(folder, followlinks=True)
        for name in names if os.path.splitext(name)[1].lower() in extensions)
    return dict(images=len(paths), sha256=hashlib.sha256('\n'.join(paths).encode()).hexdigest())


def stratified_split(targets: Sequence[int], validation_fraction: float, rng: np.random.Generator
                     ) -> Tuple[np.ndarray, np.ndarray]:
    """ (training, validation) indices with `validation_fraction` of every class, rounded, in validation."""
    targets = np.asarray(targets)
    train, validation = [], []
    for label in np.unique(targets):
        indices = rng.permutation(np.flatnonzero(targets == label))
        count = round(len(indices) * validation_fraction)
        validation.append(indices[:count])
        train.append(indices[count:])
    return np.concatenate(train), np.concatenate(validation)
