""" Small image data sets decoded once and augmented as tensors: training at the speed of its arithmetic.

On a CPU, timm's loader decodes every image again in every epoch, in worker processes that compete with the
compute threads for the same cores; for CIFAR-sized data that costs a third of an epoch. When both splits'
decoded images fit in memory and share one size, `InMemorySplit` decodes them once, and `train_batches`
applies the recipe's augmentation to whole batches: timm's own RandomResizedCrop parameters
(`RandomResizedCropAndInterpolation.get_params`, drawn from Python's `random` as timm draws them), one
bilinear crop-and-resize of the batch (`torchvision.ops.roi_align`, one sample per output pixel, rounded to
uint8 as PIL rounds), flips, and timm's normalization. Held-out images go through timm's eval transform once.
Recipes this path does not implement (other interpolations, colour jitter) use timm's loader.
"""
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image
from timm.data import create_dataset, create_transform
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision.ops import roi_align

__all__ = [
    'DATA_PATHS', 'InMemorySplit', 'in_memory_unsupported', 'resized_crops', 'train_batches', 'eval_split',
    'eval_batches',
]

DATA_PATHS = ('auto', 'memory', 'loader')  # how a study reads its images: decided by fit, or forced
_MEMORY_SHARE = 0.5  # of the memory available now, at most, for the decoded images


@dataclass
class InMemorySplit:
    """ One ImageFolder split as tensors: uint8 images (N, 3, H, W) as decoded, or float images after timm's
    eval transform (`transformed`), with their class indices."""
    images: torch.Tensor
    targets: torch.Tensor
    transformed: bool = False

    @classmethod
    def load(cls, root: Path, split: str, class_map: Dict[str, int], eval_transform: Optional[Any] = None
             ) -> 'InMemorySplit':
        """ Decode the split once (RGB, as timm's reader does), labelled with `class_map`; with `eval_transform`,
        store each image as that transform returns it."""
        dataset = create_dataset('', root=str(root), split=split, class_map=class_map)
        targets = torch.tensor([target for _, target in dataset.reader.samples], dtype=torch.int64)
        images = []
        for path, _ in dataset.reader.samples:
            image = _decode_rgb(path)
            images.append(eval_transform(image) if eval_transform is not None
                          else torch.from_numpy(np.array(image)).permute(2, 0, 1))
            if images[-1].shape != images[0].shape:
                raise ValueError(f'{path} is {image.width}x{image.height} px, the images before it '
                                 f'{images[0].shape[2]}x{images[0].shape[1]}: the in-memory path needs one size; '
                                 f'resize that image, or train with --data-path loader.')
        return cls(torch.stack(images).contiguous(), targets, transformed=eval_transform is not None)

    def __len__(self) -> int:
        return len(self.targets)


def _decode_rgb(path: str) -> Image.Image:
    """ The image as RGB (as timm's reader converts it), or a clear error naming a file PIL cannot decode."""
    try:
        with Image.open(path) as image:
            return image.convert('RGB')
    except (OSError, SyntaxError, ValueError) as error:  # PIL's errors for unreadable and cut-short files
        raise ValueError(f'Cannot decode the image {path} ({error}); remove or replace that file.') from None


def _image_sizes(root: Path, split: str) -> Tuple[int, set]:
    from timm.data.readers.reader_image_folder import find_images_and_targets
    samples = find_images_and_targets(str(Path(root) / split))[0]
    sizes = set()
    for path, _ in samples[:: max(1, len(samples) // 256)]:  # a spread sample; load() checks every image
        sizes.add(_decode_rgb(path).size)
    return len(samples), sizes


def in_memory_unsupported(cfg: Any, data_dir: Path, input_size: Sequence[int],
                          available_bytes: Optional[int] = None) -> Optional[str]:
    """ Why the in-memory path cannot train this recipe on this data (None when it can): an augmentation it
    does not implement, images of several sizes, or more decoded bytes than half the memory available
    (`available_bytes`, default what the system has free now)."""
    if cfg.train_interpolation not in ('bilinear',):
        return f"train_interpolation {cfg.train_interpolation!r} (the in-memory path resizes 'bilinear' only)"
    if cfg.color_jitter:
        return f'color_jitter {cfg.color_jitter} (not implemented in the in-memory path)'
    count, sizes = _image_sizes(data_dir, cfg.train_split)
    eval_count, _ = _image_sizes(data_dir, cfg.val_split)
    if len(sizes) != 1:
        return f'training images of {len(sizes)} sizes (the in-memory path needs one)'
    width, height = sizes.pop()
    needed = count * 3 * width * height + eval_count * 4 * int(torch.tensor(input_size).prod())
    available = available_bytes or os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
    if needed > _MEMORY_SHARE * available:
        return f'{needed / 2 ** 30:.1f} GiB of decoded images, over half of the {available / 2 ** 30:.1f} GiB free'
    return None


def _crop_boxes(images: torch.Tensor, scale: Sequence[float], ratio: Sequence[float]) -> torch.Tensor:
    """ One timm RandomResizedCrop box per image, (x1, y1, x2, y2) in pixels, drawn from Python's `random`."""
    boxes = []
    for _ in range(len(images)):
        top, left, height, width = RandomResizedCropAndInterpolation.get_params(images[0], scale, ratio)
        boxes.append((left, top, left + width, top + height))
    return torch.tensor(boxes, dtype=torch.float32)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """ Each image's box resized to `size` by bilinear interpolation (pixel centres at +0.5, as PIL), rounded
    to uint8 levels; exact for enlarging crops, which is what RandomResizedCrop does to images of the output
    size (PIL also smooths when it shrinks)."""
    rois = torch.cat([torch.arange(len(images), dtype=torch.float32)[:, None], boxes], dim=1)
    crops = roi_align(images.float(), rois, output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)
    return crops.round_().clamp_(0, 255)


def train_batches(split: InMemorySplit, cfg: Any, data_config: Dict[str, Any], generator: torch.Generator,
                  channels_last: bool = False) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    """ One epoch of augmented, normalized training batches in a random order (`generator`), full batches only,
    as timm's training loader drops the last partial one."""
    size = tuple(data_config['input_size'][1:])
    mean = torch.tensor(data_config['mean']).view(1, 3, 1, 1) * 255
    std = torch.tensor(data_config['std']).view(1, 3, 1, 1) * 255
    order = torch.randperm(len(split), generator=generator)
    for start in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
        index = order[start:start + cfg.batch_size]
        images = split.images[index]
        crops = resized_crops(images, _crop_boxes(images, cfg.scale, cfg.ratio), size)
        for dim, probability in ((3, cfg.hflip), (2, cfg.vflip)):
            if probability > 0:
                flip = torch.rand(len(crops), generator=generator) < probability
                crops[flip] = crops[flip].flip(dim)
        batch = (crops - mean) / std
        yield batch.contiguous(memory_format=torch.channels_last) if channels_last else batch, split.targets[index]


def eval_batches(split: InMemorySplit, batch_size: int, channels_last: bool = False
                 ) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(split), batch_size):
        images = split.images[start:start + batch_size]
        yield images.contiguous(memory_format=torch.channels_last) if channels_last else images, \
            split.targets[start:start + batch_size]


def eval_split(root: Path, split: str, class_map: Dict[str, int], data_config: Dict[str, Any]) -> InMemorySplit:
    """ The held-out split through timm's eval transform, once."""
    return InMemorySplit.load(root, split, class_map, create_transform(**data_config))
