""" The recipe search's hold-out, carved from CIFAR-10's train/ (never its validation/): 500 images per class,
drawn by one random.Random(0) from each class's sorted file list in turn (classes sorted), as symlinks in
<out>/validation; the other 4,500 per class in <out>/train.
    python docs/cifar10_study/make_holdout.py ../shared/data/cifar10 output/cifar10_holdout
"""
import random
import sys
from pathlib import Path

PER_CLASS = 500


def make_holdout(data_dir: Path, out: Path) -> None:
    if out.exists():
        raise SystemExit(f'{out} exists; remove it or choose another folder.')
    rng = random.Random(0)
    for class_dir in sorted(p for p in (data_dir / 'train').iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        held_out = set(rng.sample(files, PER_CLASS))
        for split, members in (('train', [f for f in files if f not in held_out]), ('validation', sorted(held_out))):
            (out / split / class_dir.name).mkdir(parents=True)
            for file in members:
                (out / split / class_dir.name / file.name).symlink_to(file.resolve())


if __name__ == '__main__':
    make_holdout(Path(sys.argv[1]), Path(sys.argv[2]))
