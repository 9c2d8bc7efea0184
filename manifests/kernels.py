"""Stored teacher features to their output in one pass, with the finiteness check folded in (numba kernels).

A separate NaN/Inf scan costs as much as the conversion itself (a second pass over 4 MB per sample); here every
kernel converts (or copies) and flags non-finite values while each value is in a register. A value is non-finite
when its exponent bits are all set (float16 ``0x7C00``, bfloat16 ``0x7F80``, float32 ``0x7F800000``), so the check
needs no conversion. int8 values are always finite (their scale is checked by the caller). Arrays are 1-D views of
contiguous buffers (``reshape(-1)``; the output of the same length); each kernel returns whether a value was
non-finite (its output is then not to be used).
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

#: the exponent bits of each stored dtype, all set for Inf and NaN (the dtype of its bits)
EXPONENT = {"float16": np.uint16(0x7C00), "bfloat16": np.uint16(0x7F80), "float32": np.uint32(0x7F800000)}


@intrinsic
def _half(typingctx, bits):  # noqa: ARG001 (numba's intrinsic signature)
    """The float32 value of float16 ``bits`` (exact; LLVM emits the CPU's conversion, vectorised with F16C)."""
    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())
    return types.float32(types.uint16), codegen


@numba.njit(nogil=True, cache=True, boundscheck=False)
def widen_float16(src: np.ndarray, out: np.ndarray) -> bool:
    """float16 bits (uint16) -> float32 ``out``; whether one was NaN/Inf."""
    bad = False
    for i in range(src.size):
        h = src[i]
        bad |= (h & np.uint16(0x7C00)) == np.uint16(0x7C00)
        out[i] = _half(h)
    return bad


@numba.njit(nogil=True, cache=True, boundscheck=False)
def widen_bfloat16(src: np.ndarray, out: np.ndarray) -> bool:
    """bfloat16 bits (uint16) -> the bits of the float32 values (uint32 ``out``: exact); whether one was NaN/Inf."""
    bad = False
    for i in range(src.size):
        h = np.uint32(src[i])
        bad |= (h & np.uint32(0x7F80)) == np.uint32(0x7F80)
        out[i] = h << np.uint32(16)
    return bad


@numba.njit(nogil=True, cache=True, boundscheck=False)
def copy_checked(src: np.ndarray, out: np.ndarray, exponent: np.integer) -> bool:
    """Copy the bits of floats (uint16 or uint32) to ``out``; whether one was NaN/Inf (its ``exponent`` bits set)."""
    bad = False
    for i in range(src.size):
        v = src[i]
        bad |= (v & exponent) == exponent
        out[i] = v
    return bad


@numba.njit(nogil=True, cache=True, boundscheck=False)
def dequantise_int8(q: np.ndarray, scale: np.ndarray, out: np.ndarray) -> None:
    """int8 features ``(C, N)`` times their float32 per-channel ``scale`` ``(C,)`` -> float32 ``out`` ``(C, N)``."""
    for c in range(q.shape[0]):
        s = scale[c]
        for j in range(q.shape[1]):
            out[c, j] = np.float32(q[c, j]) * s


def to_float32(values: np.ndarray, scale: np.ndarray | None, dtype: str, out: np.ndarray) -> bool:
    """Stored features of one sample (``dtype``: float16, bfloat16 as its uint16 bits, float32, int8 with its
    per-channel ``scale``) decoded into the float32 array ``out`` of their shape; whether a value (or an int8 scale)
    was NaN/Inf."""
    if dtype == "int8":
        s = np.asarray(scale, np.float32)
        if not np.isfinite(s).all():
            return True
        dequantise_int8(values.reshape(len(s), -1), s, out.reshape(len(s), -1))
        return False
    src = values.reshape(-1)
    if dtype == "float16":
        return widen_float16(src.view(np.uint16), out.reshape(-1))
    if dtype == "bfloat16":
        return widen_bfloat16(src.view(np.uint16), out.reshape(-1).view(np.uint32))
    return copy_checked(src.view(np.uint32), out.reshape(-1).view(np.uint32), EXPONENT["float32"])


def to_stored(values: np.ndarray, scale: np.ndarray | None, dtype: str, out: np.ndarray) -> bool:
    """Stored features of one sample copied into ``out`` (their dtype and shape; bfloat16 as any 2-byte dtype);
    whether a value (or an int8 scale) was NaN/Inf."""
    if dtype == "int8":
        out[...] = values
        return not np.isfinite(np.asarray(scale, np.float32)).all()
    bits = np.uint32 if dtype == "float32" else np.uint16
    return copy_checked(values.reshape(-1).view(bits), out.reshape(-1).view(bits), EXPONENT[dtype])


__all__ = ["EXPONENT", "copy_checked", "dequantise_int8", "to_float32", "to_stored", "widen_bfloat16",
           "widen_float16"]
