// CPU kernels of pan_ops::weighted_pool and its fused backward.
//
//   S[b,p]   = max(sum_hw |M[b,p,hw]|, eps)
//   f[b,p,c] = sum_hw F[b,c,hw] * M[b,p,hw] / S[b,p]
//
// Backward (f is not saved), with gS = g / S:
//   G[p,hw]  = sum_c gS[p,c] F[c,hw]
//   dF[c,hw] = sum_p gS[p,c] M[p,hw]
//   dM[p,hw] = G[p,hw] - sign(M[p,hw]) * sum_hw' G[p,hw'] M[p,hw'] / S[p]   (0 where S was clamped)
//
// All three products run through one register-blocked kernel (`gemm_panel`): a block
// of rows of its left operand, read element by element through arbitrary strides and
// broadcast, times one cache line of its right operand, read as vectors. F is read in
// place whatever its layout: with HW contiguous (NCHW) it is the left operand of the
// forward, walked along its rows, and the right operand of G, read in vectors along HW;
// with C contiguous (channels_last) it is the right operand of the forward, read in
// vectors of channels, and the left operand of G, walked along C. Half types are widened
// as they are read; dF, written once and never read back, is streamed past the cache.
//
// Work is split into (sample, channel tile) tasks with tiles of a fixed size, handed out
// one at a time to whichever thread is free; every sum runs in a fixed order, so results
// are bitwise identical for any thread count and any scheduling.
//
// This file is compiled once per instruction-set level (weighted_pool_cpu.h): everything it
// defines lives in the namespace PAN_OPS_CPU_LEVEL names, and the vector width follows the
// flags of that compilation. It registers nothing and checks no input: cpu_dispatch.cpp does.
#include "cpu/weighted_pool_cpu.h"

#include "weighted_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <optional>
#include <type_traits>
#include <vector>

#if !defined(PAN_OPS_CPU_LEVEL)
#error "compile with -DPAN_OPS_CPU_LEVEL=<namespace of the level> (setup.py, CMakeLists.txt)"
#endif

namespace pan_ops::PAN_OPS_CPU_LEVEL {
namespace {

// Channels per parallel task. Fixed, so the reduction order never depends on threads.
constexpr int64_t kChannelTile = 128;
// Steps ahead at which far-apart lines of the right operand are prefetched.
constexpr int64_t kPrefetchSteps = 8;
// Channels per step of the G accumulation: keeps the F lines being walked in L1.
constexpr int64_t kChannelStep = 32;

// Register block of the product kernel: kBlockRows rows of the left operand times one
// 64-byte line of the right operand (16 floats or 8 doubles). GCC/Clang vector types
// pin the accumulators to registers; plain loops over a local array were 40x slower
// (the array stayed in memory), and at::vec::Vectorized compiles to its scalar
// fallback in an extension, which does not define CPU_CAPABILITY.
// The vector width follows the instruction set of the level being compiled (weighted_pool_cpu.h):
// a vector type wider than the registers is split and kept on the stack, which made the
// portable (SSE2) build 20x slower with 32-byte vectors (benchmarks/RESULTS.md).
#if defined(__AVX512F__)
constexpr int kVectorBytes = 64;
constexpr int kBlockRows = 8;  // 8 of the 32 zmm registers hold accumulators
#elif defined(__AVX__)
constexpr int kVectorBytes = 32;
constexpr int kBlockRows = 6;  // 12 of the 16 ymm registers hold accumulators
#else
constexpr int kVectorBytes = 16;
constexpr int kBlockRows = 3;  // 12 of the 16 xmm registers hold accumulators
#endif
// With 32 vector registers all parts (up to 16) of a line of channels fit one block,
// so the channels_last forward reads each line of F once.
constexpr int kPartBlockRows = kVectorBytes == 64 ? 16 : kBlockRows;
constexpr int kBlockBytes = 64;
template <typename acc_t>
constexpr int64_t kBlockCols = kBlockBytes / sizeof(acc_t);

template <typename T>
struct VectorOf {
  typedef T type __attribute__((vector_size(kVectorBytes)));
};

int64_t round_up(int64_t n, int64_t multiple) {
  return ceil_div(n, multiple) * multiple;
}

// Stride of the flattened index h * W + w, when (H, W) collapse into one dimension.
std::optional<int64_t> flat_spatial_stride(const at::Tensor& t) {
  const int64_t height = t.size(2), width = t.size(3);
  if (width == 1) return t.stride(2);
  if (height == 1 || t.stride(2) == width * t.stride(3)) return t.stride(3);
  return std::nullopt;
}

// fn(s, offset) for every position of the (H, W) plane of a 4-D tensor, in the order
// s = h * W + w, with offset = h * stride(2) + w * stride(3).
template <typename Fn>
inline void for_each_position(const at::Tensor& t, const Fn& fn) {
  const int64_t height = t.size(2), width = t.size(3), stride_h = t.stride(2), stride_w = t.stride(3);
  for (int64_t h = 0, s = 0; h < height; ++h) {
    for (int64_t w = 0; w < width; ++w, ++s) fn(s, h * stride_h + w * stride_w);
  }
}

// A [B, C, HW] view of a 4-D tensor whose spatial dimensions collapse.
template <typename T>
struct ChannelsBySpace {
  T* data;
  int64_t batch_stride, channel_stride, spatial_stride;

