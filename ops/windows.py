"""Window geometry shared by convolution and pooling, and NumPy sliding windows.

A window sweep over d spatial axes has a kernel, stride, dilation and explicit
begin/end pads; `make_window` validates the attributes and resolves the
padding forms ("same", per-axis, begins+ends) into those pads, so every other
stage sees static numbers. `windows` / `unwindow` are the NumPy references'
building blocks: gather every window, and add windows back (the transpose).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from graphc.errors import GraphError
from graphc.shapes import Dim, conv_out, fmt_shape, is_static

Fail = Callable[..., GraphError]


@dataclass(frozen=True)
class Window:
    """A resolved window sweep over d spatial axes: explicit pads, never "same"."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    begin: tuple[int, ...]  # padding before each spatial axis
    end: tuple[int, ...]  # padding after
    ceil: bool = False

    @property
    def eff(self) -> tuple[int, ...]:
        """Extent of each dilated kernel."""
        return tuple(d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilation))

    @property
    def onnx_pads(self) -> list[int]:
        return list(self.begin) + list(self.end)

    def out_dims(self, spatial: Sequence[Dim]) -> tuple[Dim, ...]:
        out = []
        for i, size in enumerate(spatial):
            k, s, d = self.kernel[i], self.stride[i], self.dilation[i]
            b, e = self.begin[i], self.end[i]
            if not self.ceil or not isinstance(size, int):
                out.append(conv_out(size, k, s, b + e, d))
                continue
            n = size + b + e - self.eff[i]
            o = -(-n // s) + 1
            if (o - 1) * s >= size + b:  # a last window starting in the end padding is dropped
                o -= 1
            out.append(o)
        return tuple(out)

    def tiles(self, spatial: Sequence[Dim]) -> bool:
        """Every input element in exactly one window: stride = kernel, no padding or
        dilation, each (fixed) size a multiple of the kernel."""
        return (
            self.stride == self.kernel
            and all(d == 1 for d in self.dilation)
            and not any(self.begin)
            and not any(self.end)
            and all(isinstance(n, int) and n % k == 0 for n, k in zip(spatial, self.kernel))
        )

    def extra_end(self, spatial: Sequence[int], out: Sequence[int]) -> tuple[int, ...]:
        """How far the last window reaches past the end padding (ceil mode only)."""
        return tuple(
            max(0, (o - 1) * s + f - (n + b + e))
            for n, o, s, f, b, e in zip(spatial, out, self.stride, self.eff, self.begin, self.end)
        )


def tuple_of(fail: Fail, name: str, value, d: int, *, low: int = 1) -> tuple[int, ...]:
    """An int-or-tuple attribute as d ints, each at least `low`."""
    vals = (value,) * d if isinstance(value, int) else tuple(value)
    if len(vals) != d or not all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
        raise fail(f"{name} must be an int or a tuple of {d} ints, got {value!r}")
    if any(v < low for v in vals):
        raise fail(f"{name} must be at least {low}, got {value!r}")
    return vals


def make_window(
    fail: Fail, spatial: Sequence[Dim], kernel, stride, padding, dilation, ceil: bool = False
) -> Window:
    """Validate window attributes against the input's spatial dims and resolve the pads.

    padding: an int (every side), d ints (both sides of each axis), 2d ints
    (all begins, then all ends, as ONNX orders them), "valid" (0) or "same"
    (output = ceil(input / stride); an odd total puts the extra pad at the
    end, like TensorFlow and ONNX SAME_UPPER).
    """
    d = len(spatial)
    k = tuple_of(fail, "kernel", kernel, d)
    s = tuple_of(fail, "stride", stride, d)
    dil = tuple_of(fail, "dilation", dilation, d)
    eff = tuple(di * (ki - 1) + 1 for ki, di in zip(k, dil))
    if padding == "valid":
        begin = end = (0,) * d
    elif padding == "same":
        if ceil:
            raise fail(
                "padding='same' already rounds up; ceil_mode adds nothing to it",
                hint="drop ceil_mode or give explicit padding",
            )
        begin_l, end_l = [], []
        for i, n in enumerate(spatial):
            if isinstance(n, int):
                total = max((-(-n // s[i]) - 1) * s[i] + eff[i] - n, 0)
            elif s[i] == 1:
                total = eff[i] - 1
            else:
                raise fail(
                    f"padding='same' with stride {s[i]} needs a fixed size on spatial "
                    f"axis {i}, got '{n}'",
                    hint="give explicit padding instead",
                )
            begin_l.append(total // 2)
            end_l.append(total - total // 2)
        begin, end = tuple(begin_l), tuple(end_l)
    elif isinstance(padding, str):
        raise fail(f"padding must be an int, a tuple, 'same' or 'valid', got {padding!r}")
    else:
        p = (padding,) * d if isinstance(padding, int) else tuple(padding)
        if len(p) == d:
            p = p + p
        if len(p) != 2 * d or not all(isinstance(v, int) for v in p):
            raise fail(
                f"padding needs 1, {d} or {2 * d} ints for {d} spatial axes, got {padding!r}",
                hint="2d ints are all begins, then all ends",
            )
        if any(v < 0 for v in p):
            raise fail(f"padding must not be negative, got {padding!r}")
        begin, end = p[:d], p[d:]
    if ceil and not is_static(spatial):
        raise fail(f"ceil_mode needs fixed spatial sizes, got {fmt_shape(tuple(spatial))}")
    win = Window(k, s, dil, tuple(begin), tuple(end), ceil)
    for i, n in enumerate(spatial):
        if isinstance(n, int) and n + begin[i] + end[i] < eff[i]:
            raise fail(
                f"spatial axis {i} has size {n} (padded {n + begin[i] + end[i]}), smaller "
                f"than the kernel's extent {eff[i]}",
                hint="use a smaller kernel or dilation, or more padding",
            )
    return win


def geometry_error(message: str, hint: str | None = None) -> GraphError:
    """For re-resolving a window outside inference (already validated there)."""
    return GraphError(message, hint=hint)


# --------------------------------------------------- NumPy sliding windows


def _pad_spatial(x: np.ndarray, win: Window, value: float, extra: Sequence[int]) -> np.ndarray:
    width = [(0, 0), (0, 0)] + [(b, e + x_) for b, e, x_ in zip(win.begin, win.end, extra)]
    return np.pad(x, width, constant_values=value)


def windows(x: np.ndarray, win: Window, pad_value: float = 0.0) -> np.ndarray:
    """Every window of x: [N, C, *out, *kernel] (padding filled with pad_value)."""
    d = x.ndim - 2
    out = win.out_dims(x.shape[2:])
    xp = _pad_spatial(x, win, pad_value, win.extra_end(x.shape[2:], out))
    view = np.lib.stride_tricks.sliding_window_view(xp, win.eff, axis=tuple(range(2, 2 + d)))
    idx = (
        (slice(None), slice(None))
        + tuple(slice(0, s * (o - 1) + 1, s) for o, s in zip(out, win.stride))
        + tuple(slice(None, None, dil) for dil in win.dilation)
    )
    return view[idx]


def unwindow(cols: np.ndarray, win: Window, spatial: Sequence[int]) -> np.ndarray:
    """The transpose of `windows`: add every window's entries back where they came from."""
    d = len(spatial)
    n, c = cols.shape[:2]
    out = cols.shape[2 : 2 + d]
    extra = win.extra_end(spatial, out)
    padded = [sz + b + e + x_ for sz, b, e, x_ in zip(spatial, win.begin, win.end, extra)]
    acc = np.zeros((n, c, *padded), dtype=cols.dtype)
    for kk in np.ndindex(*win.kernel):
        dst = tuple(
            slice(ki * dil, ki * dil + s * (o - 1) + 1, s)
            for ki, dil, s, o in zip(kk, win.dilation, win.stride, out)
        )
        acc[(slice(None), slice(None)) + dst] += cols[(Ellipsis,) + kk]
    crop = tuple(slice(b, b + sz) for b, sz in zip(win.begin, spatial))
    return acc[(slice(None), slice(None)) + crop]


# ------------------------------------------- the same windows in ONNX (float64)
# ONNX Runtime's CPU Conv, ConvTranspose and AveragePool kernels are float32-only,
# so float64 graphs gather windows with constant indices (Pad + Gather), contract
# them with Einsum, and scatter them back with ScatterElements(add). Spatial
# sizes must be fixed: the indices are constants.


def window_indices(padded: Sequence[int], win: Window, out: Sequence[int]) -> np.ndarray:
    """[P, K] flat positions in the padded spatial grid of every window's taps."""
    d = len(padded)
    steps = np.cumprod((1,) + tuple(padded[::-1]))[:d][::-1]  # row-major strides
    flat = np.zeros(tuple(out) + tuple(win.kernel), dtype=np.int64)
    for i in range(d):
        c = np.arange(out[i])[:, None] * win.stride[i] + np.arange(win.kernel[i]) * win.dilation[i]
        shape = [1] * (2 * d)
        shape[i], shape[d + i] = out[i], win.kernel[i]
        flat = flat + steps[i] * c.reshape(shape)
    return flat.reshape(int(np.prod(out)), -1)


def _padded_geometry(spatial: Sequence[Dim], win: Window):
    if not is_static(spatial):
        raise GraphError(
            f"float64 windows need fixed spatial sizes on ONNX Runtime, got "
            f"{fmt_shape(tuple(spatial))}",
            hint="use float32, or fixed sizes",
        )
    out = win.out_dims(spatial)
    extra = win.extra_end(spatial, out)
    padded = [n + b + e + x for n, b, e, x in zip(spatial, win.begin, win.end, extra)]
    return out, extra, padded


def onnx_windows(
    e, x: str, dtype: str, spatial: Sequence[Dim], win: Window, pad_value: float = 0.0
) -> str:
    """ONNX nodes for x [N, C, *S] -> every window [N, C, P, K] (like `windows`)."""
    out, extra, padded = _padded_geometry(spatial, win)
    pads = [0, 0, *win.begin, 0, 0, *(en + x_ for en, x_ in zip(win.end, extra))]
    xp = e.op("Pad", [x, e.ints(pads), e.const(np.asarray(pad_value, dtype=dtype))])
    flat = e.op("Reshape", [xp, e.ints([0, 0, -1])])
    return e.op("Gather", [flat, e.const(window_indices(padded, win, out))], axis=2)


def onnx_unwindow(e, cols: str, dtype: str, spatial: Sequence[Dim], win: Window) -> str:
    """ONNX nodes for the transpose: [N, C, P, K] added back into [N, C, *S]."""
    out, _, padded = _padded_geometry(spatial, win)
    d = len(spatial)
    flat = e.op("Reshape", [cols, e.ints([0, 0, -1])])
    idx = e.op(
        "Expand",
        [e.const(window_indices(padded, win, out).reshape(1, 1, -1)), e.op("Shape", [flat])],
    )
    size = e.op(
        "Concat",
        [
            e.op("Slice", [e.op("Shape", [flat]), e.ints([0]), e.ints([2])]),
            e.ints([int(np.prod(padded))]),
        ],
        axis=0,
    )
    zeros = e.op("ConstantOfShape", [size], value=e.tensor(np.zeros(1, dtype=dtype)))
    acc = e.op("ScatterElements", [zeros, idx, flat], axis=2, reduction="add")
    grid = e.op("Reshape", [acc, e.ints([0, 0, *padded])])
    return e.op(
        "Slice",
        [
            grid,
            e.ints(list(win.begin)),
            e.ints([b + n for b, n in zip(win.begin, spatial)]),
            e.ints(list(range(2, 2 + d))),
        ],
    )
