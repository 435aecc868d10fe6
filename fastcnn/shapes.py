"""Output sizes and padding: the ONE place where they are computed.

Everything spatial in fastcnn (conv, pooling, the layers' shape inference, ``summary()``)
asks this module, so a padding rule can never disagree between a kernel and a layer.

Padding follows TensorFlow/Keras:

* ``'valid'``: no padding, ``out = (in - k) // s + 1``; an error when ``out < 1``.
* ``'same'``:  ``out = ceil(in / s)``; ``total = max((out - 1) * s + k - in, 0)``;
  ``before = total // 2`` and ``after = total - before`` (the odd extra goes to the
  bottom / right).

Kernels never see the word 'same': they receive explicit ``((top, bottom), (left, right))``.
"""
from __future__ import annotations

import numbers

PADDINGS = ("valid", "same")


def normalize_tuple(value, n: int, name: str, *, minimum: int = 1) -> tuple:
    """``3 -> (3, 3)``; ``(3, 2) -> (3, 2)``; checks type, length and ``>= minimum``.

    ``name`` is the user-facing argument name used in error messages.
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        values = (int(value),) * n
    else:
        try:
            values = tuple(value)
        except TypeError:
            raise TypeError(
                f"{name} must be an int or a tuple of {n} ints, got {value!r}"
            ) from None
        if len(values) != n or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in values
        ):
            raise ValueError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
        values = tuple(int(v) for v in values)
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return values


def normalize_padding(padding) -> str:
    """Lower-cases and checks a padding name ('valid' or 'same')."""
    if not isinstance(padding, str) or padding.lower() not in PADDINGS:
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    return padding.lower()


def conv_output_length(length, kernel: int, stride: int, padding: str):
    """Output length and ``(before, after)`` padding along one spatial axis.

    ``length`` None (an input of unknown size, ``Input((None, None, 3))``): the output
    length is None too, and so is the padding where it depends on the length ('same'
    with a stride above 1); layers then take it from each call's input
    (:class:`Window`)."""
    padding = normalize_padding(padding)
    if length is None:
        if padding == "valid":
            return None, (0, 0)
        if stride == 1:   # 'same', stride 1: kernel - 1 in all, whatever the length
            return None, ((kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2)
        return None, None
    if padding == "valid":
        out = (length - kernel) // stride + 1 if length >= kernel else 0
        return out, (0, 0)
    out = -(-length // stride)  # ceil division
    total = max((out - 1) * stride + kernel - length, 0)
    return out, (total // 2, total - total // 2)


def window_output_shape(spatial, window, strides, padding, *, what="kernel_size"):
    """``(H, W)`` in, ``((Ho, Wo), ((top, bottom), (left, right)))`` out.

    Raises a ValueError naming ``what`` when a 'valid' window does not fit the input.
    """
    h, w = spatial
    kh, kw = window
    sh, sw = strides
    ho, pad_h = conv_output_length(h, kh, sh, padding)
    wo, pad_w = conv_output_length(w, kw, sw, padding)
    if (ho is not None and ho < 1) or (wo is not None and wo < 1):
        raise ValueError(
            f"{what} {tuple(window)} is larger than the input's spatial size {(h, w)} "
            f"with padding='valid'; use a smaller {what}, a larger input or padding='same'"
        )
    return (ho, wo), (pad_h, pad_w)


class Window:
    """A window layer's geometry (kernel or pool ``window``, ``strides``, ``padding``) and
    the explicit padding its kernels take: fixed at build for a known input size, else
    computed (and checked) per call from the input's height and width (a layer built on
    ``Input((None, None, C))``), cached per size."""

    __slots__ = ("window", "strides", "padding", "what", "owner", "fixed", "static_pad",
                 "output", "_by_size")

    def __init__(self, spatial, window, strides, padding, what, owner=None):
        self.window, self.strides, self.padding, self.what = window, strides, padding, what
        self.owner = owner   # the layer's name, for the errors of a call
        out, pad = window_output_shape(spatial, window, strides, padding, what=what)
        known = spatial[0] is not None and spatial[1] is not None
        self.fixed = pad if known else None   # set: no per-call work at all
        #: the padding wherever it does not depend on the input size (else None): all but
        #: a strided 'same' window on an input of unknown size
        self.static_pad = pad if pad[0] is not None and pad[1] is not None else None
        self._by_size = {}
        self.output = out

    def pad(self, x_shape):
        """``((top, bottom), (left, right))`` for an NHWC input of shape ``x_shape``."""
        if self.fixed is not None:
            return self.fixed
        key = (x_shape[1], x_shape[2])
        pad = self._by_size.get(key)
        if pad is None:
            try:
                pad = window_output_shape(key, self.window, self.strides, self.padding,
                                          what=self.what)[1]
            except ValueError as exc:
                raise ValueError(f"layer {self.owner!r}: {exc}" if self.owner else str(exc)) \
                    from None
            if len(self._by_size) > 64:
                self._by_size.clear()
            self._by_size[key] = pad
        return pad


def padded_output_shape(spatial, window, strides, pad):
    """Output ``(Ho, Wo)`` of a window op given explicit ``((t, b), (l, r))`` padding.

    This is what kernels use: it is consistent with :func:`window_output_shape`.
    """
    (h, w), (kh, kw), (sh, sw) = spatial, window, strides
    (pt, pb), (pl, pr) = pad
    return (h + pt + pb - kh) // sh + 1, (w + pl + pr - kw) // sw + 1


def conv_flops(n, ho, wo, kh, kw, c_in, c_out) -> int:
    """Multiply-adds x 2 of one conv forward (backward costs about twice this)."""
    return 2 * n * ho * wo * kh * kw * c_in * c_out