  ChannelsBySpace(const at::Tensor& t, int64_t flat_stride)
      : data(t.data_ptr<std::remove_const_t<T>>()),
        batch_stride(t.stride(0)),
        channel_stride(t.stride(1)),
        spatial_stride(flat_stride) {}

  T* sample(int64_t b) const { return data + b * batch_stride; }
};

// Runs run_tasks(next) once on each of ATen's threads, where next() hands out the tasks
// [0, count) one at a time and returns -1 once none is left. A thread the OS holds back
// (a shared machine) thus leaves its share to the others instead of delaying the end.
// What a task computes must not depend on the thread that runs it.
template <typename RunTasks>
void parallel_tasks(int64_t count, const RunTasks& run_tasks) {
  std::atomic<int64_t> next_task{0};
  const auto next = [&]() -> int64_t {
    const int64_t task = next_task.fetch_add(1, std::memory_order_relaxed);
    return task < count ? task : -1;
  };
  at::parallel_for(0, std::min<int64_t>(count, at::get_num_threads()), 1,
                   [&](int64_t, int64_t) { run_tasks(next); });
}

// Invokes fn(std::integral_constant<int, R>) with R = min(n, kMax) known at compile time.
template <int kMax, typename Fn>
void with_block_rows(int64_t n, Fn&& fn) {
  if constexpr (kMax > 1) {
    if (n < kMax) return with_block_rows<kMax - 1>(n, std::forward<Fn>(fn));
  }
  fn(std::integral_constant<int, kMax>{});
}

// Stores one vector without first reading its cache line into the cache (a
// non-temporal store): dF is written once and not read by this op, and the read for
// ownership of an ordinary store doubled its memory traffic (the backward ran 35%
// faster streamed). `dst` must be aligned to the vector size.
template <typename vec_t>
inline void stream_vector(void* dst, const vec_t& value) {
#if defined(__AVX512F__)
  static_assert(sizeof(vec_t) == 64);
  _mm512_stream_si512(static_cast<__m512i*>(dst), (__m512i)value);
#elif defined(__AVX__)
  static_assert(sizeof(vec_t) == 32);
  _mm256_stream_si256(static_cast<__m256i*>(dst), (__m256i)value);
#elif defined(__SSE2__)
  static_assert(sizeof(vec_t) == 16);
  _mm_stream_si128(static_cast<__m128i*>(dst), (__m128i)value);
#else
  std::memcpy(dst, &value, sizeof(value));
#endif
}

// Orders this thread's streamed stores before its later ones (and so before the end of
// the parallel region that publishes them).
inline void finish_streaming() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// One row of a register block: kBlockCols sums held as vectors, with the ways the
// kernels hand them on. Whole lines move as vectors; element access is for the rest.
template <typename acc_t>
struct SumLine {
  using vec_t = typename VectorOf<acc_t>::type;
  static constexpr int kLanes = sizeof(vec_t) / sizeof(acc_t);
  static constexpr int kVectors = kBlockCols<acc_t> / kLanes;
  vec_t vectors[kVectors];

  acc_t operator[](int64_t j) const { return vectors[j / kLanes][j % kLanes]; }

