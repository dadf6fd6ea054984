"""Triton kernels of the op, forward and fused backward (docs/DESIGN.md §4), and the
functions that launch them on checked inputs:

    forward(features, masks, eps) -> out [B,P,C]
    backward(grad, features, masks, eps) -> (grad_features, grad_masks)

pan_ops/_library.py registers them as the op's kernel on the CUDA dispatch key (and on
the CPU key under TRITON_INTERPRET=1). The op is memory bound, so every kernel reads F
once and writes each output once.

- forward: one program per (channel tile, sample). It walks HW in chunks, loading
  a [BLOCK_C, BLOCK_HW] tile of F and the [P_PAD, BLOCK_HW] chunk of M[b], adds
  |M| into sum|M| (S = max(sum|M|, eps)) and F @ M^T into a [BLOCK_C, P_PAD]
  accumulator on the tensor cores.
- backward, pass 1: one program per (channel tile, sample) computes dF chunk by
  chunk and its tile's share of G_raw = g @ F (P x HW), stored as per-tile partials.
- backward, pass 2: one program per (part, sample) sums the partials over the
  channel tiles in a fixed order (deterministic, no atomics), then forms dM from
  G = G_raw / S.

Precision: half inputs feed the tensor cores directly with fp32 accumulation;
float32 uses tf32x3 (split precision, about fp32 accuracy; plain tf32 is not
enough and "ieee" fp32 dots are slow); float64 runs "ieee" fp64 dots. Under
TRITON_INTERPRET=1 (CPU tensors) half dots are upcast to fp32, because the
interpreter's bf16 matmul is wrong, and a single config replaces autotuning.
"""

import os
import struct

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # triton is optional: backend="triton" is then unavailable
    triton = None

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# PAN_TRITON_AUTOTUNE=0 runs each kernel's first (default) config instead of
# benchmarking all of them on the first call of every new shape: a faster start
# for test suites that call many shapes.
AUTOTUNE = not INTERPRET and os.environ.get("PAN_TRITON_AUTOTUNE", "1") != "0"


def _usable() -> bool:
    if triton is None:
        return False
    major, minor = (int(part) for part in triton.__version__.split(".")[:2])
    return (major, minor) >= (3, 2)  # tl.dot input_precision="tf32x3" and kernel-side dtype checks


AVAILABLE = _usable()

# Channels per program of the backward at the PAN shape (P_PAD 16, 4-byte accumulators).
# Fixed on the host, not autotuned, because it sets the number of G partials that the
# second backward pass reduces.
BACKWARD_BLOCK_C = 16 if INTERPRET else 128
# Largest HW chunk of the forward. Small under the interpreter so that small test
# shapes still exercise the chunk loop.
MAX_BLOCK_HW = 16 if INTERPRET else 64
# Elements of the [tiles, HW] block of partials that pass 2 sums at once.
REDUCE_BLOCK_ELEMENTS = 256 if INTERPRET else 4096


