// Fused CUDA kernels of pan_ops::weighted_pool and its private backward; which of them run, and
// on what grid, is planned in weighted_pool_launch.cuh.
//
//   S[b,p]   = max(sum_hw |M[b,p,hw]|, eps)
//   f[b,p,c] = sum_hw F[b,c,hw] M[b,p,hw] / S[b,p]
//
// The op is memory bound: it reads F once and does 2P flops per element of F, so
// every kernel streams F exactly once with coalesced (16-byte where possible) loads
// and keeps its P-wide products in registers, accumulating in float (double for
// double). F is read in place when it is NCHW (hw contiguous) or channels_last
// (c contiguous); other strides are made dense first. No float atomics anywhere:
// every sum has a fixed order, so results are bitwise reproducible.
//
// Parts run in register tiers of PMAX = 8, 16 or 32 parts (double: 8); more parts run in
// chunks of PMAX. Each sample's channels are cut into tiles, and the tiles of a sample
// are shared out over about one wave of CTAs (split_tiles), so a CTA streams several
// tiles after one prologue, with the loads of the next step always in flight.
//
// Forward, pool_forward_kernel: a CTA per (sample, run of channel tiles, part chunk).
//   It sums |M| per part once (S = max(sum|M|, eps)), stages M[b] in shared memory as
//   accumulator type (in tiles of positions when HW is large) and streams F. A lane owns
//   K channels and a quarter of HW (V = 4 positions out of every 16; 8 of 32 in the
//   16-part tier): per step (forward_step) it loads a K x V tile of F and does K*V*PMAX
//   FMAs against V-wide shared reads of M; at the end of a channel tile (store_pooled)
//   the 4 lanes of a quad sum their products with a reduce-scatter and each stores
//   PMAX/4 parts.
//
// Backward, without the forward output:
//   G[p,hw] = sum_c g[p,c] F[c,hw] / S[p],   dF[c,hw] = sum_p g[p,c] M[p,hw] / S[p],
//   dM[p,hw] = G[p,hw] - sign(M[p,hw]) * (sum_hw' G M)[p] / S[p]  (only where sum|M| > eps).
//   1. pool_backward_features_kernel: a CTA per (sample, run of channel tiles). A thread
//      owns V positions, with M/S there in registers (begin_pass), and walks its share of
//      each tile's channels U at a time (backward_step) against g of the tile in shared
//      memory: it reads F once, writes dF once and accumulates sum_c g F over its channels.
//      A fixed tree over the thread groups (sum_over_groups) leaves one partial per CTA in
//      an accumulator-type workspace [B, CTAs per sample, P, HW] (store_cta_partials).
//      Part chunks after the first add into dF (kept in float for half types until the
//      last chunk, so that dF is rounded once).
//   2. pool_backward_masks_kernel: a CTA per (sample, part) sums the partials in order
//      into G and forms dM.
//
// Two programs compile these kernels, through weighted_pool_launch.cuh: the CUDA build
// (weighted_pool_cuda.cu) and a CPU emulation of CUDA's execution model that the tests run
// where there is no GPU (tests/cuda_emulation). So this file needs nothing declared before it
// but what CUDA itself provides (dim3, threadIdx, blockIdx, __syncthreads, __shfl_xor_sync,
// __global__ and the other qualifiers, fabs, min), which the emulation supplies in its own section.
#pragma once

#include <ATen/OpMathType.h>

#include <cstdint>
#include <type_traits>

