"""Run a yolo-accel command with bf16 convolutions computed the way bf16 hardware computes them, on any CPU.

    python benchmarks/bf16_emulation.py train --mixed-precision bf16 --epochs 50 ...

On a CPU without bf16 instructions (AVX512-BF16 or AMX) PyTorch runs a bf16 convolution through a slow generic
path, about 8x fp32's time for yolov5n at 128 px, which makes multi-seed accuracy checks of bf16 training take a
day. CPUs with bf16 instructions (and GPUs) multiply bf16 operands exactly and sum the products in fp32, then round
the result to bf16. This script intercepts every convolution and convolution backward that autocast sends with bf16
tensors, runs it in fp32 on the same bf16-valued operands, and rounds the results back to bf16: the same numbers
as that hardware up to the order of the fp32 sums (about 1.5x fp32's time here). Everything else (BatchNorm,
activations, the loss) runs as PyTorch runs it in bf16 on any CPU. Used by `benchmarks/accuracy.py
--emulate-bf16`.
"""

from __future__ import annotations

import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

CONVOLUTIONS = {torch.ops.aten.convolution.default, torch.ops.aten.convolution_backward.default}


def _to_fp32(value):
    return value.float() if isinstance(value, torch.Tensor) and value.dtype == torch.bfloat16 else value


def _to_bf16(value):
    return value.to(torch.bfloat16) if isinstance(value, torch.Tensor) and value.dtype == torch.float32 else value


class Bf16ConvolutionsInFp32(TorchDispatchMode):
    """bf16 convolutions (forward and backward) as fp32 sums of bf16 products, rounded to bf16."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in CONVOLUTIONS and any(isinstance(a, torch.Tensor) and a.dtype == torch.bfloat16 for a in args):
            return tree_map(_to_bf16, func(*tree_map(_to_fp32, args), **tree_map(_to_fp32, kwargs)))
        return func(*args, **kwargs)


def main() -> None:
    from yolo_accel.cli import main as cli

    sys.argv[0] = "yolo-accel"
    with Bf16ConvolutionsInFp32():  # the training process only; loader workers do no convolutions
        cli()


if __name__ == "__main__":
    main()
