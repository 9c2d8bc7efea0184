"""Stored teacher features to their output in one pass, with the finiteness check folded in (numba kernels).

A separate NaN/Inf scan costs as much as the conversion itself (a second pass over 4 MB per sample); here every
kernel converts (or copies) and flags non-finite values while each value is in a register. A value is non-finite
when its exponent bits are all set (float16 ``0x7C00``, bfloat16 ``0x7F80``, float32 ``0x7F800000``), so the check
needs no conversion. int8 values are always finite (their scale is checked by the caller). Arrays are 1-D views of
contiguous buffers (``reshape(-1)``; the output of the same length); each kernel returns whether a value was
non-finite (its output is then not to be used).

:func:`crc32c` checks a chunk twice as fast as ``google_crc32c`` on x86-64 (three interleaved streams of the CPU's
crc32 instruction, joined by polynomial arithmetic as zlib's ``crc32_combine``); elsewhere it is ``google_crc32c``.

:func:`decode_chunk` does both in one pass over an uncompressed chunk (its values, then their crc32c): each 8-byte
word read feeds the crc32 instruction and, in the same loop iteration, the vector conversion and the NaN/Inf check,
so the chunk crosses the memory bus once and the crc costs no pass of its own (the crc32 unit and the vector units
run side by side).
"""

from __future__ import annotations

from typing import Any

import google_crc32c
import llvmlite.binding
import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

def _target_features() -> set[str]:
    """The CPU features numba compiles for: ``NUMBA_CPU_FEATURES``, else this CPU's."""
    from numba.core import config

    try:
        flat = config.CPU_FEATURES if config.CPU_FEATURES is not None else \
            llvmlite.binding.get_host_cpu_features().flatten()
    except RuntimeError:  # llvmlite cannot tell on this platform
        return set()
    return {f[1:] for f in flat.split(",") if f.startswith("+")}


_FEATURES = _target_features()
_X86 = llvmlite.binding.get_process_triple().startswith(("x86_64", "i686", "i386"))
#: whether LLVM converts float16 in hardware here: an x86 CPU without F16C (those without AVX) has no conversion
#: instruction, and the library call LLVM would emit is missing from numba's JIT ("Symbol not found:
#: __extendhfsf2", an abort): there the conversion is integer arithmetic
HARDWARE_HALF = not _X86 or "f16c" in _FEATURES


def _widen_half(builder: ir.IRBuilder, bits: ir.Value) -> ir.Value:
    """float32 of float16 ``bits`` (i16 or a vector of i16), exact for every bit pattern: the CPU's conversion,
    or (no F16C) the exponent rebiased in integers, subnormals renormalised by one float subtraction."""
    lanes = bits.type.count if isinstance(bits.type, ir.VectorType) else None

    def of(element: ir.Type) -> ir.Type:
        return ir.VectorType(element, lanes) if lanes else element

    if HARDWARE_HALF:
        return builder.fpext(builder.bitcast(bits, of(ir.HalfType())), of(ir.FloatType()))

    def const(v: int) -> ir.Constant:
        return ir.Constant(of(ir.IntType(32)), [v] * lanes if lanes else v)

    h = builder.zext(bits, of(ir.IntType(32)))
    o = builder.shl(builder.and_(h, const(0x7FFF)), const(13))  # exponent and mantissa, in place
    exponent = builder.and_(o, const(0x0F800000))
    o = builder.add(o, const((127 - 15) << 23))  # rebias
    o = builder.select(builder.icmp_unsigned("==", exponent, const(0x0F800000)), builder.add(o, const(
        (128 - 16) << 23)), o)  # Inf/NaN: exponent all ones, mantissa (payload) kept
    magic = builder.bitcast(const(113 << 23), of(ir.FloatType()))  # 2 ** -14
    subnormal = builder.bitcast(builder.fsub(builder.bitcast(builder.add(o, const(1 << 23)), of(ir.FloatType())),
                                             magic), of(ir.IntType(32)))
    o = builder.select(builder.icmp_unsigned("==", exponent, const(0)), subnormal, o)  # zero, subnormal
    o = builder.or_(o, builder.shl(builder.and_(h, const(0x8000)), const(16)))  # sign
    return builder.bitcast(o, of(ir.FloatType()))