namespace pan_ops {
namespace {

constexpr int kThreads = 256;  // threads per CTA of the forward and backward-features kernels
constexpr int kWarps = kThreads / 32;
constexpr int kMaskThreads = 128;  // threads per CTA of the backward-masks kernel
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaskTileBytes = 32 * 1024;  // shared memory for the forward's M tile

// Which dimension of one sample of F is contiguous: hw (NCHW) or c (channels_last).
enum class Layout { kChannelsFirst, kChannelsLast };

template <typename T>
using acc_t = at::opmath_type<T>;  // float for half types and float, double for double

// CTAs per SM that __launch_bounds__ sizes the registers for: fewer where a thread
// holds more accumulators, so that they stay in registers.
template <typename T>
constexpr int kForwardBlocksPerSm = std::is_same<T, double>::value ? 1 : 2;
template <typename T, int PMAX>
constexpr int kBackwardBlocksPerSm = std::is_same<T, double>::value || PMAX >= 32 ? 1 : 2;

// N elements of T moved by one memory instruction (by 16-byte pieces when wider).
template <typename T, int N>
struct alignas(sizeof(T) * N < 16 ? sizeof(T) * N : 16) Pack {
  T v[N];
};

// ---------------------------------------------------------------------------
// Device helpers
// ---------------------------------------------------------------------------

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;  // the same bits in every lane: each step adds the same two values
}

// S = max(sum|M|, eps) from sum|M|, which the kernels keep unclamped so that the backward can
// tell clamped parts.
template <typename A>
__device__ __forceinline__ A clamped_norm(A abs_sum, A eps) {
  return abs_sum < eps ? eps : abs_sum;  // NaN propagates as in clamp_min
}

// abs_sums[p] = sum_hw |m[p*HW + hw]| for p < parts, 0 for parts <= p < PMAX; one warp per
// part, fixed order. The caller synchronises before reading abs_sums.
template <int PMAX, typename T, typename A>
__device__ void part_abs_sums(const T* __restrict__ m, int parts, int64_t HW, A* abs_sums) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int p = warp; p < PMAX; p += kWarps) {
    A sum = 0;
    if (p < parts) {
      for (int64_t hw = lane; hw < HW; hw += 32) sum += fabs(static_cast<A>(m[p * HW + hw]));
    }
    sum = warp_sum(sum);
    if (lane == 0) abs_sums[p] = sum;
  }
}

// Where one pack of a tile lies in a sample of F: its offset, whether its row (a channel
// when channels-first, a position when channels-last) exists, and how many of its elements do.
struct PackSpan {
  int64_t offset;
  bool row_exists;
  int64_t room;
};

// One thread's NC x NH tile of F (channels x positions) as it moves to or from memory:
// packs along the contiguous side, so half types take half the registers of floats.
template <Layout L, int NC, int NH, typename T>
struct RawTile {
  static constexpr bool kFirst = L == Layout::kChannelsFirst;
  static constexpr int kPacks = kFirst ? NC : NH;  // one per channel, or one per position
  static constexpr int kPack = kFirst ? NH : NC;   // elements per pack
  Pack<T, kPack> packs[kPacks];

  // Pack o of the tile whose first element is X[c0, hw0], its channels c_step apart.
  static __device__ __forceinline__ PackSpan span(int o, int64_t C, int64_t HW, int64_t c0, int c_step, int64_t hw0,
                                                  int64_t hw_end) {
    if constexpr (kFirst) {
      const int64_t c = c0 + int64_t(o) * c_step;
      return {c * HW + hw0, c < C, hw_end - hw0};
    } else {
      const int64_t hw = hw0 + o;
      return {hw * C + c0, hw < hw_end, C - c0};
    }
  }

  __device__ __forceinline__ T& at(int i, int j) {
    if constexpr (kFirst) return packs[i].v[j];
    else return packs[j].v[i];
  }
  __device__ __forceinline__ const T& at(int i, int j) const {
    if constexpr (kFirst) return packs[i].v[j];
    else return packs[j].v[i];
  }
  template <typename A>
  __device__ __forceinline__ A value(int i, int j) const {
    return static_cast<A>(at(i, j));
  }
  // The whole tile in the accumulator type, out[channel][position]: a step's operand in registers.
  template <typename A>
  __device__ __forceinline__ void values(A (&out)[NC][NH]) const {
#pragma unroll
    for (int i = 0; i < NC; ++i)
#pragma unroll
      for (int j = 0; j < NH; ++j) out[i][j] = value<A>(i, j);
  }
};

// Reads the tile X[c0 + i*c_step, hw0 + j] of one sample of F (X is [C, HW] channels-first
// or [HW, C] channels-last); elements with c >= C or hw >= hw_end read as 0. kVector: each
// pack is one aligned load (c_step is 1 for channels-last), the host having checked the
// alignment and that HW or C is a multiple of the pack, so one bound check covers a pack.
template <Layout L, bool kVector, int NC, int NH, typename T>
__device__ __forceinline__ void load_tile(const T* __restrict__ x, int64_t C, int64_t HW, int64_t c0, int c_step,
                                          int64_t hw0, int64_t hw_end, RawTile<L, NC, NH, T>& tile) {
  using Tile = RawTile<L, NC, NH, T>;
  const T zero = static_cast<T>(0.0f);
#pragma unroll
  for (int o = 0; o < Tile::kPacks; ++o) {
    const PackSpan span = Tile::span(o, C, HW, c0, c_step, hw0, hw_end);
    if constexpr (kVector) {
      if (span.row_exists && span.room > 0) {
        tile.packs[o] = *reinterpret_cast<const Pack<T, Tile::kPack>*>(x + span.offset);
      } else {
#pragma unroll
        for (int k = 0; k < Tile::kPack; ++k) tile.packs[o].v[k] = zero;
      }
    } else {
#pragma unroll
      for (int k = 0; k < Tile::kPack; ++k) {
        tile.packs[o].v[k] = span.row_exists && k < span.room ? x[span.offset + k] : zero;
      }
    }
  }
}

