"""ONNX export of a model's eval-mode forward (images -> retrieval features).

pan_ops.weighted_pool is exported through its pure-PyTorch reference (an einsum, an
absolute-value sum and a division), which every ONNX runtime runs with standard ops;
the compiled kernels are a training/inference speed-up with the same result, not a
different function, so nothing is lost in the file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import nn

import pan_ops

from . import eval_mode

INPUT_NAME = "images"
OUTPUT_NAME = "features"


def export_onnx(
    model: nn.Module,
    path: Union[str, os.PathLike],
    input_size: tuple[int, int] = (256, 128),
    opset_version: int = 18,
) -> Path:
    """Write `model`'s eval forward to `path` as a self-contained ONNX file with a dynamic
    batch dimension: input "images" [B, 3, H, W] float32 -> output "features" [B, D]."""
    path = Path(path)
    parameter = next(model.parameters())
    example = torch.randn(2, 3, *input_size, device=parameter.device)  # batch 2: 0 and 1 get specialised
    batch = torch.export.Dim("batch", min=1)
    with eval_mode(model), pan_ops.force_backend("reference"), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},),
            opset_version=opset_version,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    return path


def onnx_agreement(model: nn.Module, path: Union[str, os.PathLike], images: torch.Tensor) -> float:
    """Smallest per-image cosine similarity between the model's eval features and those
    onnxruntime computes from the file at `path` for the same `images`."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (onnx_features,) = session.run([OUTPUT_NAME], {INPUT_NAME: images.detach().cpu().float().numpy()})
    with eval_mode(model), torch.no_grad():
        torch_features = model(images.to(next(model.parameters()).device)).float().cpu()
    cosine = torch.nn.functional.cosine_similarity(torch_features, torch.from_numpy(np.asarray(onnx_features)), dim=1)
    return cosine.min().item()
