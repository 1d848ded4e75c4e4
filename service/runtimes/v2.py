"""Open Inference Protocol V2 tensors <-> one runtime's raw inputs and outputs: the checks every runtime
shares (input names, shapes, datatypes, the batch dimension's bounds)."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from service.errors import ServeError


def check_names(tensors: dict[str, np.ndarray], expected: list[str], model: str, required: str | None = None) -> None:
    unknown = set(tensors) - set(expected)
    if unknown or (required or expected[0]) not in tensors:
        raise ServeError(400, f"model {model} takes the input(s) {expected}; got {sorted(tensors)}", "invalid_input")


def check_batch(count: int, max_inputs: int) -> None:
    if count == 0:
        raise ServeError(422, "the batch dimension must not be empty", "validation_error")
    if count > max_inputs:
        raise ServeError(413, f"{count} inputs exceed the limit of {max_inputs} per request", "too_many_inputs")


def float_rows(tensor: np.ndarray, name: str, item_shape: list[int], max_inputs: int) -> list[np.ndarray]:
    """FP32 (or UINT8 0-255) [N, *item_shape] -> N float32 arrays."""
    if tensor.ndim != len(item_shape) + 1 or list(tensor.shape[1:]) != item_shape:
        raise ServeError(400, f"input {name} must have shape [-1, {', '.join(map(str, item_shape))}], "
                         f"got {list(tensor.shape)}", "invalid_input")
    check_batch(tensor.shape[0], max_inputs)
    if tensor.dtype == np.uint8:
        return list(tensor.astype(np.float32) / 255.0)
    if tensor.dtype.kind != "f":
        raise ServeError(400, f"input {name} must be FP32 (or UINT8 0-255), got {tensor.dtype}", "invalid_input")
    return list(tensor.astype(np.float32, copy=False))


def bytes_items(tensor: np.ndarray, name: str, max_inputs: int) -> list[Any]:
    """BYTES [N] (or [N, 1]) -> N items."""
    if tensor.dtype != np.object_ or tensor.ndim not in (1, 2) or (tensor.ndim == 2 and tensor.shape[1] != 1):
        raise ServeError(400, f"input {name} must be BYTES of shape [-1] (or [-1, 1]), got {list(tensor.shape)}",
                         "invalid_input")
    items = list(tensor.reshape(-1))
    check_batch(len(items), max_inputs)
    return items


def scalars(tensors: dict[str, np.ndarray]) -> dict[str, int]:
    """Scalar INT64 inputs (shape [1]) as integers."""
    values = {}
    for name, tensor in tensors.items():
        if tensor.size != 1 or tensor.dtype.kind not in "iu":
            raise ServeError(400, f"input {name} must be one integer (INT64, shape [1]), got "
                             f"{tensor.dtype} of shape {list(tensor.shape)}", "invalid_input")
        values[name] = int(tensor.reshape(-1)[0])
    return values


def validate(schema: type[BaseModel], values: dict[str, Any], where: str = "parameters") -> Any:
    try:
        return schema.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in first["loc"])
        raise ServeError(422, f"{where}.{path}: {first['msg']}", "validation_error") from None


def labels_tensor(probabilities: np.ndarray, labels: list[str]) -> np.ndarray:
    return np.array([labels[i].encode() for i in probabilities.argmax(axis=1)], dtype=np.object_)