// The inverse of load_tile for a tile of consecutive channels (c_step 1) and bound HW:
// writes values[i][j] to Y[c0 + i, hw0 + j], adding the value already there when accumulate.
template <Layout L, bool kVector, int NC, int NH, typename T, typename A>
__device__ __forceinline__ void store_tile(T* __restrict__ y, int64_t C, int64_t HW, int64_t c0, int64_t hw0,
                                           const A (&values)[NC][NH], bool accumulate) {
  using Tile = RawTile<L, NC, NH, T>;
  Tile tile;
  if (accumulate) load_tile<L, kVector>(y, C, HW, c0, 1, hw0, HW, tile);
#pragma unroll
  for (int i = 0; i < NC; ++i)
#pragma unroll
    for (int j = 0; j < NH; ++j)
      tile.at(i, j) = static_cast<T>(accumulate ? tile.template value<A>(i, j) + values[i][j] : values[i][j]);
#pragma unroll
  for (int o = 0; o < Tile::kPacks; ++o) {
    const PackSpan span = Tile::span(o, C, HW, c0, 1, hw0, HW);
    if constexpr (kVector) {
      if (span.row_exists && span.room > 0) *reinterpret_cast<Pack<T, Tile::kPack>*>(y + span.offset) = tile.packs[o];
    } else {
#pragma unroll
      for (int k = 0; k < Tile::kPack; ++k) {
        if (span.row_exists && k < span.room) y[span.offset + k] = tile.packs[o].v[k];
      }
    }
  }
}

// One step of a reduce-scatter between lanes differing in lane_bit: each lane keeps one
// half of the parts (the upper half when `upper`) summed over the pair, in acc[i][0, HALF).
template <int HALF, int K, int PMAX, typename A>
__device__ __forceinline__ void exchange_halves(A (&acc)[K][PMAX], int lane_bit, bool upper) {
#pragma unroll
  for (int i = 0; i < K; ++i)
#pragma unroll
    for (int j = 0; j < HALF; ++j) {
      const A lo = acc[i][j], hi = acc[i][j + HALF];
      const A keep = upper ? hi : lo, send = upper ? lo : hi;
      acc[i][j] = keep + __shfl_xor_sync(kFullMask, send, lane_bit);
    }
}

// acc = 0.
template <int R, int S, typename A>
__device__ __forceinline__ void set_zero(A (&acc)[R][S]) {
#pragma unroll
  for (int i = 0; i < R; ++i)
#pragma unroll
    for (int j = 0; j < S; ++j) acc[i][j] = 0;
}

// The work of one CTA of the forward or backward-features grid: channel tiles
// [tile_begin, tile_begin + tiles) of sample b, its slice-th run of tiles.
struct CtaTiles {
  int64_t b, slice, tile_begin, tiles;
};

__device__ __forceinline__ CtaTiles cta_tiles(int64_t channel_tiles, int64_t tiles_per_cta, int64_t ctas_per_sample) {
  const int64_t b = blockIdx.x / ctas_per_sample;
  const int64_t slice = blockIdx.x % ctas_per_sample;
  const int64_t tile_begin = slice * tiles_per_cta;
  const int64_t tiles = tiles_per_cta < channel_tiles - tile_begin ? tiles_per_cta : channel_tiles - tile_begin;
  return {b, slice, tile_begin, tiles};
}

// ---------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------

template <int PMAX>
struct ForwardTile {
  static constexpr int kChannels = 32 / PMAX;                 // K channels per lane: 32 accumulators
  static constexpr int kPositions = PMAX == 16 ? 8 : 4;      // hw per lane and step
  static constexpr int kCtaChannels = kWarps * 8 * kChannels;  // 8 quads per warp
};

