""" Segmentation and detection on embedded data: the paper's Tables 3 and 4 in miniature, on the CPU

Scenes are scikit-learn's handwritten digits (shipped inside scikit-learn) pasted at random positions and
scales on larger black canvases, written once in standard formats: COCO-style `annotations.json` for
detection, image / mask PNG pairs for segmentation (mask value = digit + 1, 0 = background), train and
validation splits made from disjoint digits. `run_dense_quickstart` trains the MoD model and the same
torchvision head over its plain timm counterpart, then evaluates both (mAP / mAP50 with torchmetrics,
mIoU / mAcc / aAcc from the confusion matrix) and times them side by side.
"""
import itertools
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from ..models import baseline_of
from ..models.dense_prediction import faster_rcnn, fcn
from ..utils.image_folder import stratified_split
from ..utils.output import staged_output
from ..utils.tables import format_table
from ..utils.timing import time_side_by_side
from .training import train_one_epoch

__all__ = [
    'DENSE_SPLITS', 'DEFAULT_DENSE_DIR', 'TASKS', 'write_dense_data', 'check_dense_folder', 'DigitScenes',
    'DenseResult', 'segmentation_metrics', 'train_dense', 'run_dense_quickstart', 'format_dense_results',
]

DENSE_SPLITS = ('train', 'validation')
DEFAULT_DENSE_DIR = Path.home() / '.cache' / 'timm-mod' / 'digit-scenes'
TASKS = ('detection', 'segmentation')
NUM_CLASSES = 11  # background + ten digits
SCENES = {'train': 1200, 'validation': 300}
CANVAS = 64
DIGIT_SIZE = (20, 36)  # px, the side a digit's 8x8 image is scaled to
STROKE = 0.35  # a pixel brighter than this (0..1) belongs to its digit


def _render_scene(images: np.ndarray, targets: np.ndarray, pool: np.ndarray, rng: np.random.Generator):
    """ One canvas with 1-3 non-overlapping digits: image (uint8), mask, boxes (x0, y0, x1, y1) and labels."""
    from PIL import Image
    canvas = np.zeros((CANVAS, CANVAS), np.float32)
    mask = np.zeros((CANVAS, CANVAS), np.uint8)
    boxes, labels, taken = [], [], []
    for _ in range(int(rng.integers(1, 4))):
        index = int(rng.choice(pool))
        size = int(rng.integers(DIGIT_SIZE[0], DIGIT_SIZE[1] + 1))
        for _attempt in range(20):
            x, y = (int(v) for v in rng.integers(0, CANVAS - size + 1, size=2))
            if all(x + size <= a or a + s <= x or y + size <= b or b + s <= y for a, b, s in taken):
                break
        else:
            continue
        taken.append((x, y, size))
        digit = np.asarray(Image.fromarray(images[index] / 16.0).resize((size, size), Image.BILINEAR))
        canvas[y:y + size, x:x + size] = np.maximum(canvas[y:y + size, x:x + size], digit)
        stroke = digit > STROKE
        mask[y:y + size, x:x + size][stroke] = targets[index] + 1
        rows, cols = np.flatnonzero(stroke.any(1)), np.flatnonzero(stroke.any(0))
        boxes.append([x + int(cols[0]), y + int(rows[0]), x + int(cols[-1]) + 1, y + int(rows[-1]) + 1])
        labels.append(int(targets[index]) + 1)
    return (canvas.clip(0, 1) * 255).round().astype(np.uint8), mask, boxes, labels


def _complete(root: Path) -> bool:
    return all((root / split / 'annotations.json').is_file()
               and len(list((root / split / 'images').glob('*.png'))) == SCENES[split]
               and len(list((root / split / 'masks').glob('*.png'))) == SCENES[split] for split in DENSE_SPLITS)


def write_dense_data(root: Path = DEFAULT_DENSE_DIR, seed: int = 0) -> Path:
    """ Write the digit scenes once: root/{train,validation}/{images,masks}/<n>.png and annotations.json (COCO).

    Deterministic for a seed. A complete copy is reused; any other non-empty folder is refused rather
    than overwritten, and a half-written copy never appears under `root` (it is staged, then moved).
    """
    root = Path(root).expanduser()
    if root.exists() and any(root.iterdir()):
        if _complete(root):
            return root
        raise FileExistsError(f'{root} exists and is not a complete copy of the digit scenes; choose another '
                              f'--data-dir (nothing was written).')
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError("The scenes are made of scikit-learn's digits: pip install 'timm-mod[dense]'") from error
    digits = load_digits()
    rng = np.random.default_rng(seed)
    pools = dict(zip(DENSE_SPLITS, stratified_split(digits.target, 0.2, rng)))  # no digit image in both splits
    categories = [{'id': label + 1, 'name': str(label)} for label in range(10)]
    with staged_output(root) as staging:
        for split in DENSE_SPLITS:
            _write_dense_split(staging / split, split, digits, pools[split], categories, rng)
    return root


