"""Nothing non-finite in, nothing non-finite out: numeric input checks, output checks, strict JSON.

Three rules every pipeline inherits (``pipelines/CONTRACT.md``, "Non-finite values"):

1. **Inputs are checked in the model's dtype, after scaling.** ``1e308`` is a finite
   float64 but ``inf`` in float32, so a check on the parsed (float64) numbers is not
   enough: :func:`to_model_dtype` converts to the dtype the model computes in and raises
   a :class:`UserError` naming the source (file or literal input), the position (column
   and data row / line, or the value's index in a literal input), the offending value
   and the fix. Call it once on the raw values and once more on the scaled values (a
   column whose scaled values are not finite is an error too).
2. **Outputs are checked before they are written or returned** (:func:`check_finite_output`).
   The decision for a non-finite output on input that passed rule 1: if the input holds
   a value of magnitude above :data:`ORDINARY_INPUT_MAX` (as the model sees it, i.e.
   after scaling) the value overflowed inside the model, which is the *user's* input
   being out of range: a :class:`UserError` naming the input and its largest value. On
   ordinary inputs a non-finite output is a bug in the model: :class:`NonFiniteOutputError`
   (an internal failure, exit 1 with a traceback, "please report").
3. **JSON is strict** (:func:`dumps_strict`, used by ``print_json`` and every JSON file the
   shell writes): ``allow_nan=False``; a NaN / infinity reaching it is a bug and raises
   :class:`NonFiniteValueError` naming the key path, never prints ``NaN`` / ``Infinity``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .errors import UserError

__all__ = [
    "FLOAT32_MAX",
    "ORDINARY_INPUT_MAX",
    "NonFiniteOutputError",
    "NonFiniteValueError",
    "cell_locator",
    "to_model_dtype",
    "check_finite_output",
    "find_non_finite",
    "check_finite_result",
    "dumps_strict",
]

FLOAT32_MAX = float(np.finfo(np.float32).max)
"""The largest finite float32 (about 3.4e38); larger magnitudes overflow to infinity."""

ORDINARY_INPUT_MAX = 1e6
"""Inputs (as the model sees them, after scaling) above this magnitude count as extreme:
a non-finite output on such an input is the input's fault (a UserError), below it a bug."""

Locator = Callable[[tuple[int, ...]], str]


class NonFiniteOutputError(RuntimeError):
    """A model produced NaN / infinity on ordinary, finite input: a bug (exit 1), not a user error."""


class NonFiniteValueError(ValueError):
    """A NaN / infinity reached a result or a JSON writer: a bug caught before it is printed."""


def cell_locator(columns: Sequence[str] | None = None, *, row_offset: int = 0, header_lines: int | None = 1,
                 row_label: str = "data row") -> Locator:
    """Describe an index of a (rows,) or (rows, columns) array as text for error messages.

    ``row_offset`` is the file's data row of array row 0 (e.g. ``len(series) - seq_len``
    for a trailing input window); ``header_lines`` the lines before data row 1 (``None``:
    do not give a line number). 1-D arrays name ``value K`` (1-based), so a literal input
    ``"0.1,0.2,1e308"`` reports ``value 3``.
    """

    def locate(idx: tuple[int, ...]) -> str:
        if len(idx) == 1 and columns is None:
            return f"value {idx[0] + 1}"
        row = int(idx[0]) + row_offset
        where = f"{row_label} {row + 1}" + (f" (line {row + 1 + header_lines})" if header_lines is not None else "")
        if len(idx) >= 2:
            col = columns[idx[-1]] if columns is not None and idx[-1] < len(columns) else f"#{idx[-1] + 1}"
            return f"column {col!r}, {where}"
        return where

    return locate