// Fills mask_tile[p][h] (row stride kHwTile) with M[p, start + h] for the positions of the
// tile starting at `start`, as accumulator type, and zeros up to a whole step past its end
// and for missing parts. The caller synchronises.
template <int PMAX, int kHwTile, int kStep, typename T, typename A>
__device__ void fill_mask_tile(const T* __restrict__ m, int parts, int64_t HW, int64_t start, A* mask_tile) {
  const int len = HW - start < kHwTile ? static_cast<int>(HW - start) : kHwTile;
  const int padded = (len + kStep - 1) / kStep * kStep;
  for (int idx = threadIdx.x; idx < PMAX * padded; idx += kThreads) {
    const int p = idx / padded, h = idx - p * padded;
    mask_tile[p * kHwTile + h] = (p < parts && h < len) ? static_cast<A>(m[p * HW + start + h]) : A(0);
  }
}

// Forward step: acc[i][p] += sum_j F[i][j] M[p][j] for the lane's K x V tile of F, with
// mask_row (part 0's row of the mask tile at the lane's positions) read V-wide per part.
template <int kHwTile, int V, typename Raw, int K, int PMAX, typename A>
__device__ __forceinline__ void forward_step(const Raw& x, const A* mask_row, A (&acc)[K][PMAX]) {
  A fv[K][V];
  x.values(fv);
#pragma unroll
  for (int p = 0; p < PMAX; ++p) {
    const Pack<A, V> mv = *reinterpret_cast<const Pack<A, V>*>(mask_row + p * kHwTile);
#pragma unroll
    for (int i = 0; i < K; ++i)
#pragma unroll
      for (int j = 0; j < V; ++j) acc[i][p] += fv[i][j] * mv.v[j];
  }
}

// Pooled output of a channel tile: the quad's sums of acc, divided by S, into out_rows[part * C + c]
// for the PMAX/4 parts lane q keeps; the lane's channels are c_first, c_first + c_step, ...
template <int PMAX, int K, typename T, typename A>
__device__ __forceinline__ void store_pooled(A (&acc)[K][PMAX], int q, const A* abs_sums, A eps, int parts,
                                             T* out_rows, int64_t C, int64_t c_first, int c_step) {
  // Reduce-scatter over the quad; afterwards lane q holds parts q*PMAX/4 + j in acc[i][j], j < PMAX/4.
  exchange_halves<PMAX / 2>(acc, 2, (q & 2) != 0);
  exchange_halves<PMAX / 4>(acc, 1, (q & 1) != 0);
#pragma unroll
  for (int j = 0; j < PMAX / 4; ++j) {
    const int part = q * (PMAX / 4) + j;
    if (part < parts) {
      const A norm = clamped_norm(abs_sums[part], eps);
      T* row = out_rows + part * C;
#pragma unroll
      for (int i = 0; i < K; ++i) {
        const int64_t c = c_first + int64_t(i) * c_step;
        if (c < C) row[c] = static_cast<T>(acc[i][j] / norm);
      }
    }
  }
}