  // The whole line from or to memory of any alignment, one copy per vector. A single copy of
  // the line is split into the target's widest plain moves, 16 bytes for AVX2 under GCC's
  // generic tuning, and goes through the stack: 32-byte loads of 16-byte stores, a
  // store-forwarding stall in every step of the product (benchmarks/RESULTS.md, CPU
  // instruction-set levels: what profiles showed).
  void load(const acc_t* src) {
    for (int v = 0; v < kVectors; ++v) std::memcpy(&vectors[v], src + v * kLanes, sizeof(vec_t));
  }
  void copy_to(acc_t* dst) const {
    for (int v = 0; v < kVectors; ++v) std::memcpy(dst + v * kLanes, &vectors[v], sizeof(vec_t));
  }

  void divide(acc_t divisor) {
    for (int v = 0; v < kVectors; ++v) vectors[v] /= divisor;
  }

  // Divides element-wise by a whole line of divisors.
  void divide(const acc_t* divisors) {
    SumLine divisor;
    divisor.load(divisors);
    for (int v = 0; v < kVectors; ++v) vectors[v] /= divisor.vectors[v];
  }

  // dst[j] = line[j] (converted) for j < count; whole lines with vector instructions.
  template <typename out_t>
  void store(out_t* dst, int64_t count) const {
    if (count != kBlockCols<acc_t>) {
      for (int64_t j = 0; j < count; ++j) dst[j] = static_cast<out_t>((*this)[j]);
    } else if constexpr (std::is_same_v<out_t, acc_t>) {
      copy_to(dst);
    } else {
      acc_t values[kBlockCols<acc_t>];
      copy_to(values);
      for (int64_t j = 0; j < kBlockCols<acc_t>; ++j) dst[j] = static_cast<out_t>(values[j]);
    }
  }

  // store(), streaming whole lines to aligned destinations (see stream_vector).
  template <typename out_t>
  void stream(out_t* dst, int64_t count) const {
    if constexpr (std::is_same_v<out_t, acc_t>) {
      if (count == kBlockCols<acc_t> && reinterpret_cast<uintptr_t>(dst) % sizeof(vec_t) == 0) {
        for (int v = 0; v < kVectors; ++v) stream_vector(dst + v * kLanes, vectors[v]);
        return;
      }
    }
    store(dst, count);
  }