def _write_dense_split(folder: Path, split: str, digits: Any, pool: np.ndarray, categories: List[Dict[str, Any]],
                       rng: np.random.Generator) -> None:
    """ One split's scenes: images/ and masks/ PNGs and COCO annotations.json, drawn from the digits in `pool`."""
    from PIL import Image
    (folder / 'images').mkdir(parents=True)
    (folder / 'masks').mkdir(parents=True)
    coco: Dict[str, List[Dict[str, Any]]] = {'images': [], 'annotations': [], 'categories': categories}
    for image_id in range(SCENES[split]):
        image, mask, boxes, labels = _render_scene(digits.images, digits.target, pool, rng)
        file_name = f'{image_id:05d}.png'
        Image.fromarray(image, mode='L').convert('RGB').save(folder / 'images' / file_name)
        Image.fromarray(mask, mode='L').save(folder / 'masks' / file_name)
        coco['images'].append({'id': image_id, 'file_name': file_name, 'width': CANVAS, 'height': CANVAS})
        for (x0, y0, x1, y1), label in zip(boxes, labels):
            coco['annotations'].append({
                'id': len(coco['annotations']) + 1, 'image_id': image_id, 'category_id': label,
                'bbox': [x0, y0, x1 - x0, y1 - y0], 'area': (x1 - x0) * (y1 - y0), 'iscrowd': 0})
    (folder / 'annotations.json').write_text(json.dumps(coco))


def check_dense_folder(root: Path, split: str, task: str) -> Path:
    """ The split folder, or a clear error saying which file of the expected layout is missing."""
    folder = Path(root).expanduser() / split
    needed = ['images'] + (['annotations.json'] if task == 'detection' else ['masks'])
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise ValueError(
            f'{folder} is not a {task} split: {", ".join(missing)} missing. Expected {folder}/images/<n>.png with '
            + ('a COCO-style annotations.json' if task == 'detection' else 'masks/<n>.png (class index per pixel)')
            + '; `timm-mod dense-quickstart` writes such a folder.')
    return folder


class DigitScenes(Dataset):
    """ One split, in memory: (image float CHW in 0..1, target) with a detection dict or a mask as target."""

    def __init__(self, root: Path, split: str, task: str) -> None:
        from PIL import Image
        folder = check_dense_folder(root, split, task)
        self.task = task
        files = sorted((folder / 'images').glob('*.png'))
        self.images = [torch.from_numpy(np.array(Image.open(f).convert('RGB'))).permute(2, 0, 1) for f in files]
        if task == 'segmentation':
            self.targets = [torch.from_numpy(np.array(Image.open(folder / 'masks' / f.name))).long() for f in files]
            return
        coco = json.loads((folder / 'annotations.json').read_text())
        index = {image['file_name']: image['id'] for image in coco['images']}
        boxes: Dict[int, List] = {image_id: [] for image_id in index.values()}
        for annotation in coco['annotations']:
            x, y, w, h = annotation['bbox']
            boxes[annotation['image_id']].append(([x, y, x + w, y + h], annotation['category_id']))
        self.targets = []
        for f in files:
            items = boxes[index[f.name]]
            self.targets.append({
                'boxes': torch.tensor([b for b, _ in items], dtype=torch.float32).reshape(-1, 4),
                'labels': torch.tensor([label for _, label in items], dtype=torch.int64)})

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        return self.images[index].float() / 255, self.targets[index]


def _collate(task: str) -> Callable:
    if task == 'segmentation':
        return lambda batch: (torch.stack([b[0] for b in batch]), torch.stack([b[1] for b in batch]))
    return lambda batch: ([b[0] for b in batch], [b[1] for b in batch])


def segmentation_metrics(confusion: torch.Tensor) -> Dict[str, float]:
    """ mIoU, mAcc (mean class recall) and aAcc (pixel accuracy) in percent, over classes present in the labels."""
    confusion = confusion.double()
    true_positive = confusion.diag()
    labelled = confusion.sum(1)
    present = labelled > 0
    iou = true_positive / (labelled + confusion.sum(0) - true_positive).clamp(min=1)
    return {
        'mIoU': 100 * iou[present].mean().item(),
        'mAcc': 100 * (true_positive / labelled.clamp(min=1))[present].mean().item(),
        'aAcc': 100 * (true_positive.sum() / confusion.sum()).item(),
    }