template <typename T, int PMAX, Layout L, bool kVector>
__global__ void __launch_bounds__(kThreads, kForwardBlocksPerSm<T>)
pool_forward_kernel(const T* __restrict__ features, const T* __restrict__ masks, T* __restrict__ out,
                    int64_t C, int64_t HW, int P, int64_t channel_tiles, int64_t tiles_per_cta,
                    int64_t ctas_per_sample, acc_t<T> eps) {
  using A = acc_t<T>;
  using Tile = ForwardTile<PMAX>;
  constexpr int K = Tile::kChannels, V = Tile::kPositions, kCta = Tile::kCtaChannels;
  constexpr int kStep = 4 * V;  // positions covered by a quad per step
  constexpr int kHwTile = kMaskTileBytes / (PMAX * int(sizeof(A)));
  static_assert(kHwTile % kStep == 0 && PMAX % 4 == 0, "tile sizes");
  __shared__ __align__(16) A mask_tile[PMAX * kHwTile];
  __shared__ A abs_sums[PMAX];

  // This CTA: parts [p0, p0 + parts) of its channel tiles.
  const CtaTiles cta = cta_tiles(channel_tiles, tiles_per_cta, ctas_per_sample);
  const int p0 = blockIdx.y * PMAX;
  const int parts = min(PMAX, P - p0);
  const T* f = features + cta.b * C * HW;
  const T* m = masks + (cta.b * P + p0) * HW;
  T* out_rows = out + (cta.b * P + p0) * C;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int quad = lane / 4, q = lane % 4;
  // Channels-first: lane channels are 8 apart (a quad reads 64 B of each row; stores coalesce
  // over quads). Channels-last: K consecutive channels, one pack per position.
  constexpr bool kFirst = L == Layout::kChannelsFirst;
  constexpr int c_step = kFirst ? 8 : 1;
  const int lane_channel = warp * 8 * K + (kFirst ? quad : quad * K);
  // The CTA walks (tile, step) units in order; the loads of the next unit are issued
  // before the FMAs of the current one, the first ones before the prologue.
  const int64_t steps = (HW + kStep - 1) / kStep;
  using Raw = RawTile<L, K, V, T>;
  auto load_unit = [&](int64_t tile, int64_t step, Raw& x) {
    load_tile<L, kVector>(f, C, HW, (cta.tile_begin + tile) * kCta + lane_channel, c_step, step * kStep + q * V, HW,
                          x);
  };
  Raw cur;
  load_unit(0, 0, cur);

  part_abs_sums<PMAX>(m, parts, HW, abs_sums);
  const bool one_mask_tile = HW <= kHwTile;
  if (one_mask_tile) fill_mask_tile<PMAX, kHwTile, kStep>(m, parts, HW, 0, mask_tile);
  __syncthreads();

  A acc[K][PMAX];
  set_zero(acc);
  int64_t tile = 0, step = 0;
  for (;;) {
    const int64_t hw_base = step * kStep;
    if (!one_mask_tile && hw_base % kHwTile == 0) {
      __syncthreads();  // done with the previous mask tile
      fill_mask_tile<PMAX, kHwTile, kStep>(m, parts, HW, hw_base, mask_tile);
      __syncthreads();
    }
    const bool last_step = step + 1 == steps;
    const int64_t next_tile = last_step ? tile + 1 : tile;
    const int64_t next_step = last_step ? 0 : step + 1;
    Raw next;
    if (next_tile < cta.tiles) load_unit(next_tile, next_step, next);

    forward_step<kHwTile, V>(cur, mask_tile + static_cast<int>(hw_base % kHwTile) + q * V, acc);
    if (last_step) {
      store_pooled(acc, q, abs_sums, eps, parts, out_rows, C, (cta.tile_begin + tile) * kCta + lane_channel, c_step);
      set_zero(acc);
    }
    if (next_tile == cta.tiles) break;
    cur = next;
    tile = next_tile;
    step = next_step;
  }
}

// ---------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------

template <typename T, int PMAX, Layout L>
struct BackwardTile {
  using A = acc_t<T>;
  static constexpr bool kFirst = L == Layout::kChannelsFirst;
  // U channels x V positions per thread step: one pack along the contiguous side.
  static constexpr int kChannels = kFirst ? 1 : (sizeof(T) == 8 ? 2 : 4);
  // V positions: their M/S and G accumulators (2 PMAX V values) live in registers.
  static constexpr int kPositions = kFirst && PMAX <= 8 ? 2 : 1;
  // Shared memory, under 48 KB: M/S of a pass is staged as [PMAX][kThreads * V], a buffer that
  // then holds the G values of every thread (padded); g of a channel tile as [kCtaChannels][PMAX].
  static constexpr int kStageValues = kThreads * (PMAX * kPositions + 1);
  static constexpr int kGradTileBytes = kStageValues * int(sizeof(A)) + 16384 <= 47 * 1024 ? 16384 : 8192;
  static constexpr int kCtaChannels = kGradTileBytes / (PMAX * int(sizeof(A)));
};

// Fills grad_tile[cl][p] with g[b, p0 + p, c_base + cl] (zero outside the parts and C).
template <int PMAX, int kCta, typename T, typename A>
__device__ void fill_grad_tile(const T* __restrict__ g, int parts, int64_t C, int64_t c_base, A* grad_tile) {
  for (int idx = threadIdx.x; idx < PMAX * kCta; idx += kThreads) {
    const int p = idx / kCta, cl = idx - p * kCta;
    const int64_t c = c_base + cl;
    grad_tile[cl * PMAX + p] = (p < parts && c < C) ? static_cast<A>(g[p * C + c]) : A(0);
  }
}

// Stages M/S of a pass as stage[p][pos] (row stride kRow) for its pass_positions positions
// from pass_start, zero outside the parts and HW. The caller synchronises.
template <int PMAX, int kRow, typename T, typename A>
__device__ void stage_scaled_masks(const T* __restrict__ m, int parts, int64_t HW, int64_t pass_start,
                                   int pass_positions, const A* abs_sums, A eps, A* stage) {
  for (int idx = threadIdx.x; idx < PMAX * pass_positions; idx += kThreads) {
    const int p = idx / pass_positions, pos = idx - p * pass_positions;
    const int64_t hw = pass_start + pos;
    stage[p * kRow + pos] =
        (p < parts && hw < HW) ? static_cast<A>(m[p * HW + hw]) / clamped_norm(abs_sums[p], eps) : A(0);
  }
}