  // dst[j] += line[j] over the whole line.
  void add_to(acc_t* dst) const {
    SumLine sum;
    sum.load(dst);
    for (int v = 0; v < kVectors; ++v) sum.vectors[v] += vectors[v];
    sum.copy_to(dst);
  }
};

// What the product kernel prefetches, chosen by each caller for its walk through F
// (the hardware prefetchers do not follow these interleaved or page-striding walks).
enum class Prefetch {
  kNone,
  // a's rows run along the depth (F in NCHW, forward): the next block of rows, one
  // cache line per row every line-length of steps.
  kNextRows,
  // The same, into L2 only: a's rows lie a page or more apart (F in channels_last, G)
  // and would share an L1 set with the current ones.
  kNextRowsToL2,
  // b's lines lie far apart (F as the right operand: channels_last forward, NCHW G):
  // the line kPrefetchSteps on, every step.
  kFarB,
};

template <Prefetch kPrefetch>
using PrefetchTag = std::integral_constant<Prefetch, kPrefetch>;

// acc[r][j] = sum_k a[r, k] * b[k, j] over kRows rows and one whole line of b, then
// store(r, acc[r]) hands each row to the caller. Each a element is loaded once and
// broadcast against the line of b, which is read as vectors (widened if need be).
template <int kRows, Prefetch kPrefetch, typename acc_t, typename a_t, typename b_t, typename Store>
inline void micro_kernel(const a_t* a, int64_t a_row_stride, int64_t a_depth_stride, const b_t* b,
                         int64_t b_depth_stride, int64_t depth, const Store& store) {
  using Line = SumLine<acc_t>;
  constexpr int64_t kLineElements = 64 / sizeof(a_t);
  Line acc[kRows] = {};
  for (int64_t k_line = 0; k_line < depth; k_line += kLineElements) {
    for (int r = kRows; r < 2 * kRows; ++r) {
      if constexpr (kPrefetch == Prefetch::kNextRows) __builtin_prefetch(a + r * a_row_stride + k_line);
      if constexpr (kPrefetch == Prefetch::kNextRowsToL2) __builtin_prefetch(a + r * a_row_stride + k_line, 0, 2);
    }
    const int64_t k_end = std::min(depth, k_line + kLineElements);
#pragma GCC unroll 4  // amortises the loop bookkeeping (about 20% faster)
    for (int64_t k = k_line; k < k_end; ++k) {
      if constexpr (kPrefetch == Prefetch::kFarB) __builtin_prefetch(b + (k + kPrefetchSteps) * b_depth_stride);
      Line b_line;
      if constexpr (std::is_same_v<b_t, acc_t>) {
        b_line.load(b + k * b_depth_stride);
      } else {
        acc_t widened[kBlockCols<acc_t>];
        for (int64_t j = 0; j < kBlockCols<acc_t>; ++j) widened[j] = static_cast<acc_t>(b[k * b_depth_stride + j]);
        b_line.load(widened);
      }
      const a_t* a_column = a + k * a_depth_stride;
      for (int r = 0; r < kRows; ++r) {
        const acc_t a_value = static_cast<acc_t>(a_column[r * a_row_stride]);
        for (int v = 0; v < Line::kVectors; ++v) acc[r].vectors[v] += a_value * b_line.vectors[v];
      }
    }
  }
  for (int r = 0; r < kRows; ++r) store(r, acc[r]);
}

// out[i, j] = sum_k a[i, k] * b[k, j] for i < rows, j < cols, delivered in row pieces
// as store(i, j0, line, count): line[t] = out[i, j0 + t] for t < count. `a` is read
// through strides, kMaxRows rows at a time; `b` is read in lines along j, b_cols wide
// (b_cols >= cols). Buffers padded with zeros to whole lines are read in place; lines
// that end mid-block (F, channels_last) have their last block copied, padded, first.
template <typename acc_t, int kMaxRows, Prefetch kPrefetch, typename a_t, typename b_t, typename Store>
void gemm_panel(const a_t* a, int64_t a_row_stride, int64_t a_depth_stride, int64_t rows, const b_t* b,
                int64_t b_depth_stride, int64_t b_cols, int64_t cols, int64_t depth, const Store& store) {
  constexpr int64_t kCols = kBlockCols<acc_t>;
  const int64_t whole_cols = b_cols / kCols * kCols;
  std::vector<b_t> last_block;
  if (whole_cols < cols) {
    last_block.assign(depth * kCols, b_t(0));
    for (int64_t k = 0; k < depth; ++k) {
      const b_t* line = b + k * b_depth_stride + whole_cols;
      std::copy(line, line + (b_cols - whole_cols), last_block.data() + k * kCols);
    }
  }
  for (int64_t i0 = 0; i0 < rows; i0 += kMaxRows) {
    with_block_rows<kMaxRows>(rows - i0, [&](auto block_rows) {
      for (int64_t j0 = 0; j0 < cols; j0 += kCols) {
        const bool in_last_block = j0 >= whole_cols;
        micro_kernel<decltype(block_rows)::value, kPrefetch, acc_t>(
            a + i0 * a_row_stride, a_row_stride, a_depth_stride, in_last_block ? last_block.data() : b + j0,
            in_last_block ? kCols : b_depth_stride, depth,
            [&, count = std::min(kCols, cols - j0)](int r, const SumLine<acc_t>& line) {
              store(i0 + r, j0, line, count);
            });
      }
    });
  }
}

// The masks of every sample in the accumulation type, in the two zero-padded layouts
// the kernels use as right operands, plus sum_hw |M|.
template <typename scalar_t>
struct MaskPanels {
  using acc_t = at::opmath_type<scalar_t>;
  int64_t parts, space, parts_padded, space_padded;
  std::vector<acc_t> by_part;   // [B][P][HW padded]: M (only when asked for)
  std::vector<acc_t> by_space;  // [B][HW][P padded]: M^T
  std::vector<acc_t> abs_sum;   // [B][P]

  MaskPanels(const at::Tensor& masks, bool with_by_part)
      : parts(masks.size(1)),
        space(masks.size(2) * masks.size(3)),
        parts_padded(round_up(parts, kBlockCols<acc_t>)),
        space_padded(round_up(space, kBlockCols<acc_t>)),
        by_part(with_by_part ? masks.size(0) * parts * space_padded : 0),
        by_space(masks.size(0) * space * parts_padded),
        abs_sum(masks.size(0) * parts) {
    // Serial: the masks are small, and each parallel region costs a wake-up of every
    // thread, which on a shared machine can take longer than this whole loop.
    const scalar_t* data = masks.data_ptr<scalar_t>();
    for (int64_t b = 0; b < masks.size(0); ++b) {
      for (int64_t p = 0; p < parts; ++p) {
        const scalar_t* plane = data + b * masks.stride(0) + p * masks.stride(1);
        acc_t total = 0;
        for_each_position(masks, [&](int64_t s, int64_t offset) {
          const acc_t m = static_cast<acc_t>(plane[offset]);
          if (with_by_part) by_part[(b * parts + p) * space_padded + s] = m;
          by_space[(b * space + s) * parts_padded + p] = m;
          total += std::abs(m);
        });
        abs_sum[b * parts + p] = total;
      }
    }
  }

