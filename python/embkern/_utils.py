"""Argument plumbing shared by the family modules: numpy in -> numpy out, zero copy."""
from __future__ import annotations

import warnings
from typing import Any, Union

import numpy as np
import torch

ArrayLike = Union[torch.Tensor, np.ndarray]


def as_tensor(x: Any, name: str, device: torch.device | None = None) -> torch.Tensor:
    """A torch view of `x` (a tensor is returned as is; a numpy array is wrapped without a copy)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        with warnings.catch_warnings():  # read-only arrays: we never write to inputs
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(x))
        return t if device is None else t.to(device)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")


def device_of(x: Any) -> torch.device | None:
    return x.device if isinstance(x, torch.Tensor) else None


def to_output(t: torch.Tensor, numpy_out: bool) -> ArrayLike:
    return t.numpy() if numpy_out else t


def as_2d(t: torch.Tensor, name: str) -> tuple[torch.Tensor, bool]:
    """Accepts one row (1-D) or a batch (2-D); returns the batch and whether the input was one row."""
    if t.dim() == 1:
        return t.unsqueeze(0), True
    return t, False


def topk_output(vals: torch.Tensor, ids: torch.Tensor, one_row: bool, numpy_out: bool) -> tuple[ArrayLike, ArrayLike]:
    """A search's (values, indices) in the caller's form: one query row back to 1-D, numpy back to numpy."""
    if one_row:
        vals, ids = vals[0], ids[0]
    return to_output(vals, numpy_out), to_output(ids, numpy_out)