// A thread of the backward-features kernel: position lane h of a pass (hw_lanes of them) in
// channel group `group` of `groups`, each group whole warps.
struct GroupLane {
  int hw_lanes, groups, group, h;

  __device__ __forceinline__ explicit GroupLane(int lanes)
      : hw_lanes(lanes), groups(kThreads / lanes), group(threadIdx.x / lanes), h(threadIdx.x % lanes) {}
};

// Start of a pass: the thread's M/S at its V positions, out of the stage, and G sums of zero.
template <int kRow, int PMAX, int V, typename A>
__device__ __forceinline__ void begin_pass(const A* stage, int h, A (&mv)[PMAX][V], A (&g_acc)[PMAX][V]) {
#pragma unroll
  for (int p = 0; p < PMAX; ++p) {
    const Pack<A, V> row = *reinterpret_cast<const Pack<A, V>*>(&stage[p * kRow + h * V]);
#pragma unroll
    for (int v = 0; v < V; ++v) {
      mv[p][v] = row.v[v];
      g_acc[p][v] = 0;
    }
  }
}

// Backward step over U channels at the thread's V positions: d[u] = sum_p g[u][p] M/S[p] (its dF
// values) and g_acc[p] += g[u][p] F[u] (its G sums); gs = g of the step's channels, [U][PMAX].
template <typename Raw, int PMAX, int U, int V, typename A>
__device__ __forceinline__ void backward_step(const Raw& x, const A* gs, const A (&mv)[PMAX][V], A (&g_acc)[PMAX][V],
                                              A (&d)[U][V]) {
  A xv[U][V];
  x.values(xv);
#pragma unroll
  for (int u = 0; u < U; ++u) {
#pragma unroll
    for (int v = 0; v < V; ++v) d[u][v] = 0;
    const A* gs_channel = gs + u * PMAX;  // the same address in a warp: broadcast
#pragma unroll
    for (int p4 = 0; p4 < PMAX; p4 += 4) {
      const Pack<A, 4> g4 = *reinterpret_cast<const Pack<A, 4>*>(gs_channel + p4);
#pragma unroll
      for (int pp = 0; pp < 4; ++pp)
#pragma unroll
        for (int v = 0; v < V; ++v) {
          g_acc[p4 + pp][v] += g4.v[pp] * xv[u][v];
          d[u][v] += g4.v[pp] * mv[p4 + pp][v];
        }
    }
  }
}

// slot[p * V + v] = g_acc[p][v]: one thread's G sums in the stage.
template <int PMAX, int V, typename A>
__device__ __forceinline__ void put_slot(const A (&g_acc)[PMAX][V], A* slot) {
#pragma unroll
  for (int p = 0; p < PMAX; ++p)
#pragma unroll
    for (int v = 0; v < V; ++v) slot[p * V + v] = g_acc[p][v];
}

// Sum over the channel groups, a fixed-order tree through the stage: each round the upper half
// of the groups left adds into the lower half; group 0 ends with the CTA's sums.
template <int kSlot, int PMAX, int V, typename A>
__device__ __forceinline__ void sum_over_groups(A (&g_acc)[PMAX][V], A* stage, const GroupLane& thread) {
  for (int half = thread.groups / 2; half >= 1; half /= 2) {
    __syncthreads();  // the stage is free
    if (thread.group >= half && thread.group < 2 * half) {
      put_slot(g_acc, &stage[((thread.group - half) * thread.hw_lanes + thread.h) * kSlot]);
    }
    __syncthreads();
    if (thread.group < half) {
      const A* slot = &stage[(thread.group * thread.hw_lanes + thread.h) * kSlot];
#pragma unroll
      for (int p = 0; p < PMAX; ++p)
#pragma unroll
        for (int v = 0; v < V; ++v) g_acc[p][v] += slot[p * V + v];
    }
  }
}

// Group 0's sums of a pass into the CTA's partial of G, out through the stage so that the
// global writes are a flat coalesced loop.
template <int kSlot, int PMAX, int V, typename A>
__device__ __forceinline__ void store_cta_partials(const A (&g_acc)[PMAX][V], A* stage, const GroupLane& thread,
                                                   int parts, int64_t pass_start, int pass_positions, int64_t HW,
                                                   A* cta_partials) {
  __syncthreads();
  if (thread.group == 0) put_slot(g_acc, &stage[thread.h * kSlot]);
  __syncthreads();
  for (int idx = threadIdx.x; idx < parts * pass_positions; idx += kThreads) {
    const int p = idx / pass_positions, pos = idx - p * pass_positions;
    const int64_t hw = pass_start + pos;
    if (hw < HW) cta_partials[p * HW + hw] = stage[(pos / V) * kSlot + p * V + pos % V];
  }
}