  const acc_t* sample_by_part(int64_t b) const { return by_part.data() + b * parts * space_padded; }
  const acc_t* sample_by_space(int64_t b) const { return by_space.data() + b * space * parts_padded; }
  // S = max(sum |M|, eps); `clamped` where the clamp is active and passes no gradient.
  acc_t norm(int64_t b, int64_t p, double eps) const {
    return std::max(abs_sum[b * parts + p], static_cast<acc_t>(eps));
  }
  bool clamped(int64_t b, int64_t p, double eps) const {
    return !(abs_sum[b * parts + p] > static_cast<acc_t>(eps));
  }
};

// features itself if its spatial dimensions collapse, else a contiguous copy.
at::Tensor with_flat_space(const at::Tensor& features) {
  return flat_spatial_stride(features) ? features : features.contiguous();
}

at::Tensor weighted_pool_cpu(const at::Tensor& features_in, const at::Tensor& masks, double eps) {
  at::Tensor out = at::empty(output_shape(features_in, masks), features_in.options());
  if (out.numel() == 0) return out;
  const at::Tensor features = with_flat_space(features_in);
  const int64_t batch = features.size(0), channels = features.size(1), parts = masks.size(1);
  const int64_t tiles = ceil_div(channels, kChannelTile);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "weighted_pool_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const ChannelsBySpace<const scalar_t> f(features, *flat_spatial_stride(features));
    // channels_last: lines of channels are the right operand, read as vectors.
    const bool channels_contiguous = f.channel_stride == 1 && f.spatial_stride != 1;
    const MaskPanels<scalar_t> panels(masks, /*with_by_part=*/channels_contiguous);
    scalar_t* out_data = out.data_ptr<scalar_t>();

    parallel_tasks(batch * tiles, [&](const auto& next_task) {
      // S padded with ones, so that whole lines of sums are divided at once.
      std::vector<acc_t> norm(panels.parts_padded, acc_t(1));
      // out^T of a tile, [c][P padded]: the rows of out lie C apart and would share one
      // cache set, so the tile is transposed into them once, line by line.
      std::vector<acc_t> pooled(channels_contiguous ? 0 : kChannelTile * panels.parts_padded);
      for (int64_t task; (task = next_task()) >= 0;) {
        const int64_t b = task / tiles, c0 = task % tiles * kChannelTile;
        const int64_t tile_channels = std::min(kChannelTile, channels - c0);
        for (int64_t p = 0; p < parts; ++p) norm[p] = panels.norm(b, p, eps);
        const scalar_t* f_tile = f.sample(b) + c0 * f.channel_stride;
        scalar_t* out_tile = out_data + b * parts * channels + c0;
        if (channels_contiguous) {
          // out[p, c] = sum_hw M[p, hw] F^T[hw, c] / S[p]
          gemm_panel<acc_t, kPartBlockRows, Prefetch::kFarB>(
              panels.sample_by_part(b), panels.space_padded, int64_t(1), parts, f_tile, f.spatial_stride,
              tile_channels, tile_channels, panels.space,
              [&](int64_t p, int64_t c_first, SumLine<acc_t> line, int64_t count) {
                line.divide(norm[p]);
                line.store(out_tile + p * channels + c_first, count);
              });
          continue;
        }
        // out^T[c, p] = sum_hw F[c, hw] M^T[hw, p] / S[p]
        const auto pool_tile = [&](auto prefetch) {
          gemm_panel<acc_t, kBlockRows, decltype(prefetch)::value>(
              f_tile, f.channel_stride, f.spatial_stride, tile_channels, panels.sample_by_space(b),
              panels.parts_padded, panels.parts_padded, panels.parts_padded, panels.space,
              [&](int64_t c, int64_t p0, SumLine<acc_t> line, int64_t count) {
                line.divide(norm.data() + p0);
                line.store(pooled.data() + c * panels.parts_padded + p0, count);
              });
        };
        if (f.spatial_stride == 1) {
          pool_tile(PrefetchTag<Prefetch::kNextRows>{});
        } else {
          pool_tile(PrefetchTag<Prefetch::kNone>{});
        }
        for (int64_t p = 0; p < parts; ++p) {
          for (int64_t c = 0; c < tile_channels; ++c) {
            out_tile[p * channels + c] = static_cast<scalar_t>(pooled[c * panels.parts_padded + p]);
          }
        }
      }
    });
  });
  return out;
}