@dataclass(frozen=True)
class DenseResult:
    """ One trained dense model, evaluated on the validation split."""
    backbone: str
    task: str
    metrics: Dict[str, float]
    params: int
    macs: float
    losses: Tuple[float, ...]  # mean training loss per epoch


def build_dense_model(task: str, backbone: str, **kwargs: Any) -> nn.Module:
    """ The quickstart's head over `backbone`: FCN (with aux head), or a Faster R-CNN sized to small canvases with
    few objects (a 128-wide pyramid, fewer proposals and sampled RoIs than torchvision's COCO defaults)."""
    if task == 'segmentation':
        return fcn(backbone, NUM_CLASSES, **kwargs)
    if task != 'detection':
        raise ValueError(f'Unknown task {task!r}; choose one of {TASKS}.')
    return faster_rcnn(
        backbone, NUM_CLASSES, fpn_channels=128, min_size=CANVAS, max_size=CANVAS, image_mean=[0.5] * 3,
        image_std=[0.5] * 3, rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=300,
        rpn_post_nms_top_n_test=100, box_batch_size_per_image=32, **kwargs)


def _loss(task: str, model: nn.Module, images, targets) -> torch.Tensor:
    if task == 'detection':
        return sum(model(images, targets).values())
    out = model(images)
    loss = F.cross_entropy(out['out'], targets)
    return loss + 0.5 * F.cross_entropy(out['aux'], targets) if 'aux' in out else loss


@torch.no_grad()
def evaluate_dense(task: str, model: nn.Module, loader: DataLoader) -> Dict[str, float]:
    """ mAP and mAP50 (torchmetrics, COCO definition) for detection; mIoU, mAcc, aAcc for segmentation."""
    model.eval()
    if task == 'segmentation':
        confusion = torch.zeros(NUM_CLASSES, NUM_CLASSES, dtype=torch.long)
        for images, masks in loader:
            predicted = model(images)['out'].argmax(1)
            confusion += torch.bincount(masks.flatten() * NUM_CLASSES + predicted.flatten(),
                                        minlength=NUM_CLASSES ** 2).reshape(NUM_CLASSES, NUM_CLASSES)
        return segmentation_metrics(confusion)
    try:
        from torchmetrics.detection import MeanAveragePrecision
    except ImportError as error:
        raise ImportError(
            "Detection metrics need torchmetrics and pycocotools: pip install 'timm-mod[dense]'") from error
    metric = MeanAveragePrecision(iou_type='bbox')
    for images, targets in loader:
        metric.update(model(images), targets)
    result = metric.compute()
    return {'mAP': 100 * result['map'].item(), 'mAP50': 100 * result['map_50'].item()}


def _macs(task: str, model: nn.Module) -> float:
    model.eval()
    image = torch.rand(3, CANVAS, CANVAS)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model([image] if task == 'detection' else image[None])
    return counter.get_total_flops() / 2


# Recipes that fit the CPU budget (10 minutes per model for the plain resnet18 on 2 cores): AdamW, batch 8,
# cosine decay after a short warm-up.
RECIPES = {'detection': dict(epochs=8, lr=2e-3), 'segmentation': dict(epochs=16, lr=5e-3)}