// D: the type dF is written in; T, or the accumulator type where several part chunks add
// into dF (half types: one rounding at the end instead of one per chunk).
template <typename T, int PMAX, Layout L, bool kVector, typename D>
__global__ void __launch_bounds__(kThreads, kBackwardBlocksPerSm<T, PMAX>)
pool_backward_features_kernel(const T* __restrict__ grad, const T* __restrict__ features,
                              const T* __restrict__ masks, D* __restrict__ grad_features,
                              acc_t<T>* __restrict__ g_partials, acc_t<T>* __restrict__ abs_sums_out,
                              int64_t C, int64_t HW, int P, int p0, int64_t channel_tiles, int64_t tiles_per_cta,
                              int64_t ctas_per_sample, int hw_lanes, bool accumulate, acc_t<T> eps) {
  using A = acc_t<T>;
  using Tile = BackwardTile<T, PMAX, L>;
  constexpr int U = Tile::kChannels, V = Tile::kPositions, kCta = Tile::kCtaChannels;
  constexpr int kSteps = kCta / U;  // channel steps per tile
  constexpr int kRow = kThreads * V;      // stage row: positions of the widest pass
  constexpr int kSlot = PMAX * V + 1;     // G values of one thread in the stage, padded
  // Steps whose loads are issued together, double buffered: 32 bytes of accumulator values
  // per buffer (16 on the scalar path, whose per-element addresses take registers too).
  constexpr int kUnrollWanted = (kVector ? 32 : 16) / (U * V * int(sizeof(A)));
  constexpr int kUnroll = kUnrollWanted < 1 ? 1 : (kUnrollWanted > 8 ? 8 : kUnrollWanted);
  static_assert(kSteps % (kThreads / 32 * kUnroll) == 0, "whole batches for every group count");
  __shared__ __align__(16) A grad_tile[kCta * PMAX];       // g[c][p] of the current tile
  __shared__ __align__(16) A stage[Tile::kStageValues];    // M/S of the pass, then G partials
  __shared__ A abs_sums[PMAX];

  // This CTA: parts [p0, p0 + parts) of its channel tiles.
  const CtaTiles cta = cta_tiles(channel_tiles, tiles_per_cta, ctas_per_sample);
  const int parts = min(PMAX, P - p0);
  const T* f = features + cta.b * C * HW;
  D* df = grad_features + cta.b * C * HW;
  const T* m = masks + (cta.b * P + p0) * HW;
  const T* g = grad + (cta.b * P + p0) * C;

  // Channel group j takes the steps j, j + groups, ... of every tile, kUnroll at a time.
  const GroupLane thread(hw_lanes);
  const int batches = kSteps / (thread.groups * kUnroll);  // per tile
  using Raw = RawTile<L, U, V, T>;
  auto load_batch = [&](int64_t tile, int batch, int64_t hw0, Raw(&x)[kUnroll]) {
#pragma unroll
    for (int k = 0; k < kUnroll; ++k) {
      const int s = thread.group + (batch * kUnroll + k) * thread.groups;
      load_tile<L, kVector>(f, C, HW, (cta.tile_begin + tile) * kCta + s * U, 1, hw0, HW, x[k]);
    }
  };

  Raw x[kUnroll];
  const int pass_positions = hw_lanes * V;
  if (int64_t(thread.h) * V < HW) load_batch(0, 0, int64_t(thread.h) * V, x);  // in flight during the prologue

  part_abs_sums<PMAX>(m, parts, HW, abs_sums);
  __syncthreads();
  if (cta.slice == 0 && threadIdx.x < parts) abs_sums_out[cta.b * P + p0 + threadIdx.x] = abs_sums[threadIdx.x];

  A* cta_partials = g_partials + ((cta.b * ctas_per_sample + cta.slice) * P + p0) * HW;
  for (int64_t pass_start = 0; pass_start < HW; pass_start += pass_positions) {
    const int64_t hw0 = pass_start + int64_t(thread.h) * V;
    const bool active = hw0 < HW;
    // Stage M/S of the pass (dF = sum_p g M/S needs no division of g) and g of the first tile.
    __syncthreads();  // the stage and grad tile are free
    stage_scaled_masks<PMAX, kRow>(m, parts, HW, pass_start, pass_positions, abs_sums, eps, stage);
    fill_grad_tile<PMAX, kCta>(g, parts, C, cta.tile_begin * kCta, grad_tile);
    __syncthreads();
    if (pass_start > 0 && active) load_batch(0, 0, hw0, x);
    A mv[PMAX][V], g_acc[PMAX][V];
    begin_pass<kRow>(stage, thread.h, mv, g_acc);

#pragma unroll 1
    for (int64_t tile = 0; tile < cta.tiles; ++tile) {
#pragma unroll 1
      for (int batch = 0; batch < batches; ++batch) {
        const bool last_batch = batch + 1 == batches;
        const bool has_next = !(last_batch && tile + 1 == cta.tiles);
        Raw x_next[kUnroll];
        if (active && has_next) load_batch(last_batch ? tile + 1 : tile, last_batch ? 0 : batch + 1, hw0, x_next);
        if (active) {
#pragma unroll
          for (int k = 0; k < kUnroll; ++k) {
            const int s = thread.group + (batch * kUnroll + k) * thread.groups;
            A d[U][V];
            backward_step(x[k], &grad_tile[s * U * PMAX], mv, g_acc, d);
            store_tile<L, kVector>(df, C, HW, (cta.tile_begin + tile) * kCta + s * U, hw0, d, accumulate);
          }
          if (has_next) {
#pragma unroll
            for (int k = 0; k < kUnroll; ++k) x[k] = x_next[k];
          }
        }
      }
      if (tile + 1 < cta.tiles) {
        __syncthreads();  // every group is done with this tile's g
        fill_grad_tile<PMAX, kCta>(g, parts, C, (cta.tile_begin + tile + 1) * kCta, grad_tile);
        __syncthreads();
      }
    }

    sum_over_groups<kSlot>(g_acc, stage, thread);
    store_cta_partials<kSlot>(g_acc, stage, thread, parts, pass_start, pass_positions, HW, cta_partials);
  }
}