// The backward of one dtype on [B, C, HW] views of F and dF, in stages run for each
// (sample, channel tile) task; the task that completes a sample's last tile finishes its dM.
template <typename scalar_t>
class BackwardStages {
 public:
  BackwardStages(const at::Tensor& grad, const at::Tensor& features, const at::Tensor& masks,
                 const at::Tensor& grad_features_flat, const at::Tensor& grad_masks, double eps)
      : f_(features, *flat_spatial_stride(features)),
        df_(grad_features_flat, *flat_spatial_stride(grad_features_flat)),
        g_(grad.data_ptr<scalar_t>()),
        grad_masks_(grad_masks),
        eps_(eps),
        batch_(features.size(0)),
        channels_(features.size(1)),
        parts_(masks.size(1)),
        tiles_(ceil_div(channels_, kChannelTile)),
        g_by_part_(f_.spatial_stride == 1),
        df_space_major_(df_.spatial_stride == 1),
        panels_(masks, /*with_by_part=*/df_space_major_),
        g_part_stride_(g_by_part_ ? panels_.space_padded : 1),
        g_space_stride_(g_by_part_ ? 1 : panels_.parts_padded),
        panel_size_(g_by_part_ ? parts_ * panels_.space_padded : panels_.space * panels_.parts_padded),
        partial_g_(at::empty({batch_ * tiles_ * panel_size_},
                             grad.options().dtype(at::toOpMathType(grad.scalar_type())))) {}

  // Every task on ATen's threads, each thread with its own gS buffers.
  void run() const {
    std::vector<std::atomic<int64_t>> tiles_done(batch_);
    parallel_tasks(batch_ * tiles_, [&](const auto& next_task) {
      std::vector<acc_t> gs_by_part, gs_by_channel;
      for (int64_t index; (index = next_task()) >= 0;) {
        const Task task = task_at(index);
        scale_grad_tile(task, gs_by_part);
        if (g_by_part_) {
          g_partial_by_part(task, gs_by_part);
        } else {
          g_partial_by_space(task, gs_by_part, gs_by_channel);
        }
        df_for_tile(task, gs_by_part);
        if (tiles_done[task.b].fetch_add(1, std::memory_order_acq_rel) + 1 == tiles_) finish_grad_masks(task.b);
      }
      finish_streaming();
    });
  }

 private:
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int64_t kCols = kBlockCols<acc_t>;

  // One channel tile of one sample; `padded`: its channels rounded up to whole lines.
  struct Task {
    int64_t b, tile, c0, channels, padded;
  };

  Task task_at(int64_t index) const {
    const int64_t b = index / tiles_, tile = index % tiles_, c0 = tile * kChannelTile;
    const int64_t tile_channels = std::min(kChannelTile, channels_ - c0);
    return {b, tile, c0, tile_channels, round_up(tile_channels, kCols)};
  }

  const scalar_t* f_tile(const Task& task) const { return f_.sample(task.b) + task.c0 * f_.channel_stride; }

  acc_t* partial_panel(int64_t b, int64_t tile) const {
    return partial_g_.data_ptr<acc_t>() + (b * tiles_ + tile) * panel_size_;
  }

  // Scaled gradient tile: gS = g / S, [p][C padded] with zeros in the padding.
  void scale_grad_tile(const Task& task, std::vector<acc_t>& gs_by_part) const {
    gs_by_part.assign(parts_ * task.padded, acc_t(0));
    for (int64_t p = 0; p < parts_; ++p) {
      const acc_t norm = panels_.norm(task.b, p, eps_);
      const scalar_t* g_line = g_ + (task.b * parts_ + p) * channels_ + task.c0;
      acc_t* gs_line = gs_by_part.data() + p * task.padded;
      for (int64_t c = 0; c < task.channels; ++c) gs_line[c] = static_cast<acc_t>(g_line[c]) / norm;
    }
  }

