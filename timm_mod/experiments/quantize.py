""" What int8 costs a trained model: `timm-mod quantize` exports it, quantizes the export (`quantize_int8`) and scores
PyTorch, the float32 export and the int8 export in onnxruntime and OpenVINO on a held-out split: top-1, agreement
with PyTorch's class and with its routing."""
import json
import os
import sys
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn as nn

from ..layers import routing_hooks, selector_blocks
from ..utils.image_folder import check_class_maps, eval_image_folder
from ..utils.output import check_replaceable_folder, fresh_folder, staged_output
from .runtimes import (
    RUNTIMES, export_onnx, quantize_int8, require_runtime, runtime_outputs, with_routing_outputs)

__all__ = ['AccuracyRow', 'ACCURACY_COLUMNS', 'accuracy_table_rows', 'check_accuracy_options', 'int8_accuracy']


@dataclass(frozen=True)
class AccuracyRow:
    """ Top-1 of one form of a trained model on a held-out split, in %, and how often it agrees with PyTorch."""
    precision: str  # 'float32' or 'int8'
    runtime: str  # 'PyTorch', 'onnxruntime' or 'openvino'
    top1: float
    agreement: float  # images whose predicted class is PyTorch's, in %
    max_abs_diff: float  # largest |logit| difference from PyTorch
    images: int
    same_routing: Optional[float]  # (image, MoD block) pairs routed to PyTorch's channels, in %; None: no selectors

ACCURACY_COLUMNS = ('precision', 'runtime', 'top-1 (%)', 'same class as PyTorch (%)', 'same routing as PyTorch (%)',
                    'max abs logit diff', 'images')


def accuracy_table_rows(rows: List[AccuracyRow]) -> List[Tuple[str, ...]]:
    return [(r.precision, r.runtime, f'{r.top1:.2f}', f'{r.agreement:.2f}',
             '-' if r.same_routing is None else f'{r.same_routing:.2f}', f'{r.max_abs_diff:.3g}', str(r.images))
            for r in rows]


def _split_loader(data_dir: Path, split: str, data_config: Dict, batch_size: int, class_map: Dict[str, int],
                  limit: Optional[int] = None) -> 'torch.utils.data.DataLoader':
    """ An ImageFolder split through timm's eval transform, labelled with the training split's `class_map`;
    `limit` takes that many images spread over the classes (a seeded shuffle), for calibration."""
    dataset = eval_image_folder(data_dir, split, data_config, class_map)
    if limit is not None:
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(0))[:limit]
        dataset = torch.utils.data.Subset(dataset, order.tolist())
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size)


def check_accuracy_options(calibration_images: int, batch_size: int, threads: int) -> None:
    """ A clear error for counts `int8_accuracy` cannot use, before anything is loaded or exported."""
    for name, value, least in (('--calibration-images', calibration_images, 1), ('--batch-size', batch_size, 1),
                               ('--threads', threads, 0)):
        if value < least:
            raise ValueError(f'{name} must be at least {least}, got {value}.')