def _next_pow2(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _spatial_strides(t: torch.Tensor):
    """(stride_h, stride_w, flat) of a [N,K,H,W] tensor. flat means H and W merge into
    one HW axis with stride stride_w (true for NCHW and channels_last), which lets
    the kernels index hw * stride directly and load 16 bytes at a time."""
    height, width = t.shape[2], t.shape[3]
    stride_h, stride_w = t.stride(2), t.stride(3)
    if width == 1:
        return stride_h, stride_h, True
    if height == 1 or stride_h == width * stride_w:
        return stride_h, stride_w, True
    return stride_h, stride_w, False


def _split_eps(eps: float):
    """eps as a (hi, lo) pair of float32 values: Triton passes Python floats as
    float32, and the float64 kernels rebuild eps = hi + lo to ~48 bits."""
    hi = _round_to_float32(eps)
    return hi, _round_to_float32(eps - hi)


def _round_to_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _dot_precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float64 else "tf32x3"


def _launcher(kernel):
    """What launches `kernel`: the kernel itself. A seam: tools/triton_compile.py replaces it
    to record the compiled kernels instead."""
    return kernel


if AVAILABLE:

    @triton.jit
    def _spatial_offsets(hw, W, stride_h, stride_w, FLAT_HW: tl.constexpr):
        if FLAT_HW:
            offsets = hw * stride_w
        else:
            offsets = (hw // W) * stride_h + (hw % W) * stride_w
        return offsets

    @triton.jit
    def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
        """acc + a @ b; UPCAST feeds half operands to the dot as the accumulator dtype."""
        if UPCAST:
            a = a.to(acc.dtype)
            b = b.to(acc.dtype)
        return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)

    @triton.jit
    def _eps(eps_hi, eps_lo, ACC: tl.constexpr):
        return tl.cast(eps_hi, ACC) + tl.cast(eps_lo, ACC)

    def _autotune_configs(gpu_configs, interpreter_params):
        if INTERPRET:  # one config: the interpreter cannot benchmark alternatives
            return [triton.Config(interpreter_params, num_warps=4)]
        return gpu_configs if AUTOTUNE else gpu_configs[:1]

    _LAYOUT_KEY = ["C", "HW", "P_PAD", "F_FLAT_HW", "M_FLAT_HW"]

    @triton.autotune(
        configs=_autotune_configs(
            [
                triton.Config({"BLOCK_C": 64}, num_warps=4, num_stages=3),
                triton.Config({"BLOCK_C": 64}, num_warps=8, num_stages=3),
                triton.Config({"BLOCK_C": 128}, num_warps=8, num_stages=3),
                triton.Config({"BLOCK_C": 16}, num_warps=4, num_stages=1),  # smallest footprint
            ],
            {"BLOCK_C": 16},
        ),
        key=_LAYOUT_KEY,
    )
    @triton.jit
    def _forward_kernel(
        F, M, OUT,
        C, P, HW, W, eps_hi, eps_lo,
        f_sb, f_sc, f_sh, f_sw,
        m_sb, m_sp, m_sh, m_sw,
        F_FLAT_HW: tl.constexpr, M_FLAT_HW: tl.constexpr,
        P_PAD: tl.constexpr, BLOCK_HW: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        ACC: tl.constexpr = tl.float64 if F.dtype.element_ty == tl.float64 else tl.float32
        b = tl.program_id(1).to(tl.int64)
        offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        offs_p = tl.arange(0, P_PAD)
        c_ok = offs_c < C
        p_ok = offs_p < P
        f_rows = F + b * f_sb + offs_c[:, None] * f_sc
        m_rows = M + b * m_sb + offs_p[:, None] * m_sp

        pooled = tl.zeros((BLOCK_C, P_PAD), ACC)
        abs_sum = tl.zeros((P_PAD,), ACC)
        for start in range(0, HW, BLOCK_HW):
            hw = start + tl.arange(0, BLOCK_HW)
            hw_ok = hw < HW
            m = tl.load(
                m_rows + _spatial_offsets(hw, W, m_sh, m_sw, M_FLAT_HW)[None, :],
                mask=p_ok[:, None] & hw_ok[None, :], other=0.0,
            )
            f = tl.load(
                f_rows + _spatial_offsets(hw, W, f_sh, f_sw, F_FLAT_HW)[None, :],
                mask=c_ok[:, None] & hw_ok[None, :], other=0.0,
            )
            abs_sum += tl.sum(tl.abs(m.to(ACC)), axis=1)
            pooled = _dot(f, tl.trans(m), pooled, PRECISION, UPCAST)

        pooled = pooled / tl.maximum(abs_sum, _eps(eps_hi, eps_lo, ACC))[None, :]
        out = OUT + b * P * C + offs_p[None, :] * C + offs_c[:, None]
        tl.store(out, pooled.to(OUT.dtype.element_ty), mask=c_ok[:, None] & p_ok[None, :])

    @triton.autotune(
        configs=_autotune_configs(
            [
                triton.Config({"BLOCK_HW": 32}, num_warps=4, num_stages=3),
                triton.Config({"BLOCK_HW": 32}, num_warps=8, num_stages=3),
                triton.Config({"BLOCK_HW": 64}, num_warps=8, num_stages=2),
                triton.Config({"BLOCK_HW": 64}, num_warps=4, num_stages=3),
                triton.Config({"BLOCK_HW": 16}, num_warps=4, num_stages=1),  # smallest footprint
            ],
            {"BLOCK_HW": 16},
        ),
        key=_LAYOUT_KEY,
    )
    @triton.jit
    def _backward_features_kernel(
        GRAD, F, M, GRAD_F, PARTIALS,
        C, P, HW, W, eps_hi, eps_lo,
        g_sb, g_sp, g_sc,
        f_sb, f_sc, f_sh, f_sw,
        m_sb, m_sp, m_sh, m_sw,
        df_sb, df_sc, df_sh, df_sw,
        F_FLAT_HW: tl.constexpr, M_FLAT_HW: tl.constexpr, DF_FLAT_HW: tl.constexpr,
        P_PAD: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
        BLOCK_HW: tl.constexpr,
    ):  # fmt: skip
        ACC: tl.constexpr = PARTIALS.dtype.element_ty
        c_tile = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        offs_c = c_tile * BLOCK_C + tl.arange(0, BLOCK_C)
        offs_p = tl.arange(0, P_PAD)
        c_ok = offs_c < C
        p_ok = offs_p < P
        m_rows = M + b * m_sb + offs_p[:, None] * m_sp

        # S needs all of M[b] before the first chunk of dF (a small re-read, L2 resident).
        abs_sum = tl.zeros((P_PAD,), ACC)
        for start in range(0, HW, BLOCK_HW):
            hw = start + tl.arange(0, BLOCK_HW)
            m = tl.load(
                m_rows + _spatial_offsets(hw, W, m_sh, m_sw, M_FLAT_HW)[None, :],
                mask=p_ok[:, None] & (hw < HW)[None, :], other=0.0,
            )
            abs_sum += tl.sum(tl.abs(m.to(ACC)), axis=1)

        g = tl.load(
            GRAD + b * g_sb + offs_p[:, None] * g_sp + offs_c[None, :] * g_sc,
            mask=p_ok[:, None] & c_ok[None, :], other=0.0,
        )
        g_scaled_t = tl.trans(g.to(ACC) / tl.maximum(abs_sum, _eps(eps_hi, eps_lo, ACC))[:, None])

        f_rows = F + b * f_sb + offs_c[:, None] * f_sc
        df_rows = GRAD_F + b * df_sb + offs_c[:, None] * df_sc
        partial_rows = PARTIALS + ((b * tl.num_programs(0) + c_tile) * P + offs_p[:, None]) * HW
        for start in range(0, HW, BLOCK_HW):
            hw = start + tl.arange(0, BLOCK_HW)
            hw_ok = hw < HW
            m = tl.load(
                m_rows + _spatial_offsets(hw, W, m_sh, m_sw, M_FLAT_HW)[None, :],
                mask=p_ok[:, None] & hw_ok[None, :], other=0.0,
            )
            f = tl.load(
                f_rows + _spatial_offsets(hw, W, f_sh, f_sw, F_FLAT_HW)[None, :],
                mask=c_ok[:, None] & hw_ok[None, :], other=0.0,
            )
            d_f = _dot(g_scaled_t, m.to(ACC), tl.zeros((BLOCK_C, BLOCK_HW), ACC), PRECISION, UPCAST)
            tl.store(
                df_rows + _spatial_offsets(hw, W, df_sh, df_sw, DF_FLAT_HW)[None, :],
                d_f.to(GRAD_F.dtype.element_ty), mask=c_ok[:, None] & hw_ok[None, :],
            )
            g_raw = _dot(g, f, tl.zeros((P_PAD, BLOCK_HW), ACC), PRECISION, UPCAST)
            tl.store(partial_rows + hw[None, :], g_raw, mask=p_ok[:, None] & hw_ok[None, :])

    @triton.jit
    def _backward_masks_kernel(
        M, PARTIALS, G_RAW, GRAD_M,
        P, HW, W, NUM_TILES, eps_hi, eps_lo,
        m_sb, m_sp, m_sh, m_sw,
        dm_sb, dm_sp, dm_sh, dm_sw,
        M_FLAT_HW: tl.constexpr, DM_FLAT_HW: tl.constexpr,
        TILE_BLOCK: tl.constexpr, BLOCK_HW: tl.constexpr,
    ):  # fmt: skip
        ACC: tl.constexpr = PARTIALS.dtype.element_ty
        p = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        m_row = M + b * m_sb + p * m_sp
        dm_row = GRAD_M + b * dm_sb + p * dm_sp
        partial_row = PARTIALS + (b * NUM_TILES * P + p) * HW  # tile t's row at + t * P * HW
        g_raw_row = G_RAW + (b * P + p) * HW
        tiles = tl.arange(0, TILE_BLOCK)

        # Pass 1: G_raw = sum of the tiles' partials in a fixed order, and the sums
        # over HW of |M| and G_raw * M.
        abs_m = tl.zeros((BLOCK_HW,), ACC)
        g_dot_m = tl.zeros((BLOCK_HW,), ACC)
        for start in range(0, HW, BLOCK_HW):
            hw = start + tl.arange(0, BLOCK_HW)
            hw_ok = hw < HW
            g_raw = tl.zeros((BLOCK_HW,), ACC)
            for tile_start in range(0, NUM_TILES, TILE_BLOCK):
                tile = tile_start + tiles
                partials = tl.load(
                    partial_row + tile[:, None] * P * HW + hw[None, :],
                    mask=(tile < NUM_TILES)[:, None] & hw_ok[None, :], other=0.0,
                )
                g_raw += tl.sum(partials, axis=0)
            tl.store(g_raw_row + hw, g_raw, mask=hw_ok)
            m = tl.load(m_row + _spatial_offsets(hw, W, m_sh, m_sw, M_FLAT_HW), mask=hw_ok, other=0.0).to(ACC)
            abs_m += tl.abs(m)
            g_dot_m += g_raw * m
        abs_sum = tl.sum(abs_m, axis=0)
        eps = _eps(eps_hi, eps_lo, ACC)
        inv_norm = 1.0 / tl.maximum(abs_sum, eps)
        # sum_hw(G M) / S with G = G_raw / S; zero where the clamp holds S at eps.
        clamp_term = tl.where(abs_sum > eps, tl.sum(g_dot_m, axis=0) * inv_norm * inv_norm, 0.0)

        # Pass 2: dM = G - sign(M) * clamp_term.
        tl.debug_barrier()  # G_raw is read back by other threads than wrote it
        for start in range(0, HW, BLOCK_HW):
            hw = start + tl.arange(0, BLOCK_HW)
            hw_ok = hw < HW
            g_raw = tl.load(g_raw_row + hw, mask=hw_ok, other=0.0)
            m = tl.load(m_row + _spatial_offsets(hw, W, m_sh, m_sw, M_FLAT_HW), mask=hw_ok, other=0.0).to(ACC)
            sign = tl.where(m > 0, 1.0, 0.0) - tl.where(m < 0, 1.0, 0.0)
            d_m = g_raw * inv_norm - sign * clamp_term
            tl.store(
                dm_row + _spatial_offsets(hw, W, dm_sh, dm_sw, DM_FLAT_HW),
                d_m.to(GRAD_M.dtype.element_ty), mask=hw_ok,
            )

    # Shared memory grows with the padded part count: the backward stages [P_PAD, BLOCK_C]
    # gradient tiles, the forward [P_PAD, BLOCK_HW] mask tiles. So the host-chosen tile halves
    # each time P_PAD (and, in the backward, the accumulator width) doubles past the PAN shape's;
    # with the last, smallest autotuning config every P up to 256 (float64: 128) then fits the
    # 64 KiB a CTA gets on sm_75 (tools/triton_compile.py shows the footprints). One rule
    # for every GPU, so that the sums run in the same order everywhere. The price: more channel
    # tiles, more G partials; they stay within dF's size up to P = 32.
    def _forward_block_hw(hw: int, p_pad: int) -> int:
        largest = max(16, min(MAX_BLOCK_HW, MAX_BLOCK_HW * 32 // p_pad))
        return min(max(_next_pow2(hw), 16), largest)

    def _backward_block_c(p_pad: int, dtype: torch.dtype) -> int:
        accumulator_bytes = torch.finfo(_accumulator_dtype(dtype)).bits // 8
        return max(16, min(BACKWARD_BLOCK_C, BACKWARD_BLOCK_C * 16 * 4 // (p_pad * accumulator_bytes)))

    def _padded_parts(parts: int) -> int:
        return max(16, _next_pow2(parts))  # tl.dot wants every dimension >= 16

    def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
        return torch.float64 if dtype == torch.float64 else torch.float32

    def forward(features: torch.Tensor, masks: torch.Tensor, eps: float) -> torch.Tensor:
        """The op's forward on checked inputs: [B,C,H,W] x [B,P,H,W] -> [B,P,C]."""
        B, C, H, W = features.shape
        P = masks.shape[1]
        if B * P * C == 0 or H * W == 0:  # nothing to launch; an empty sum pools to 0
            return features.new_zeros((B, P, C))
        out = features.new_empty((B, P, C))
        p_pad = _padded_parts(P)
        f_sh, f_sw, f_flat = _spatial_strides(features)
        m_sh, m_sw, m_flat = _spatial_strides(masks)

        def grid(meta):
            return (triton.cdiv(C, meta["BLOCK_C"]), B)

        _launcher(_forward_kernel)[grid](
            features, masks, out,
            C, P, H * W, W, *_split_eps(eps),
            features.stride(0), features.stride(1), f_sh, f_sw,
            masks.stride(0), masks.stride(1), m_sh, m_sw,
            F_FLAT_HW=f_flat, M_FLAT_HW=m_flat,
            P_PAD=p_pad, BLOCK_HW=_forward_block_hw(H * W, p_pad),
            PRECISION=_dot_precision(features.dtype), UPCAST=INTERPRET,
        )  # fmt: skip
        return out

    def backward(
        grad: torch.Tensor, features: torch.Tensor, masks: torch.Tensor, eps: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The op's fused backward on checked inputs: (dL/dout, F, M) -> (dL/dF, dL/dM)."""
        B, C, H, W = features.shape
        P = masks.shape[1]
        if features.numel() == 0 or masks.numel() == 0:  # nothing to launch; all gradients are 0
            return torch.zeros_like(features), torch.zeros_like(masks)
        grad_features = torch.empty_like(features)
        grad_masks = torch.empty_like(masks)

        HW = H * W
        p_pad = _padded_parts(P)
        block_c = _backward_block_c(p_pad, features.dtype)
        num_tiles = triton.cdiv(C, block_c)
        accumulator = _accumulator_dtype(features.dtype)
        partials = features.new_empty((B, num_tiles, P, HW), dtype=accumulator)
        g_raw = features.new_empty((B, P, HW), dtype=accumulator)
        eps_hi, eps_lo = _split_eps(eps)
        f_sh, f_sw, f_flat = _spatial_strides(features)
        m_sh, m_sw, m_flat = _spatial_strides(masks)
        df_sh, df_sw, df_flat = _spatial_strides(grad_features)
        dm_sh, dm_sw, dm_flat = _spatial_strides(grad_masks)

        _launcher(_backward_features_kernel)[(num_tiles, B)](
            grad, features, masks, grad_features, partials,
            C, P, HW, W, eps_hi, eps_lo,
            grad.stride(0), grad.stride(1), grad.stride(2),
            features.stride(0), features.stride(1), f_sh, f_sw,
            masks.stride(0), masks.stride(1), m_sh, m_sw,
            grad_features.stride(0), grad_features.stride(1), df_sh, df_sw,
            F_FLAT_HW=f_flat, M_FLAT_HW=m_flat, DF_FLAT_HW=df_flat,
            P_PAD=p_pad, BLOCK_C=block_c,
            PRECISION=_dot_precision(features.dtype), UPCAST=INTERPRET,
        )  # fmt: skip

        tile_block = min(_next_pow2(num_tiles), 32)
        _launcher(_backward_masks_kernel)[(P, B)](
            masks, partials, g_raw, grad_masks,
            P, HW, W, num_tiles, eps_hi, eps_lo,
            masks.stride(0), masks.stride(1), m_sh, m_sw,
            grad_masks.stride(0), grad_masks.stride(1), dm_sh, dm_sw,
            M_FLAT_HW=m_flat, DM_FLAT_HW=dm_flat,
            TILE_BLOCK=tile_block, BLOCK_HW=min(_next_pow2(HW), REDUCE_BLOCK_ELEMENTS // tile_block),
            num_warps=4,
        )  # fmt: skip
        return grad_features, grad_masks