  // G partial for a tile, HW contiguous: G[p, hw] = sum_c gS[p, c] F[c, hw], F's lines read once, as vectors.
  void g_partial_by_part(const Task& task, const std::vector<acc_t>& gs_by_part) const {
    acc_t* g_panel = partial_panel(task.b, task.tile);
    gemm_panel<acc_t, kPartBlockRows, Prefetch::kFarB>(
        gs_by_part.data(), task.padded, int64_t(1), parts_, f_tile(task), f_.channel_stride, panels_.space,
        panels_.space, task.channels, [&](int64_t p, int64_t s0, const SumLine<acc_t>& line, int64_t count) {
          line.store(g_panel + p * panels_.space_padded + s0, count);
        });
  }

  // G partial for a tile, otherwise: G^T[hw, p] = sum_c F[c, hw] gS^T[c, p], F as the left operand.
  void g_partial_by_space(const Task& task, const std::vector<acc_t>& gs_by_part,
                          std::vector<acc_t>& gs_by_channel) const {
    const int64_t parts_padded = panels_.parts_padded;
    // gS^T, [c][P padded]: on the right here, so copied transposed rather than read through strides.
    gs_by_channel.assign(task.channels * parts_padded, acc_t(0));
    for (int64_t p = 0; p < parts_; ++p) {
      for (int64_t c = 0; c < task.channels; ++c) {
        gs_by_channel[c * parts_padded + p] = gs_by_part[p * task.padded + c];
      }
    }
    // Accumulated a few channels at a time over whole padded lines (the padding of gS^T is zero).
    acc_t* g_panel = partial_panel(task.b, task.tile);
    std::fill(g_panel, g_panel + panel_size_, acc_t(0));
    const scalar_t* f_first = f_tile(task);
    const auto accumulate_g = [&](auto prefetch) {
      for (int64_t c = 0; c < task.channels; c += kChannelStep) {
        gemm_panel<acc_t, kBlockRows, decltype(prefetch)::value>(
            f_first + c * f_.channel_stride, f_.spatial_stride, f_.channel_stride, panels_.space,
            gs_by_channel.data() + c * parts_padded, parts_padded, parts_padded, parts_padded,
            std::min(kChannelStep, task.channels - c), [&](int64_t s, int64_t p0, const SumLine<acc_t>& line, int64_t) {
              line.add_to(g_panel + s * parts_padded + p0);
            });
      }
    };
    if (f_.channel_stride == 1) {
      accumulate_g(PrefetchTag<Prefetch::kNextRowsToL2>{});
    } else {
      accumulate_g(PrefetchTag<Prefetch::kNone>{});
    }
  }

  // dF for a tile, streamed out in lines along its contiguous dimension.
  void df_for_tile(const Task& task, const std::vector<acc_t>& gs_by_part) const {
    scalar_t* df_tile = df_.sample(task.b) + task.c0 * df_.channel_stride;
    if (df_space_major_) {
      // dF[c, hw] = sum_p gS^T[c, p] M[p, hw]
      gemm_panel<acc_t, kBlockRows, Prefetch::kNone>(
          gs_by_part.data(), int64_t(1), task.padded, task.channels, panels_.sample_by_part(task.b),
          panels_.space_padded, panels_.space_padded, panels_.space, parts_,
          [&](int64_t c, int64_t s0, const SumLine<acc_t>& line, int64_t count) {
            line.stream(df_tile + c * df_.channel_stride + s0, count);
          });
      return;
    }
    // dF^T[hw, c] = sum_p M^T[hw, p] gS[p, c]
    gemm_panel<acc_t, kBlockRows, Prefetch::kNone>(
        panels_.sample_by_space(task.b), panels_.parts_padded, int64_t(1), panels_.space, gs_by_part.data(),
        task.padded, task.padded, task.channels, parts_,
        [&](int64_t s, int64_t c_first, const SumLine<acc_t>& line, int64_t count) {
          scalar_t* dst = df_tile + s * df_.spatial_stride + c_first * df_.channel_stride;
          if (df_.channel_stride == 1) return line.stream(dst, count);
          for (int64_t j = 0; j < count; ++j) dst[j * df_.channel_stride] = static_cast<scalar_t>(line[j]);
        });
  }

