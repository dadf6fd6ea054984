// Host side of the kernels of weighted_pool_kernels.cuh: the op's forward and backward on
// checked inputs, which choose each launch's kernel instance (part tier, layout, vector loads)
// and shape (grid, channel tiles per CTA, workspace of G partials).
//
// Two programs include this file: the CUDA build (weighted_pool_cuda.cu) and a CPU emulation
// of CUDA's execution model (tests/cuda_emulation). How kernels are launched is the
// includer's: pool_forward and pool_backward take a launcher, an object of any type with
//   int multiprocessors;  the device's SM count, which sizes the grids (split_tiles), and
//   launch(kernel, dim3 grid, int threads, args...) const, which runs
//       kernel<<<grid, threads>>>(args...) after every launch made before it (the
//       backward's launches read and add into what the earlier ones wrote).
#pragma once

#include "weighted_pool_kernels.cuh"

#include "weighted_pool.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

namespace pan_ops {
namespace {

// F as the kernels read it: dense NCHW or channels_last, else a dense copy in the
// memory format torch suggests for it (the one empty_like gives such a tensor).
struct FeatureView {
  at::Tensor tensor;
  Layout layout;
};

FeatureView feature_view(const at::Tensor& features) {
  if (features.is_contiguous()) return {features, Layout::kChannelsFirst};
  if (features.is_contiguous(at::MemoryFormat::ChannelsLast)) return {features, Layout::kChannelsLast};
  const auto format = features.suggest_memory_format();
  return {features.contiguous(format),
          format == at::MemoryFormat::ChannelsLast ? Layout::kChannelsLast : Layout::kChannelsFirst};
}

bool is_dense_in(const at::Tensor& t, Layout layout) {
  return layout == Layout::kChannelsLast ? t.is_contiguous(at::MemoryFormat::ChannelsLast) : t.is_contiguous();
}

// Packs of `pack` elements fit when the contiguous extent is a multiple of it and the
// base pointer is aligned to the pack (to 16 bytes for wider packs).
bool packs_fit(const at::Tensor& t, int64_t contiguous_extent, int pack) {
  const auto align = static_cast<uintptr_t>(std::min<int64_t>(16, pack * static_cast<int64_t>(t.element_size())));
  return pack > 1 && contiguous_extent % pack == 0 && reinterpret_cast<uintptr_t>(t.data_ptr()) % align == 0;
}

// Register tiers: P parts run in chunks of PMAX = 8, 16 or 32 parts (double: 8).
template <typename T>
constexpr int kMaxPartTier = std::is_same<T, double>::value ? 8 : 32;

// Runs fn(integral_constant PMAX) for the smallest register tier holding P parts, or the
// largest tier of T, whose chunks then cover P.
template <typename T, typename Fn>
void dispatch_part_tier(int64_t P, Fn&& fn) {
  if constexpr (kMaxPartTier<T> == 8) {
    fn(std::integral_constant<int, 8>{});
  } else if (P <= 8) {
    fn(std::integral_constant<int, 8>{});
  } else if (P <= 16) {
    fn(std::integral_constant<int, 16>{});
  } else {
    fn(std::integral_constant<int, 32>{});
  }
}

// Runs fn(integral_constant layout, integral_constant vectorized).
template <typename Fn>
void dispatch_access(Layout layout, bool vectorized, Fn&& fn) {
  using First = std::integral_constant<Layout, Layout::kChannelsFirst>;
  using Last = std::integral_constant<Layout, Layout::kChannelsLast>;
  if (layout == Layout::kChannelsFirst) {
    vectorized ? fn(First{}, std::true_type{}) : fn(First{}, std::false_type{});
  } else {
    vectorized ? fn(Last{}, std::true_type{}) : fn(Last{}, std::false_type{});
  }
}

// Splits each sample's channel tiles over CTAs so that the grid is about one wave of
// `blocks_per_sm` CTAs per SM (no tail), never fewer than one CTA per sample and job.
struct TileSplit {
  int64_t tiles_per_cta, ctas_per_sample;
};

TileSplit split_tiles(int64_t channel_tiles, int64_t samples, int sms, int blocks_per_sm) {
  const int64_t ctas_wanted = std::max<int64_t>(1, int64_t(sms) * blocks_per_sm / samples);
  const int64_t tiles_per_cta = ceil_div(channel_tiles, std::min(ctas_wanted, channel_tiles));
  return {tiles_per_cta, ceil_div(channel_tiles, tiles_per_cta)};
}

void check_grid(int64_t blocks, const char* what) {
  TORCH_CHECK(blocks <= std::numeric_limits<int>::max(), "weighted_pool: ", what,
              " needs more CUDA blocks than a grid holds (", blocks, ")");
}

template <typename T, typename Launcher>
void launch_forward(const Launcher& launcher, const FeatureView& view, const at::Tensor& masks, at::Tensor& out,
                    double eps) {
  const at::Tensor& features = view.tensor;
  const int64_t B = features.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  const int P = static_cast<int>(masks.size(1));
  dispatch_part_tier<T>(P, [&](auto tier) {
    constexpr int PMAX = decltype(tier)::value;
    using Tile = ForwardTile<PMAX>;
    const int64_t channel_tiles = ceil_div(C, Tile::kCtaChannels);
    const int64_t chunks = ceil_div(P, PMAX);
    TORCH_CHECK(chunks <= 65535, "weighted_pool: too many parts (masks ", masks.sizes(), ")");
    const TileSplit split = split_tiles(channel_tiles, B * chunks, launcher.multiprocessors, kForwardBlocksPerSm<T>);
    check_grid(B * split.ctas_per_sample, "the forward");
    const dim3 grid(static_cast<unsigned>(B * split.ctas_per_sample), static_cast<unsigned>(chunks));
    const bool vectorized = view.layout == Layout::kChannelsFirst ? packs_fit(features, HW, Tile::kPositions)
                                                                  : packs_fit(features, C, Tile::kChannels);
    dispatch_access(view.layout, vectorized, [&](auto layout, auto vector) {
      launcher.launch(pool_forward_kernel<T, PMAX, decltype(layout)::value, decltype(vector)::value>, grid, kThreads,
                      features.data_ptr<T>(), masks.data_ptr<T>(), out.data_ptr<T>(), C, HW, P, channel_tiles,
                      split.tiles_per_cta, split.ctas_per_sample, static_cast<acc_t<T>>(eps));
    });
  });
}

// Position lanes per pass of the backward-features kernel: a power of two from 32 to
// kThreads covering the positions if it can; the remaining threads form channel groups.
int backward_hw_lanes(int64_t positions) {
  int lanes = 32;
  while (lanes < kThreads && lanes < positions) lanes *= 2;
  return lanes;
}

template <typename T, typename Launcher>
void launch_backward(const Launcher& launcher, const at::Tensor& grad, const FeatureView& view, const at::Tensor& masks,
                     at::Tensor& grad_features, at::Tensor& grad_masks, double eps) {
  using A = acc_t<T>;
  const at::Tensor& features = view.tensor;
  const int64_t B = features.size(0), C = features.size(1), HW = features.size(2) * features.size(3);
  const int P = static_cast<int>(masks.size(1));
  const auto acc_options = features.options().dtype(at::toOpMathType(features.scalar_type()));
  const A eps_acc = static_cast<A>(eps);
  dispatch_part_tier<T>(P, [&](auto tier) {
    constexpr int PMAX = decltype(tier)::value;
    using Tile = BackwardTile<T, PMAX, Layout::kChannelsFirst>;
    using TileLast = BackwardTile<T, PMAX, Layout::kChannelsLast>;
    const bool first = view.layout == Layout::kChannelsFirst;
    const int U = first ? Tile::kChannels : TileLast::kChannels;
    const int V = first ? Tile::kPositions : TileLast::kPositions;
    // Per layout: with 8-byte types the two tiles stage different amounts, so their
    // shared-memory budgets leave room for different channel counts.
    const int64_t channel_tiles = ceil_div(C, first ? Tile::kCtaChannels : TileLast::kCtaChannels);
    const TileSplit split = split_tiles(channel_tiles, B, launcher.multiprocessors, kBackwardBlocksPerSm<T, PMAX>);
    check_grid(B * split.ctas_per_sample, "the backward");
    check_grid(B * P, "the backward");
    // Extra memory: one partial of G per CTA, and sum|M| of every part.
    at::Tensor g_partials = at::empty({B, split.ctas_per_sample, P, HW}, acc_options);
    at::Tensor abs_sums = at::empty({B, P}, acc_options);
    const int hw_lanes = backward_hw_lanes(ceil_div(HW, V));
    const bool vectorized = first ? packs_fit(features, HW, V) : packs_fit(features, C, U);
    // Chunks of parts run in order, later ones adding into dF: through a float copy of dF
    // for half types, so that dF is rounded to T once (extra memory only when P > PMAX).
    const auto run_chunks = [&](auto* df) {
      using D = std::remove_pointer_t<decltype(df)>;
      dispatch_access(view.layout, vectorized, [&](auto layout, auto vector) {
        for (int p0 = 0; p0 < P; p0 += PMAX) {
          launcher.launch(
              pool_backward_features_kernel<T, PMAX, decltype(layout)::value, decltype(vector)::value, D>,
              dim3(static_cast<unsigned>(B * split.ctas_per_sample)), kThreads, grad.data_ptr<T>(),
              features.data_ptr<T>(), masks.data_ptr<T>(), df, g_partials.data_ptr<A>(), abs_sums.data_ptr<A>(), C,
              HW, P, p0, channel_tiles, split.tiles_per_cta, split.ctas_per_sample, hw_lanes, p0 > 0, eps_acc);
        }
      });
    };
    bool written = false;
    if constexpr (!std::is_same<T, A>::value && PMAX == kMaxPartTier<T>) {  // only the top tier has chunks
      if (P > PMAX) {
        at::Tensor df_acc = at::empty_like(grad_features, acc_options);
        run_chunks(df_acc.data_ptr<A>());
        grad_features.copy_(df_acc);
        written = true;
      }
    }
    if (!written) run_chunks(grad_features.data_ptr<T>());
    launcher.launch(pool_backward_masks_kernel<T>, dim3(static_cast<unsigned>(B * P)), kMaskThreads,
                    masks.data_ptr<T>(), abs_sums.data_ptr<A>(), g_partials.data_ptr<A>(), grad_masks.data_ptr<T>(),
                    HW, P, split.ctas_per_sample, eps_acc);
  });
}

// The op's forward on checked inputs, its kernels run by `launcher`.
template <typename Launcher>
at::Tensor pool_forward(const Launcher& launcher, const at::Tensor& features, const at::Tensor& masks, double eps) {
  at::Tensor out = at::empty(output_shape(features, masks), features.options());
  if (out.numel() == 0) return out;
  if (features.size(2) * features.size(3) == 0) return out.zero_();  // empty sums: f = 0 / eps
  const FeatureView view = feature_view(features);
  const at::Tensor masks_dense = masks.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "weighted_pool_cuda",
                                  [&] { launch_forward<scalar_t>(launcher, view, masks_dense, out, eps); });
  return out;
}

// The op's backward on checked inputs, its kernels run by `launcher`.
template <typename Launcher>
std::tuple<at::Tensor, at::Tensor> pool_backward(const Launcher& launcher, const at::Tensor& grad,
                                                 const at::Tensor& features, const at::Tensor& masks, double eps) {
  // Gradients come back as empty_like of their input (what the fake kernel promises).
  at::Tensor grad_features = at::empty_like(features);
  at::Tensor grad_masks = at::empty_like(masks);
  if (grad_features.numel() == 0 || grad_masks.numel() == 0) {
    // No parts, no channels or no positions: whatever is left has zero gradient.
    return {grad_features.zero_(), grad_masks.zero_()};
  }
  const FeatureView view = feature_view(features);
  // The kernels write dense buffers in the layout they read; copy out where empty_like differs.
  at::Tensor features_out = is_dense_in(grad_features, view.layout) ? grad_features : at::empty_like(view.tensor);
  at::Tensor masks_out = grad_masks.is_contiguous() ? grad_masks : at::empty(masks.sizes(), masks.options());
  const at::Tensor masks_dense = masks.contiguous();
  const at::Tensor grad_dense = grad.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, features.scalar_type(), "weighted_pool_backward_cuda", [&] {
    launch_backward<scalar_t>(launcher, grad_dense, view, masks_dense, features_out, masks_out, eps);
  });
  if (!features_out.is_same(grad_features)) grad_features.copy_(features_out);
  if (!masks_out.is_same(grad_masks)) grad_masks.copy_(masks_out);
  return {grad_features, grad_masks};
}

}  // namespace
}  // namespace pan_ops