// One CTA per (sample, part): G = (sum of the CTA partials of sum_c g F, in order) / S, then dM.
template <typename T>
__global__ void __launch_bounds__(kMaskThreads)
pool_backward_masks_kernel(const T* __restrict__ masks, const acc_t<T>* __restrict__ abs_sums,
                           acc_t<T>* __restrict__ g_partials, T* __restrict__ grad_masks, int64_t HW, int P,
                           int64_t ctas_per_sample, acc_t<T> eps) {
  using A = acc_t<T>;
  constexpr int kMaskWarps = kMaskThreads / 32;
  __shared__ A warp_dots[kMaskWarps];
  const int64_t bp = blockIdx.x;  // b * P + p
  const int64_t b = bp / P, p = bp % P;
  const T* m = masks + bp * HW;
  T* dm = grad_masks + bp * HW;
  // Slice t's partial of G[b, p] is at g_partials[((b * slices + t) * P + p) * HW]; slice 0's
  // row receives G for the second loop.
  A* g = g_partials + (b * ctas_per_sample * P + p) * HW;
  const int64_t slice_stride = int64_t(P) * HW;
  const A abs_sum = abs_sums[bp];
  const A norm = clamped_norm(abs_sum, eps);

  A dot = 0;
  for (int64_t hw = threadIdx.x; hw < HW; hw += kMaskThreads) {
    A total = 0;
    for (int64_t t = 0; t < ctas_per_sample; ++t) total += g[t * slice_stride + hw];
    total /= norm;
    g[hw] = total;
    dot += total * static_cast<A>(m[hw]);
  }
  dot = warp_sum(dot);
  if (threadIdx.x % 32 == 0) warp_dots[threadIdx.x / 32] = dot;
  __syncthreads();
  dot = 0;
#pragma unroll
  for (int w = 0; w < kMaskWarps; ++w) dot += warp_dots[w];

  // d S / d M = sign(M) where sum|M| was not clamped (there S = sum|M|), else 0.
  const A coef = abs_sum > eps ? dot / abs_sum : A(0);
  for (int64_t hw = threadIdx.x; hw < HW; hw += kMaskThreads) {
    const A mv = static_cast<A>(m[hw]);
    const A sign = static_cast<A>((mv > A(0)) - (mv < A(0)));
    dm[hw] = static_cast<T>(g[hw] - sign * coef);
  }
}

}  // namespace
}  // namespace pan_ops