  // G of sample b: its tiles' partial sums added in tile order, into tile 0's panel.
  const acc_t* sum_g_partials(int64_t b) const {
    acc_t* g_total = partial_panel(b, 0);
    for (int64_t tile = 1; tile < tiles_; ++tile) {
      const acc_t* g_tile = partial_panel(b, tile);
      for (int64_t i = 0; i < panel_size_; ++i) g_total[i] += g_tile[i];
    }
    return g_total;
  }

  // Finish dM for a sample, once all its tiles are done: dM = G - sign(M) * sum_hw(G M / S).
  void finish_grad_masks(int64_t b) const {
    const acc_t* g_total = sum_g_partials(b);
    const acc_t* m = panels_.sample_by_space(b);
    const int64_t parts_padded = panels_.parts_padded;
    scalar_t* dm = grad_masks_.data_ptr<scalar_t>();
    for (int64_t p = 0; p < parts_; ++p) {
      const acc_t* g_line = g_total + p * g_part_stride_;
      // d/dM of 1/S: -sign(M) * sum_hw(G M / S), absent where the clamp is active.
      // M / S before the sum: with one nonzero mask value it is exactly sign(M), so
      // dM cancels to exactly zero there, as it does in exact arithmetic.
      const acc_t norm = panels_.norm(b, p, eps_);
      acc_t norm_term = 0;
      if (!panels_.clamped(b, p, eps_)) {
        for (int64_t s = 0; s < panels_.space; ++s) {
          norm_term += g_line[s * g_space_stride_] * (m[s * parts_padded + p] / norm);
        }
      }
      scalar_t* dm_plane = dm + b * grad_masks_.stride(0) + p * grad_masks_.stride(1);
      for_each_position(grad_masks_, [&](int64_t s, int64_t offset) {
        const acc_t mask = m[s * parts_padded + p];
        const acc_t sign = static_cast<acc_t>((mask > 0) - (mask < 0));
        dm_plane[offset] = static_cast<scalar_t>(g_line[s * g_space_stride_] - sign * norm_term);
      });
    }
  }

  const ChannelsBySpace<const scalar_t> f_;
  const ChannelsBySpace<scalar_t> df_;
  const scalar_t* g_;  // [B, P, C], contiguous
  const at::Tensor grad_masks_;
  const double eps_;
  const int64_t batch_, channels_, parts_, tiles_;
  // With HW contiguous (NCHW) lines of F are G's right operand and G comes as [P][HW];
  // otherwise F is its left operand and G comes transposed, [HW][P].
  const bool g_by_part_;
  // dF is produced in lines along HW when that is its contiguous dimension, else along C.
  const bool df_space_major_;
  const MaskPanels<scalar_t> panels_;
  const int64_t g_part_stride_, g_space_stride_, panel_size_;
  // Partial sums of G, one panel per (sample, channel tile).
  const at::Tensor partial_g_;
};

std::tuple<at::Tensor, at::Tensor> weighted_pool_backward_cpu(const at::Tensor& grad, const at::Tensor& features_in,
                                                              const at::Tensor& masks, double eps) {
  at::Tensor grad_features = at::empty_like(features_in);
  at::Tensor grad_masks = at::empty_like(masks);
  // With no channels or no parts every gradient that exists is zero.
  if (grad_features.numel() == 0 || grad_masks.numel() == 0) {
    grad_features.zero_();
    grad_masks.zero_();
    return {grad_features, grad_masks};
  }
  const at::Tensor features = with_flat_space(features_in);
  const at::Tensor grad_contiguous = grad.contiguous();  // [B, P, C]: small next to F
  // dF is written in place unless its layout interleaves C between H and W.
  const bool direct_grad_features = flat_spatial_stride(grad_features).has_value();
  at::Tensor grad_features_flat = direct_grad_features ? grad_features : at::empty_like(features);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "weighted_pool_backward_cpu", [&] {
    BackwardStages<scalar_t>(grad_contiguous, features, masks, grad_features_flat, grad_masks, eps).run();
  });
  if (!direct_grad_features) grad_features.copy_(grad_features_flat);
  return {grad_features, grad_masks};
}

}  // namespace

// Function addresses only: constant-initialised, so that loading the library runs no code of this level.
const cpu::Kernels kernels{&weighted_pool_cpu, &weighted_pool_backward_cpu};

}  // namespace pan_ops::PAN_OPS_CPU_LEVEL