@intrinsic
def _half(typingctx, bits):  # noqa: ARG001 (numba's intrinsic signature)
    """The float32 value of float16 ``bits`` (exact; vectorised by LLVM)."""
    def codegen(context, builder, signature, args):
        return _widen_half(builder, args[0])
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


#: the reflected crc32c (Castagnoli) polynomial
POLY = 0x82F63B78


#: whether the CPU numba compiles for has the crc32 instruction (SSE 4.2)
HARDWARE_CRC = _X86 and "sse4.2" in _FEATURES


@intrinsic
def _crc_word(typingctx, crc, word):  # noqa: ARG001
    """The crc32c register ``crc`` (uint64, low 32 bits) after the 8 bytes of ``word``: one crc32 instruction."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(64), [ir.IntType(64)] * 2),
                                            "llvm.x86.sse42.crc32.64.64")
        return builder.call(fn, args)
    return types.uint64(types.uint64, types.uint64), codegen


@intrinsic
def _crc_byte(typingctx, crc, byte):  # noqa: ARG001
    """The crc32c register ``crc`` (uint32) after ``byte`` (uint8)."""
    def codegen(context, builder, signature, args):
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.IntType(32), [ir.IntType(32),
                                                                                             ir.IntType(8)]),
                                            "llvm.x86.sse42.crc32.32.8")
        return builder.call(fn, args)
    return types.uint32(types.uint32, types.uint8), codegen


@numba.njit(nogil=True, cache=True)
def _mulmod(a: int, b: int) -> int:
    """``a * b`` modulo the crc32c polynomial (reflected bit order, as zlib's ``multmodp``)."""
    m, p = np.uint32(1 << 31), np.uint32(0)
    a, b = np.uint32(a), np.uint32(b)
    while m:
        if a & m:
            p ^= b
        m >>= np.uint32(1)
        b = (b >> np.uint32(1)) ^ np.uint32(POLY) if b & np.uint32(1) else b >> np.uint32(1)
    return p


@numba.njit(nogil=True, cache=True)
def _shift(nbytes: int) -> int:
    """``x ** (8 * nbytes)`` modulo the polynomial: moves a crc past ``nbytes`` zero bytes (zlib's ``x2nmodp``)."""
    p, power, n = np.uint32(1 << 31), np.uint32(1 << 23), nbytes  # x ** 0; x ** 8 (one byte)
    while n:
        if n & 1:
            p = _mulmod(power, p)
        power = _mulmod(power, power)
        n >>= 1
    return p


@numba.njit(nogil=True, cache=True)
def _join(c0: np.uint64, c1: np.uint64, c2: np.uint64, nbytes: int) -> np.uint32:
    """The crc32c register after three consecutive runs of ``nbytes`` each, from the registers of the three run
    separately (each started at ~0)."""
    shift = _shift(nbytes)  # crc(A + B) = crc(A) * x^(8|B|) + crc(B), the registers started at ~0 and 0
    return np.uint32(_mulmod(shift, _mulmod(shift, np.uint32(c0) ^ np.uint32(0xFFFFFFFF)) ^ np.uint32(c1)
                             ^ np.uint32(0xFFFFFFFF)) ^ np.uint32(c2))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _crc_from(crc: np.uint32, data: np.ndarray, words: np.ndarray, first: int) -> np.uint32:
    """The crc32c register ``crc`` after the bytes of ``data`` from word ``first`` on (one chain: for short tails)."""
    c = np.uint64(crc)
    for i in range(first, words.size):
        c = _crc_word(c, words[i])
    crc = np.uint32(c)
    for j in range(8 * words.size, data.size):
        crc = _crc_byte(crc, data[j])
    return crc


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _crc32c(data: np.ndarray, words: np.ndarray) -> int:
    """crc32c of the bytes ``data`` (``words``: its first ``8 * (len // 8)`` bytes as uint64)."""
    n = words.size // 3
    c0, c1, c2 = np.uint64(0xFFFFFFFF), np.uint64(0xFFFFFFFF), np.uint64(0xFFFFFFFF)
    for i in range(n):  # three independent chains keep the crc32 unit busy (latency 3, one per cycle)
        c0 = _crc_word(c0, words[i])
        c1 = _crc_word(c1, words[n + i])
        c2 = _crc_word(c2, words[2 * n + i])
    return _crc_from(_join(c0, c1, c2, 8 * n), data, words, 3 * n) ^ np.uint32(0xFFFFFFFF)


def crc32c(data: np.ndarray) -> int:
    """The crc32c of the bytes of a contiguous array."""
    raw = data.reshape(-1).view(np.uint8)
    if not HARDWARE_CRC:
        return google_crc32c.value(raw)
    return int(_crc32c(raw, raw[:raw.size // 8 * 8].view(np.uint64)))


#: what :func:`decode_chunk` makes of a chunk's values (``kind``): float16 -> float32, bfloat16 -> float32 (bits),
#: 2-byte copy, 4-byte copy (float32), int8 -> float32 times its channel's scale, 1-byte copy (int8)
HALF, BFLOAT, COPY16, COPY32, INT8, COPY8 = range(6)
#: words per stream in one iteration of the fused loop: 4 (32 bytes) keeps the crc32 unit and the conversions busy
STEP = 4
#: how far ahead (words) each stream's bytes are prefetched: 512 bytes measured fastest of 256 to 1024 (a float16
#: chunk read 10% faster than with the hardware prefetcher alone)
AHEAD = 64
#: what :func:`decode_chunk` found: sound; a checksum mismatch (values or int8 scale); NaN/Inf (values or int8
#: scale); a chunk of the wrong size for its sample
SOUND, CHECKSUM, NONFINITE, SIZE = 0, 1, 2, 3


def _splat(builder: ir.IRBuilder, vector: ir.VectorType, value: ir.Value) -> ir.Value:
    out = ir.Constant(vector, ir.Undefined)
    for k in range(vector.count):
        out = builder.insert_element(out, value, ir.Constant(ir.IntType(32), k))
    return out


def _fused_loop(kind: int) -> Any:
    """An intrinsic ``(words, out, n, lo, hi, c0, c1, c2, s0, s1, s2, mask) -> (c0, c1, c2, bad)``: for ``i`` in
    ``[lo, hi)`` (step :data:`STEP`) and each stream ``s`` of three, the words ``s * n + i ...`` (uint64 ``words``)
    go through the crc32 instruction (registers ``c0, c1, c2``) and, converted as ``kind`` (int8: times the stream's
    scale ``s0, s1, s2``), into the bytes ``out`` at the same value index. ``bad`` is 1 when a value had all its
    ``mask`` bits set (its exponent: NaN/Inf; float kinds only)."""
    lane = {HALF: 16, BFLOAT: 16, COPY16: 16, COPY32: 32, INT8: 8, COPY8: 8}[kind]
    widen = {HALF: 2, BFLOAT: 2, INT8: 4}.get(kind, 1)  # output bytes per input byte
    checked = kind not in (INT8, COPY8)
    i64 = ir.IntType(64)

    @intrinsic
    def loop(typingctx, words, out, n, lo, hi, c0, c1, c2, s0, s1, s2, mask):  # noqa: ARG001
        result = types.UniTuple(types.uint64, 4)

        def codegen(context, builder, signature, args):
            words, out, n, lo, hi, c0, c1, c2, s0, s1, s2, mask = args
            wptr = cgutils.create_struct_proxy(signature.args[0])(context, builder, value=words).data
            optr = cgutils.create_struct_proxy(signature.args[1])(context, builder, value=out).data
            crc = cgutils.get_or_insert_function(builder.module, ir.FunctionType(i64, [i64, i64]),
                                                 "llvm.x86.sse42.crc32.64.64")
            i8p, i32 = ir.IntType(8).as_pointer(), ir.IntType(32)
            prefetch = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32,
                                                                                                      i32]),
                                                      "llvm.prefetch.p0i8")
            vin = ir.VectorType(ir.IntType(lane), 64 * STEP // lane)
            vout = (ir.VectorType(ir.FloatType(), vin.count) if kind in (HALF, INT8) else
                    ir.VectorType(ir.IntType(32), vin.count) if kind == BFLOAT else vin)
            bits = _splat(builder, vin, builder.trunc(mask, ir.IntType(lane)))
            scales = [_splat(builder, vout, s) for s in (s0, s1, s2)] if kind == INT8 else [None] * 3
            zero = ir.Constant(vin, None)
            entry = builder.basic_block
            body, done = builder.append_basic_block("fused"), builder.append_basic_block("fused_done")
            builder.cbranch(builder.icmp_signed("<", lo, hi), body, done)
            builder.position_at_end(body)
            i, acc = builder.phi(i64), builder.phi(vin)
            regs = [builder.phi(i64) for _ in range(3)]
            i.add_incoming(lo, entry)
            acc.add_incoming(zero, entry)
            for reg, start in zip(regs, (c0, c1, c2)):
                reg.add_incoming(start, entry)
            new, top = [], acc
            for s in range(3):
                w = builder.add(builder.mul(n, ir.Constant(i64, s)), i)
                at = builder.gep(wptr, [w])
                c = regs[s]
                for k in range(STEP):
                    word = builder.load(builder.gep(at, [ir.Constant(i64, k)]))
                    word.align = 1  # a chunk inside a shard file is only 4-byte aligned
                    c = builder.call(crc, [c, word])
                new.append(c)
                ahead = builder.bitcast(builder.gep(at, [ir.Constant(i64, AHEAD)]), i8p)  # a hint: never faults
                builder.call(prefetch, [ahead, ir.Constant(i32, 0), ir.Constant(i32, 3), ir.Constant(i32, 1)])
                v = builder.load(builder.bitcast(at, vin.as_pointer()))
                v.align = 1
                if checked:
                    masked = builder.and_(v, bits)
                    top = builder.select(builder.icmp_unsigned(">", masked, top), masked, top)
                if kind == HALF:
                    v = _widen_half(builder, v)
                elif kind == BFLOAT:
                    v = builder.shl(builder.zext(v, vout), _splat(builder, vout, ir.Constant(ir.IntType(32), 16)))
                elif kind == INT8:
                    v = builder.fmul(builder.sitofp(v, vout), scales[s])
                dest = builder.gep(optr, [builder.mul(w, ir.Constant(i64, 8 * widen))])
                builder.store(v, builder.bitcast(dest, vout.as_pointer())).align = 1
            following = builder.add(i, ir.Constant(i64, STEP))
            i.add_incoming(following, body)
            acc.add_incoming(top, body)
            for reg, c in zip(regs, new):
                reg.add_incoming(c, body)
            builder.cbranch(builder.icmp_signed("<", following, hi), body, done)
            builder.position_at_end(done)
            final = []
            for start, c in zip((c0, c1, c2), new):
                phi = builder.phi(i64)
                phi.add_incoming(start, entry)
                phi.add_incoming(c, body)
                final.append(phi)
            largest = builder.phi(vin)
            largest.add_incoming(zero, entry)
            largest.add_incoming(top, body)
            hit = builder.icmp_unsigned("==", largest, bits) if checked else ir.Constant(ir.VectorType(
                ir.IntType(1), vin.count), None)
            bad = builder.zext(builder.icmp_unsigned("!=", builder.bitcast(hit, ir.IntType(vin.count)),
                                                     ir.Constant(ir.IntType(vin.count), 0)), i64)
            return context.make_tuple(builder, result, [*final, bad])

        return result(words, out, n, lo, hi, c0, c1, c2, s0, s1, s2, mask), codegen

    return loop


_LOOP_HALF, _LOOP_BFLOAT, _LOOP_COPY16, _LOOP_COPY32, _LOOP_INT8, _LOOP_COPY8 = (_fused_loop(k) for k in range(6))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def dequantise_int8(q: np.ndarray, scale: np.ndarray, per: int, first: int, out: np.ndarray) -> None:
    """int8 features ``q`` (1-D: values ``first, first + 1, ...`` of a sample, ``per`` values a channel) times their
    channel's float32 ``scale`` -> float32 ``out`` (1-D)."""
    j = 0
    while j < q.size:
        c = (first + j) // per
        end = min(q.size, (c + 1) * per - first)
        s, src, dst = scale[c], q[j:end], out[j:end]
        for k in range(src.size):
            dst[k] = np.float32(src[k]) * s
        j = end


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _convert_span(kind: int, src: np.ndarray, out: np.ndarray, mask: int, scale: np.ndarray, per: int,
                  first: int) -> bool:
    """The bytes of values ``src`` (value index ``first`` on) converted as ``kind`` into the bytes ``out``, one
    value at a time; whether one was NaN/Inf."""
    if kind == HALF:
        return widen_float16(src.view(np.uint16), out.view(np.float32))
    if kind == BFLOAT:
        return widen_bfloat16(src.view(np.uint16), out.view(np.uint32))
    if kind == COPY16:
        return copy_checked(src.view(np.uint16), out.view(np.uint16), np.uint16(mask))
    if kind == COPY32:
        return copy_checked(src.view(np.uint32), out.view(np.uint32), np.uint32(mask))
    if kind == INT8:
        dequantise_int8(src.view(np.int8), scale, per, first, out.view(np.float32))
    else:
        out[:] = src
    return False


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _stored_crc(chunk: np.ndarray) -> np.uint32:
    """The crc32c stored in the last 4 bytes of ``chunk`` (little endian)."""
    m = chunk.size - 4
    return (np.uint32(chunk[m]) | np.uint32(chunk[m + 1]) << np.uint32(8) | np.uint32(chunk[m + 2]) << np.uint32(16)
            | np.uint32(chunk[m + 3]) << np.uint32(24))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _scale_row(scale_chunk: np.ndarray, row: int, channels: int) -> tuple[int, np.ndarray]:
    """The float16 bits of row ``row`` of a chunk of int8 scales ``(rows, channels)`` (values, then crc32c), after
    checking the chunk's crc32c (:data:`SOUND` or :data:`CHECKSUM`)."""
    scales = scale_chunk[:scale_chunk.size - 4]
    bits = scales.view(np.uint16)[row * channels:(row + 1) * channels]
    if _crc32c(scales, scales[:scales.size // 8 * 8].view(np.uint64)) != _stored_crc(scale_chunk):
        return CHECKSUM, bits
    return SOUND, bits


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _copy_scale(scale_chunk: np.ndarray, row: int, out: np.ndarray) -> int:
    status, bits = _scale_row(scale_chunk, row, out.size)
    if status != SOUND:
        return status
    return NONFINITE if copy_checked(bits, out, np.uint16(0x7C00)) else SOUND


def copy_scale(scale_chunk: np.ndarray, row: int, out: np.ndarray) -> int:
    """Row ``row`` of an uncompressed chunk of int8 scales (float16 ``(rows, C)``, then its crc32c) copied into the
    float16 ``out`` ``(C,)`` after checking the crc32c: :data:`SOUND`, :data:`CHECKSUM`, :data:`NONFINITE` (a scale
    of this row is NaN/Inf) or :data:`SIZE`."""
    if not (out.dtype == np.float16 and out.ndim == 1 and out.flags.c_contiguous and scale_chunk.dtype == np.uint8
            and scale_chunk.ndim == 1 and scale_chunk.flags.c_contiguous):
        raise ValueError("copy_scale reads a contiguous 1-D uint8 chunk into a contiguous 1-D float16 array")
    if out.size == 0 or (scale_chunk.size - 4) % (2 * out.size) or not 0 <= row < (scale_chunk.size - 4) // (
            2 * out.size):
        return SIZE
    if not HARDWARE_CRC:
        if crc32c(scale_chunk[:-4]) != int(scale_chunk[-4:].view("<u4")[0]):
            return CHECKSUM
        out[:] = scale_chunk[:-4].view("<f2").reshape(-1, out.size)[row]
        return SOUND if np.isfinite(out).all() else NONFINITE
    return int(_copy_scale(scale_chunk, row, out.view(np.uint16)))


@numba.njit(nogil=True, cache=True, boundscheck=False)
def _decode_chunk(chunk: np.ndarray, out: np.ndarray, kind: int, mask: int, scale_chunk: np.ndarray,
                  scale_row: int, channels: int) -> int:
    """:func:`decode_chunk` on the bytes of ``chunk``, ``out`` and (int8) ``scale_chunk``."""
    scale = np.empty(channels if kind == INT8 else 0, np.float32)
    if kind == INT8:
        status, bits = _scale_row(scale_chunk, scale_row, channels)
        if status != SOUND:
            return status
        if widen_float16(bits, scale):
            return NONFINITE
    body = chunk[:chunk.size - 4]
    per = body.size // channels if kind == INT8 else 1  # values a channel
    words = body[:body.size // 8 * 8].view(np.uint64)
    n = words.size // 3 // STEP * STEP
    if kind == INT8:  # a stream must start on a channel and keep its scale for a whole loop: channels in steps
        unit = per // 8 if per % (8 * STEP) == 0 else 0
        n = words.size // 3 // unit * unit if unit else 0
    c0, c1, c2 = np.uint64(0xFFFFFFFF), np.uint64(0xFFFFFFFF), np.uint64(0xFFFFFFFF)
    s0 = s1 = s2 = np.float32(0)
    bad = np.uint64(0)
    m = np.uint64(mask)
    if kind == HALF:
        c0, c1, c2, bad = _LOOP_HALF(words, out, n, 0, n, c0, c1, c2, s0, s1, s2, m)
    elif kind == BFLOAT:
        c0, c1, c2, bad = _LOOP_BFLOAT(words, out, n, 0, n, c0, c1, c2, s0, s1, s2, m)
    elif kind == COPY16:
        c0, c1, c2, bad = _LOOP_COPY16(words, out, n, 0, n, c0, c1, c2, s0, s1, s2, m)
    elif kind == COPY32:
        c0, c1, c2, bad = _LOOP_COPY32(words, out, n, 0, n, c0, c1, c2, s0, s1, s2, m)
    elif kind == COPY8:
        c0, c1, c2, bad = _LOOP_COPY8(words, out, n, 0, n, c0, c1, c2, s0, s1, s2, m)
    elif n:  # int8, one channel of each stream at a time
        unit = per // 8
        k = n // unit
        for c in range(k):
            c0, c1, c2, _ = _LOOP_INT8(words, out, n, c * unit, (c + 1) * unit, c0, c1, c2, scale[c], scale[k + c],
                                       scale[2 * k + c], m)
    if n:
        crc = _crc_from(_join(c0, c1, c2, 8 * n), body, words, 3 * n) ^ np.uint32(0xFFFFFFFF)
    else:  # too short for the loop (or int8 channels it cannot step through): the crc first, then the values
        crc = np.uint32(_crc32c(body, words))
    itemsize = 1 if kind in (INT8, COPY8) else 4 if kind == COPY32 else 2
    widen = 4 if kind == INT8 else 2 if kind in (HALF, BFLOAT) else 1
    tail = 24 * n
    tail_bad = _convert_span(kind, body[tail:], out[tail * widen:], mask, scale, per, tail // itemsize)
    if crc != _stored_crc(chunk):
        return CHECKSUM
    return NONFINITE if bad or tail_bad else SOUND


#: per stored dtype: the kind of :func:`decode_chunk` to float32 and to the stored dtype, and the exponent mask
KINDS = {"float16": (HALF, COPY16, 0x7C00), "bfloat16": (BFLOAT, COPY16, 0x7F80),
         "float32": (COPY32, COPY32, 0x7F800000), "int8": (INT8, COPY8, 0)}


def decode_chunk(chunk: np.ndarray, dtype: str, out: np.ndarray, scale_chunk: np.ndarray | None = None,
                 scale_row: int = 0) -> int:
    """One pass over an uncompressed zarr chunk ``chunk`` (uint8: the little-endian values of one sample of
    ``dtype``, then their crc32c): checks the crc32c, converts the values into ``out`` (``(C, ...)``; float32:
    decoded, int8 times its per-channel scale, row ``scale_row`` of ``scale_chunk``, the stored chunk of float16
    scales ``(rows, C)`` of the same form, checksum checked too; the stored dtype, bfloat16 as any 2-byte dtype:
    copied) and checks them for NaN/Inf. Returns :data:`SOUND`, :data:`CHECKSUM`, :data:`NONFINITE` or :data:`SIZE`
    (``out`` is not to be used then). Without the crc32 instruction it checks, then converts."""
    if not (chunk.dtype == np.uint8 and chunk.ndim == 1 and chunk.flags.c_contiguous and out.flags.c_contiguous):
        raise ValueError("decode_chunk reads a contiguous 1-D uint8 chunk into a C-contiguous array")
    as_float, as_stored, mask = KINDS[dtype]
    itemsize = 2 if dtype in ("float16", "bfloat16") else 4 if dtype == "float32" else 1
    decoded = out.dtype == np.float32 and dtype != "float32"
    channels = out.shape[0] if out.ndim else 0
    if (chunk.size != out.size * itemsize + 4 or (decoded and dtype == "int8") != (scale_chunk is not None)
            or scale_chunk is not None and not (channels and (scale_chunk.size - 4) % (2 * channels) == 0
                                                and 0 <= scale_row < (scale_chunk.size - 4) // (2 * channels))):
        return SIZE
    if not HARDWARE_CRC:
        return _decode_two_pass(chunk, dtype, out, scale_chunk, scale_row)
    return _decode_chunk(chunk, out.reshape(-1).view(np.uint8), as_float if decoded else as_stored, mask,
                         _NO_SCALE if scale_chunk is None else scale_chunk, scale_row, channels)


_NO_SCALE = np.zeros(4, np.uint8)


def _decode_two_pass(chunk: np.ndarray, dtype: str, out: np.ndarray, scale_chunk: np.ndarray | None,
                     scale_row: int) -> int:
    """:func:`decode_chunk` with ``google_crc32c``: the checksums first, then the values."""
    if any(crc32c(c[:-4]) != int(c[-4:].view("<u4")[0]) for c in (chunk, scale_chunk) if c is not None):
        return CHECKSUM
    scale = None if scale_chunk is None else scale_chunk[:-4].view("<f2").reshape(-1, len(out))[scale_row]
    return NONFINITE if convert(chunk[:-4], scale, dtype, out) else SOUND


_NO_SCALE32 = np.zeros(0, np.float32)


def convert(values: np.ndarray, scale: np.ndarray | None, dtype: str, out: np.ndarray) -> bool:
    """Stored features of one sample (``dtype``: float16, bfloat16 as its uint16 bits, float32, int8 with its
    per-channel ``scale``; or their bytes) into ``out``: a float32 array is decoded into (int8 times its channel's
    scale), one of the stored dtype's size copied into (bfloat16 as any 2-byte dtype); whether a value (or an int8
    scale) was NaN/Inf."""
    as_float, as_stored, mask = KINDS[dtype]
    kind = as_float if out.dtype == np.float32 else as_stored
    widen = 4 if kind == INT8 else 2 if kind in (HALF, BFLOAT) else 1
    if not out.flags.c_contiguous or out.nbytes != values.nbytes * widen or (kind == INT8) > (scale is not None):
        raise ValueError(f"cannot convert {values.nbytes} bytes of {dtype} values (scale: {scale is not None}) into "
                         f"a {'C-contiguous' if out.flags.c_contiguous else 'non-contiguous'} {out.dtype} array of "
                         f"{out.nbytes} bytes")
    s = _NO_SCALE32 if scale is None else np.asarray(scale, np.float32).reshape(-1)
    if not np.isfinite(s).all():
        return True
    return bool(_convert_span(kind, values.reshape(-1).view(np.uint8), out.reshape(-1).view(np.uint8), mask, s,
                              out.size // max(1, s.size), 0))


__all__ = ["AHEAD", "BFLOAT", "CHECKSUM", "COPY16", "COPY32", "COPY8", "HALF", "HARDWARE_CRC",
           "HARDWARE_HALF", "INT8", "KINDS", "NONFINITE", "POLY", "SIZE", "SOUND", "STEP", "copy_checked",
           "convert", "copy_scale", "crc32c", "decode_chunk", "dequantise_int8", "widen_bfloat16",
           "widen_float16"]