def int8_accuracy(
        model: nn.Module,
        data_dir: Path,
        data_config: Dict,
        output_dir: Path,
        runtimes: Tuple[str, ...] = RUNTIMES,
        split: str = 'validation',
        calibration_split: str = 'train',
        calibration_images: int = 256,
        batch_size: int = 32,
        threads: int = 0,
        train_split: str = 'train',
        overwrite: bool = False,
        progress: bool = True,
) -> List[AccuracyRow]:
    """ What int8 costs a trained model: its ONNX export (any batch size) and that export quantized with
    `quantize_int8`, calibrated on `calibration_images` images of the training split, scored beside PyTorch on
    the held-out split in each runtime. Images are labelled with the class map of `train_split`, the split the
    model learned. `output_dir` receives model.onnx, model_int8.onnx and accuracy.json, written beside it and
    swapped in whole: an existing non-empty `output_dir` is replaced only with `overwrite`, and never when it
    holds the data.
    """
    check_accuracy_options(calibration_images, batch_size, threads)
    check_replaceable_folder(output_dir, overwrite, keep=(data_dir,))
    for runtime in ('onnxruntime', *runtimes):  # onnxruntime quantizes, whichever runtimes score
        require_runtime(runtime)
    class_map = check_class_maps(data_dir, train_split, split, getattr(model, 'num_classes', None))
    calibration = _split_loader(data_dir, calibration_split, data_config, batch_size, class_map,
                                limit=calibration_images)
    held_out = _split_loader(data_dir, split, data_config, batch_size, class_map)
    model = model.eval()
    with staged_output(Path(output_dir)) as staged:
        staged.mkdir()
        fp32_path = export_onnx(model, staged / 'model.onnx', (batch_size, *data_config['input_size']),
                                dynamic_batch=True)
        if progress:
            print(f'exported {fp32_path.name}; calibrating int8 ranges on {len(calibration.dataset)} '
                  f'{calibration_split} images', file=sys.stderr, flush=True)
        int8_path = quantize_int8(fp32_path, staged / 'model_int8.onnx',
                                  (images.numpy() for images, _ in calibration))
        rows = _score(model, held_out, {'float32': fp32_path, 'int8': int8_path}, runtimes,
                      threads or (os.cpu_count() or 1), staged / '.routing', progress)
        (staged / 'accuracy.json').write_text(json.dumps([asdict(row) for row in rows], indent=2) + '\n')
    return rows


def _score(model: nn.Module, loader: 'torch.utils.data.DataLoader', exports: Dict[str, Path],
           runtimes: Tuple[str, ...], threads: int, routed_dir: Path, progress: bool) -> List[AccuracyRow]:
    """ Top-1, agreement with PyTorch's class and routing, and logit distance of PyTorch and of each export in
    each runtime, over `loader`. The routings are read from copies of the exports in `routed_dir` (inside the
    output's staging folder, so a killed run's copies go with it) that also output each TopK's channels; the
    folder is removed at the end."""
    blocks = selector_blocks(model)
    pytorch_routing: Dict[str, torch.Tensor] = {}  # the latest forward pass's channels, by block
    with fresh_folder(routed_dir), routing_hooks(blocks, pytorch_routing.__setitem__):
        sessions = {}
        for precision, path in exports.items():
            routed_path = Path(routed_dir) / f'{precision}.onnx'
            top_ks = with_routing_outputs(path, routed_path)
            if top_ks != len(blocks):
                raise RuntimeError(f'{path.name} has {top_ks} TopK nodes for the model\'s {len(blocks)} selectors: '
                                   f'an export that does not route as the model, so routings cannot be compared.')
            for runtime in runtimes:
                sessions[precision, runtime] = runtime_outputs(routed_path, runtime, threads)
        correct: Dict[Tuple[str, str], int] = defaultdict(int)
        agree: Dict[Tuple[str, str], int] = defaultdict(int)
        same_routing: Dict[Tuple[str, str], int] = defaultdict(int)
        max_diff: Dict[Tuple[str, str], float] = defaultdict(float)
        seen = 0
        for batch_index, (images, targets) in enumerate(loader, 1):
            with torch.no_grad():
                expected = model(images).numpy()
            routed = [np.sort(pytorch_routing[name].numpy(), 1) for name in blocks]
            outputs = {('float32', 'PyTorch'): [expected, *routed]}
            outputs.update({key: run(images.numpy()) for key, run in sessions.items()})
            for key, (logits, *routing) in outputs.items():
                predicted = np.asarray(logits).argmax(1)
                correct[key] += int((predicted == targets.numpy()).sum())
                agree[key] += int((predicted == expected.argmax(1)).sum())
                same_routing[key] += sum(int((np.sort(mine, 1) == theirs).all(1).sum())
                                         for mine, theirs in zip(routing, routed))
                max_diff[key] = max(max_diff[key], float(np.abs(logits - expected).max()))
            seen += len(targets)
            if progress and (batch_index % 20 == 0 or seen == len(loader.dataset)):
                print(f'scored {seen}/{len(loader.dataset)} images', file=sys.stderr, flush=True)
    return [AccuracyRow(*key, 100 * correct[key] / seen, 100 * agree[key] / seen, max_diff[key], seen,
                        100 * same_routing[key] / (seen * len(blocks)) if blocks else None)
            for key in correct]