def train_dense(
        task: str,
        backbone: str,
        data_dir: Path,
        epochs: Optional[int] = None,
        batch_size: int = 8,
        lr: Optional[float] = None,
        max_steps: Optional[int] = None,
        max_validation: Optional[int] = None,
        seed: int = 0,
        progress: bool = True,
) -> Tuple[nn.Module, DenseResult]:
    """ Train a head over `backbone` from scratch on the digit scenes (AdamW, cosine with warm-up) and evaluate.

    Args:
        epochs, lr: Default to the task's entry in `RECIPES`.
        max_steps: Stop each epoch after this many steps (a reduced budget for tests).
        max_validation: Evaluate on the first scenes of the validation split only (a reduced budget).
    """
    if task not in TASKS:
        raise ValueError(f'Unknown task {task!r}; choose one of {TASKS}.')
    epochs = RECIPES[task]['epochs'] if epochs is None else epochs
    lr = lr or RECIPES[task]['lr']
    torch.manual_seed(seed)
    train_set, validation_set = (DigitScenes(data_dir, split, task) for split in DENSE_SPLITS)
    if max_validation is not None:
        validation_set = torch.utils.data.Subset(validation_set, range(min(max_validation, len(validation_set))))
    model = build_dense_model(task, backbone)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, collate_fn=_collate(task), drop_last=True)
    validation = DataLoader(validation_set, batch_size=32, collate_fn=_collate(task))
    optimizer = create_optimizer_v2(model, 'adamw', lr=lr, weight_decay=0.05)
    steps_per_epoch = min(len(loader), max_steps or len(loader))
    scheduler, _ = create_scheduler_v2(
        optimizer, 'cosine', num_epochs=epochs * steps_per_epoch, warmup_epochs=min(100, steps_per_epoch),
        warmup_lr=lr / 100, min_lr=lr / 100)
    losses, steps = [], itertools.count(1)
    for epoch in range(epochs):
        model.train()
        start = time.time()
        loss, _ = train_one_epoch(loader, partial(_loss, task, model), optimizer,
                                  after_step=lambda: scheduler.step_update(next(steps)), max_steps=steps_per_epoch)
        losses.append(loss)
        if progress:
            print(f'{task} {backbone}  epoch {epoch + 1}/{epochs}  loss {losses[-1]:.3f}  '
                  f'({time.time() - start:.1f} s)', file=sys.stderr, flush=True)
    metrics = evaluate_dense(task, model, validation)
    params = sum(p.numel() for p in model.parameters())
    return model, DenseResult(backbone, task, metrics, params, _macs(task, model), tuple(losses))


def run_dense_quickstart(
        task: str,
        backbone: str = 'resnet18_mod',
        baseline: Optional[str] = None,
        data_dir: Path = DEFAULT_DENSE_DIR,
        epochs: Optional[int] = None,
        max_steps: Optional[int] = None,
        max_validation: Optional[int] = None,
        progress: bool = True,
) -> List[Dict[str, Any]]:
    """ Train and evaluate the MoD backbone and its plain counterpart under the same head, then time both
    (batch 1 inference, side by side)."""
    if task not in TASKS:
        raise ValueError(f'Unknown task {task!r}; choose one of {TASKS}.')
    if epochs is not None and epochs < 1:
        raise ValueError(f'--epochs must be at least 1, got {epochs}; leave it out for the task\'s epochs.')
    data_dir = Path(data_dir).expanduser()
    if not (data_dir.exists() and any(data_dir.iterdir())):  # an existing folder is used as it is, checked on load
        write_dense_data(data_dir)
    names = [backbone, baseline or baseline_of(backbone)]
    trained = [train_dense(task, name, data_dir, epochs, max_steps=max_steps, max_validation=max_validation,
                           progress=progress) for name in names]
    image = [torch.rand(3, CANVAS, CANVAS)] if task == 'detection' else torch.rand(1, 3, CANVAS, CANVAS)

    def step(model: nn.Module) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                model(image)
        return run

    times = time_side_by_side({r.backbone: step(m.eval()) for m, r in trained}, threads=torch.get_num_threads(),
                              rounds=3, min_run_time=0.1)
    plain_ms = times[names[1]] * 1e3
    return [dict(result.metrics, backbone=result.backbone, head='Faster R-CNN' if task == 'detection' else 'FCN',
                 params=result.params, macs=result.macs, cpu_ms=times[result.backbone] * 1e3,
                 speedup=plain_ms / (times[result.backbone] * 1e3), losses=result.losses)
            for _, result in trained]


METRIC_COLUMNS = {'detection': ('mAP', 'mAP50'), 'segmentation': ('mIoU', 'mAcc', 'aAcc')}


def format_dense_results(task: str, rows: Sequence[Dict[str, Any]]) -> str:
    """ The table in the columns of the paper's Table 3 / 4, then the MoD model's headline metric."""
    metrics = METRIC_COLUMNS[task]
    header = ('method', 'backbone', *metrics, 'GMACs', 'params (M)', 'CPU ms', 'speed-up')
    table = [(row['head'], row['backbone'], *(f'{row[m]:.2f}' for m in metrics), f'{row["macs"] / 1e9:.2f}',
              f'{row["params"] / 1e6:.2f}', f'{row["cpu_ms"]:.1f}', f'{row["speedup"]:.2f}x') for row in rows]
    headline = 'mAP50' if task == 'detection' else 'mIoU'
    return format_table(header, table) + f'\n{headline}: {rows[0][headline]:.2f}'