def _as_numpy64(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def to_model_dtype(
    values: Any,
    *,
    source: str,
    dtype: torch.dtype = torch.float32,
    raw: Any = None,
    locate: Locator | None = None,
    stage: str = "",
    fix: str = "",
) -> torch.Tensor:
    """``values`` converted to ``dtype``, or a :class:`UserError` if any element is not finite there.

    ``source`` names the input (a file path, or ``"input '0.1,0.2,1e308'"``); ``raw`` are the
    user's original values of the same shape (shown in the message when ``values`` are
    scaled); ``stage`` says what was done (e.g. ``"after scaling with the checkpoint's
    scaler"``); ``locate`` turns an index into text (default :func:`cell_locator`).
    """
    arr = _as_numpy64(values)
    out = torch.from_numpy(arr).to(dtype)
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        idx = tuple(int(i) for i in np.argwhere(bad.numpy())[0])
        shown = _as_numpy64(raw)[idx] if raw is not None else arr[idx]
        where = (locate or cell_locator())(idx)
        if not math.isfinite(float(shown)):
            what = f"is {_fmt(float(shown))}, not a finite number"
        elif stage:
            what = f"is {_fmt(float(shown))}, which is not finite in {_dtype_name(dtype)} {stage}"
        else:
            what = (f"is {_fmt(float(shown))}, which overflows {_dtype_name(dtype)} (the model computes "
                    f"in {_dtype_name(dtype)}: |x| must be below {_fmt(float(torch.finfo(dtype).max))})")
        raise UserError(f"{source}: {where} {what}; {fix or 'replace or rescale the value'}")
    return out


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")


def check_finite_output(
    output: Any,
    *,
    source: str | Sequence[str],
    model_input: Any = None,
    locate: Locator | None = None,
    raw_input: Any = None,
    what: str = "output",
    fix: str = "",
) -> Any:
    """Return ``output`` unchanged if every element is finite; otherwise raise (rule 2 above).

    ``output`` is a tensor / array (or a tuple of them, ``None`` entries skipped). With a
    list of ``source`` names, dim 0 of ``output`` and ``model_input`` is the batch and
    the first non-finite row picks the input named. ``model_input`` is what the model
    was fed (after scaling); ``raw_input`` the user's values at the same positions.
    """
    parts = output if isinstance(output, (tuple, list)) else (output,)
    for part in parts:
        if part is None:
            continue
        arr = _as_numpy64(part)
        bad = ~np.isfinite(arr)
        if not bad.any():
            continue
        row = int(np.argwhere(bad)[0][0]) if arr.ndim else 0
        batched = not isinstance(source, str)
        name = source[row] if batched else source
        if model_input is not None:
            x = _as_numpy64(model_input)
            raw = _as_numpy64(raw_input) if raw_input is not None else None
            if batched:
                x, raw = x[row], (raw[row] if raw is not None else None)
            if x.size and np.isfinite(x).all():
                idx = tuple(int(i) for i in np.unravel_index(int(np.argmax(np.abs(x))), x.shape))
                peak = float(np.abs(x)[idx])
                if peak > ORDINARY_INPUT_MAX:
                    shown = float(raw[idx]) if raw is not None else float(x[idx])
                    where = (locate or cell_locator())(idx)
                    raise UserError(
                        f"{name}: the model's {what} is not finite because {where} is {_fmt(shown)}, "
                        f"far outside the range the model works in (|x| = {_fmt(peak)} as the model sees it, "
                        f"over {_fmt(ORDINARY_INPUT_MAX)}); {fix or 'fix or rescale that value'}"
                    )
        raise NonFiniteOutputError(
            f"the model produced a non-finite {what} on ordinary, finite input {name}; this is a bug, please report it"
        )
    return output


def find_non_finite(obj: Any, path: str = "$") -> str | None:
    """The key path (``$.metrics.mse``, ``$[2].probs[0]``) of the first NaN / infinity in ``obj``, or None.

    Looks through dicts, lists, tuples, floats, numpy scalars / arrays and tensors.
    """
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return None
    if isinstance(obj, float):
        return None if math.isfinite(obj) else path
    if isinstance(obj, dict):
        for k, v in obj.items():
            p = find_non_finite(v, f"{path}.{k}")
            if p:
                return p
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            p = find_non_finite(v, f"{path}[{i}]")
            if p:
                return p
        return None
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        try:
            arr = _as_numpy64(obj)
        except (TypeError, ValueError):
            return None
        bad = np.argwhere(~np.isfinite(arr))
        if len(bad):
            return path + "".join(f"[{int(i)}]" for i in bad[0])
        return None
    return None


def check_finite_result(obj: Any, *, what: str = "result") -> Any:
    """Return ``obj`` if it holds no NaN / infinity; else :class:`NonFiniteValueError` naming the key path.

    Used on metrics before they are printed (``evaluate``, ``backtest``) and on anything
    about to be written as JSON. Reaching it with a non-finite value is a bug: inputs
    and model outputs are checked before (rules 1 and 2).
    """
    p = find_non_finite(obj)
    if p is not None:
        raise NonFiniteValueError(
            f"{what}: the value at {p} is not finite (NaN or infinity); this is a bug, please report it"
        )
    return obj


def dumps_strict(obj: Any, *, default: Callable[[Any], Any] | None = None, what: str = "JSON output",
                 **kwargs: Any) -> str:
    """``json.dumps(obj, allow_nan=False)``; a NaN / infinity raises :class:`NonFiniteValueError` (with its path)."""
    try:
        return json.dumps(obj, allow_nan=False, default=default, **kwargs)
    except ValueError as e:
        if "Out of range float" not in str(e):
            raise
        conv = obj
        if default is not None:  # find the path through the converted form (tensors -> lists)
            conv = json.loads(json.dumps(obj, default=default))
        p = find_non_finite(conv) or "?"
        raise NonFiniteValueError(
            f"{what}: the value at {p} is not finite (NaN or infinity) and JSON cannot hold it; "
            "this is a bug, please report it"
        ) from None
