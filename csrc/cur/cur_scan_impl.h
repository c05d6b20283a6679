// The vector fused score + top-k kernels, written once over a lane-traits class V and instantiated
// by cur_avx2.cpp and cur_avx512.cpp with their own flags. V provides:
//   kLanes, kMaxRows (queries per register tile), Vec, zero, load, store, set1, fmadd, mul,
//   gt_mask(a, b) (lanes a > b, false for NaN), ord_mask(a) (lanes not NaN),
//   load_bf16(const uint16_t*), load_i8(const int8_t*) (exact conversions to float32).
//
// Many queries (compute bound), GEMM style: a panel of E's columns (about 512 KB as float32, so it
// stays in L2 while every query tile sweeps it) is packed into strips of 2*kLanes columns x r rows,
// contiguous, so a strip (r x 32 floats = 32 KB at r = 256) stays in L1 across the query tiles. The
// register tile is up to kMaxRows queries x 2 vectors (28 zmm accumulators on AVX-512); each tile's
// rows of C are stored transposed so its broadcasts use one pointer. While a panel is multiplied the
// next one is prefetched into L2 (PanelPrefetcher), so packing does not wait on DRAM. After the
// r-long FMA chain, each score vector is compared once with the query's bar; only winners reach
// the heap. Few queries (bandwidth bound): scan_direct streams E without packing.
// The B x N score matrix is never written.
#pragma once
#include <cmath>
#include <limits>
#include <memory>
#include <vector>

#include "cur/cur_common.h"

namespace embkern::cur {
inline namespace EMBKERN_ISA_NS {

struct AlignedFree {
  void operator()(float* p) const { std::free(p); }
};
using AlignedFloats = std::unique_ptr<float[], AlignedFree>;
inline AlignedFloats aligned_floats(int64_t n) {
  const size_t bytes = (size_t(n > 0 ? n : 1) * sizeof(float) + 63) / 64 * 64;
  return AlignedFloats(static_cast<float*>(std::aligned_alloc(64, bytes)));
}

// Columns [col0, col0 + ncols) of E as float32 strips: strip s holds panel[s*r*SW + j*SW + c] =
// e(j, col0 + s*SW + c), zero past ncols.
template <class V, int ET>
void pack_panel(const void* E, int64_t ld, int64_t r, int64_t col0, int64_t ncols, float* panel) {
  constexpr int64_t L = V::kLanes, SW = 2 * L;
  const int64_t padded = (ncols + SW - 1) / SW * SW;
  const int64_t full_vecs = ncols / L;
  for (int64_t j = 0; j < r; ++j) {
    const int64_t row = j * ld + col0;
    float* dst_row = panel + j * SW;
    for (int64_t v = 0; v < full_vecs; ++v) {
      typename V::Vec x;
      if constexpr (ET == kBF16)
        x = V::load_bf16(static_cast<const uint16_t*>(E) + row + v * L);
      else if constexpr (ET == kI8)
        x = V::load_i8(static_cast<const int8_t*>(E) + row + v * L);
      else
        x = V::load(static_cast<const float*>(E) + row + v * L);
      V::store(dst_row + (v / 2) * r * SW + (v % 2) * L, x);
    }
    for (int64_t c = full_vecs * L; c < padded; ++c)
      dst_row[(c / SW) * r * SW + c % SW] = c < ncols ? e_value(E, ET, row + c) : 0.0f;
  }
}

// Streams the next panel's bytes of E into L2 while the current panel is multiplied: each tile
// call issues its share of the panel's cache lines, one every `step` FMA rows, so packing the next
// panel reads L2 instead of waiting on DRAM (packing was a third of the time without it).
struct PanelPrefetcher {
  const char* cur = nullptr;   // next line to prefetch
  int64_t row_skip = 0;        // bytes from a row segment's end to the next row's start
  int64_t lines_per_row = 0;
  int64_t line = 0, rows_left = 0;
  int64_t quota = 0;           // lines per tile call

  void start(const void* E, int64_t esize, int64_t ld, int64_t r, int64_t col, int64_t ncols, int64_t calls) {
    cur = static_cast<const char*>(E) + col * esize;
    // +1: the segment may start mid-line
    lines_per_row = ncols > 0 ? (ncols * esize + 63) / 64 + 1 : 0;
    row_skip = ld * esize - lines_per_row * 64;
    rows_left = ncols > 0 ? r : 0;
    line = 0;
    quota = calls > 0 ? (rows_left * lines_per_row + calls - 1) / calls : 0;
  }
  bool active() const { return rows_left > 0; }
  void next() {
    if (rows_left <= 0) return;
    __builtin_prefetch(cur, 0, 2);
    cur += 64;
    if (++line == lines_per_row) {
      line = 0;
      cur += row_skip;
      --rows_left;
    }
  }
};

struct TileCtx {
  const float* C;
  int64_t r;
  int64_t col_end;
  ScoreHeaps heaps;
  Exclusions ex;
  QueryBars qb;
};

__attribute__((noinline)) inline void offer_lanes_cold(const TileCtx& t, int64_t q, const float* vals, int64_t col,
                                                        uint32_t mask) {
  offer_lanes(t.heaps, t.ex, t.qb, q, vals, col, mask);
}

// Queries [q0, q0 + MB) x strips [strip0, strip0 + S) (S strips of SW columns starting at global
// column col0); scale (kI8 only, else nullptr) points at the panel's scales of strip0's first column.
template <class V, int MB, int S>
inline void tile_kernel(const TileCtx& t, const float* strip0, int64_t strip_stride, int64_t q0, int64_t col0,
                        const float* scale, const float* ct, PanelPrefetcher& pf) {
  using Vec = typename V::Vec;
  constexpr int L = V::kLanes, SW = 2 * L;
  const int64_t r = t.r;
  // Loops over b and s are unrolled so acc lives in registers (GCC spills arrays it cannot scalarize).
  Vec acc[MB][S][2];
#pragma GCC unroll 16
  for (int b = 0; b < MB; ++b)
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s) acc[b][s][0] = acc[b][s][1] = V::zero();
  const float* c = ct;  // this tile's queries, transposed: c[j * MB + b] = C[q0 + b][j]
  const int64_t pf_step = pf.active() && pf.quota > 0 ? std::max<int64_t>(1, r / pf.quota) : r + 1;
  int64_t pf_countdown = pf_step;
  for (int64_t j = 0; j < r; ++j) {
    if (--pf_countdown == 0) {
      pf_countdown = pf_step;
      pf.next();
    }
    Vec e[S][2];
#pragma GCC unroll 4
    for (int s = 0; s < S; ++s) {
      e[s][0] = V::load(strip0 + s * strip_stride + j * SW);
      e[s][1] = V::load(strip0 + s * strip_stride + j * SW + L);
    }
#pragma GCC unroll 16
    for (int b = 0; b < MB; ++b) {
      const Vec cb = V::set1(c[j * MB + b]);
#pragma GCC unroll 4
      for (int s = 0; s < S; ++s) {
        acc[b][s][0] = V::fmadd(cb, e[s][0], acc[b][s][0]);
        acc[b][s][1] = V::fmadd(cb, e[s][1], acc[b][s][1]);
      }
    }
  }
  // Scores to memory once per tile (MB x S x 2 vectors), then the filter reads them from L1.
  alignas(64) float out[MB][S][2][L];
#pragma GCC unroll 4
  for (int s = 0; s < S; ++s)
#pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const Vec sc = scale != nullptr ? V::load(scale + s * SW + h * L) : V::zero();
#pragma GCC unroll 16
      for (int b = 0; b < MB; ++b) V::store(out[b][s][h], scale != nullptr ? V::mul(acc[b][s][h], sc) : acc[b][s][h]);
    }
  for (int b = 0; b < MB; ++b) {
    const int64_t q = q0 + b;
    for (int s = 0; s < S; ++s)
      for (int h = 0; h < 2; ++h) {
        const int64_t col = col0 + s * SW + h * L;
        if (col >= t.col_end) break;
        const uint32_t valid = t.col_end - col >= L ? uint32_t((uint64_t(1) << L) - 1)
                                                    : uint32_t((uint64_t(1) << (t.col_end - col)) - 1);
        const Vec v = V::load(out[b][s][h]);
        const uint32_t pass = t.qb.full[q] ? V::gt_mask(v, V::set1(t.qb.bar[q])) : V::ord_mask(v);
        const uint32_t mask = pass & valid;
        if (mask) offer_lanes_cold(t, q, out[b][s][h], col, mask);
      }
  }
}

// Calls body.template operator()<MB>() for 1 <= mb <= 12.
template <class F>
inline void dispatch_rows(int64_t mb, F&& body) {
  switch (mb) {
    case 1: return body.template operator()<1>();
    case 2: return body.template operator()<2>();
    case 3: return body.template operator()<3>();
    case 4: return body.template operator()<4>();
    case 5: return body.template operator()<5>();
    case 6: return body.template operator()<6>();
    case 7: return body.template operator()<7>();
    case 8: return body.template operator()<8>();
    case 9: return body.template operator()<9>();
    case 10: return body.template operator()<10>();
    case 11: return body.template operator()<11>();
    case 12: return body.template operator()<12>();
    case 13: return body.template operator()<13>();
    default: return body.template operator()<14>();
  }
}

// Bytes per element of E's storage type.
template <int ET>
constexpr int64_t kElemBytes = ET == kF32 ? 4 : ET == kBF16 ? 2 : 1;

template <class V, int ET>
inline typename V::Vec load_e_vec(const void* E, int64_t idx) {
  if constexpr (ET == kBF16)
    return V::load_bf16(static_cast<const uint16_t*>(E) + idx);
  else if constexpr (ET == kI8)
    return V::load_i8(static_cast<const int8_t*>(E) + idx);
  else
    return V::load(static_cast<const float*>(E) + idx);
}

// Few queries (bandwidth bound): no packing. A chunk of kDirectCols columns keeps per-query
// accumulators in L1; E is streamed row by row, four rows per pass (the accumulators are loaded
// and stored once per four FMAs, in the same j order), each row segment contiguous (4 KB of
// float32) so the hardware prefetcher streams it; the next four rows are prefetched in software.
constexpr int64_t kDirectCols = 1024;

template <class V, int ET, int NQ>
void scan_direct(const TileCtx& t, const void* E, const float* scales, int64_t ld, int64_t col_begin) {
  using Vec = typename V::Vec;
  constexpr int64_t L = V::kLanes;
  constexpr int64_t kLine = 64 / kElemBytes<ET>;  // elements per cache line
  const int64_t r = t.r;
  alignas(64) float acc[NQ][kDirectCols];
  for (int64_t col = col_begin; col < t.col_end; col += kDirectCols) {
    const int64_t ncols = std::min(kDirectCols, t.col_end - col);
    const int64_t nvec = ncols / L, padded = (ncols + L - 1) / L * L;
    for (int q = 0; q < NQ; ++q) std::fill(acc[q], acc[q] + padded, 0.0f);
    int64_t j = 0;
    for (; j + 4 <= r; j += 4) {
      Vec cv[NQ][4];
#pragma GCC unroll 4
      for (int q = 0; q < NQ; ++q)
#pragma GCC unroll 4
        for (int i = 0; i < 4; ++i) cv[q][i] = V::set1(t.C[q * r + j + i]);
      const int64_t row = j * ld + col;
      const bool pf = j + 8 <= r;
      for (int64_t v = 0; v < nvec; ++v) {
        const int64_t off = row + v * L;
        if (pf && (v * L) % kLine == 0)
#pragma GCC unroll 4
          for (int i = 0; i < 4; ++i)
            __builtin_prefetch(static_cast<const char*>(E) + (off + (4 + i) * ld) * kElemBytes<ET>);
        const Vec e0 = load_e_vec<V, ET>(E, off), e1 = load_e_vec<V, ET>(E, off + ld);
        const Vec e2 = load_e_vec<V, ET>(E, off + 2 * ld), e3 = load_e_vec<V, ET>(E, off + 3 * ld);
#pragma GCC unroll 4
        for (int q = 0; q < NQ; ++q) {
          Vec a = V::load(acc[q] + v * L);
          a = V::fmadd(cv[q][0], e0, a);
          a = V::fmadd(cv[q][1], e1, a);
          a = V::fmadd(cv[q][2], e2, a);
          a = V::fmadd(cv[q][3], e3, a);
          V::store(acc[q] + v * L, a);
        }
      }
      for (int64_t c = nvec * L; c < ncols; ++c)  // tail columns: the same fma chain, scalar
        for (int q = 0; q < NQ; ++q)
          for (int i = 0; i < 4; ++i)
            acc[q][c] = std::fma(t.C[q * r + j + i], e_value(E, ET, row + i * ld + c), acc[q][c]);
    }
    for (; j < r; ++j) {
      const int64_t row = j * ld + col;
      for (int64_t v = 0; v < nvec; ++v) {
        const Vec e = load_e_vec<V, ET>(E, row + v * L);
        for (int q = 0; q < NQ; ++q)
          V::store(acc[q] + v * L, V::fmadd(V::set1(t.C[q * r + j]), e, V::load(acc[q] + v * L)));
      }
      for (int64_t c = nvec * L; c < ncols; ++c)
        for (int q = 0; q < NQ; ++q) acc[q][c] = std::fma(t.C[q * r + j], e_value(E, ET, row + c), acc[q][c]);
    }
    if constexpr (ET == kI8)
      for (int q = 0; q < NQ; ++q)
        for (int64_t c = 0; c < ncols; ++c) acc[q][c] = acc[q][c] * scales[col + c];
    for (int q = 0; q < NQ; ++q)
      for (int64_t v = 0; v * L < ncols; ++v) {
        const int64_t left = ncols - v * L;
        const uint32_t valid = left >= L ? uint32_t((uint64_t(1) << L) - 1) : uint32_t((uint64_t(1) << left) - 1);
        const Vec x = V::load(acc[q] + v * L);
        const uint32_t pass = t.qb.full[q] ? V::gt_mask(x, V::set1(t.qb.bar[q])) : V::ord_mask(x);
        if (pass & valid) offer_lanes_cold(t, q, acc[q] + v * L, col + v * L, pass & valid);
      }
  }
}

// The float path handles every panel unless a PanelHook (cur_avx512vnni.cpp) takes it over:
// Hook(t, nq, r, rows_per_tile, nb, E, ld, scales) once per scan, then per panel, before the float
// packing, run_panel(col0, ncols, pf) returns true when it has offered the panel's columns.
struct NoPanelHook {
  NoPanelHook(const TileCtx&, int64_t, int64_t, int64_t, int64_t, const void*, int64_t, const float*) {}
  bool run_panel(int64_t, int64_t, PanelPrefetcher&) { return false; }
};
template <int ET>
using NoPanelHookFor = NoPanelHook;

template <class V, int ET, class Hook = NoPanelHook>
void scan_typed(EMBKERN_CUR_SCAN_ARGS) {
  (void)etype;
  constexpr int64_t L = V::kLanes, SW = 2 * L;
  // Panel width: about 512 KB of float32 (L2-resident), a multiple of SW, at most 512 columns.
  int64_t nb = (int64_t(128) * 1024) / (r > 0 ? r : 1);
  nb = std::max<int64_t>(SW, std::min<int64_t>(512, nb / SW * SW));
  std::vector<float> bar(size_t(nq), 0.0f);
  std::vector<uint8_t> full(size_t(nq), 0);
  for (int64_t q = 0; q < nq; ++q) {
    full[q] = heaps.size[q] == heaps.k;
    if (full[q]) bar[q] = heaps.vals[q * heaps.k];  // the root: worst kept
  }
  const TileCtx t{C, r, col_end, heaps, ex, QueryBars{bar.data(), full.data()}};
  switch (nq) {  // few queries: stream E without packing
    case 1: return scan_direct<V, ET, 1>(t, E, scales, ld, col_begin);
    case 2: return scan_direct<V, ET, 2>(t, E, scales, ld, col_begin);
    case 3: return scan_direct<V, ET, 3>(t, E, scales, ld, col_begin);
    case 4: return scan_direct<V, ET, 4>(t, E, scales, ld, col_begin);
    default: break;
  }
  AlignedFloats panel = aligned_floats(r * nb);
  AlignedFloats pscale = aligned_floats(nb);
  const int64_t tiles = (nq + V::kMaxRows - 1) / V::kMaxRows;
  const int64_t rows_per_tile = (nq + tiles - 1) / tiles;
  const int64_t strip_stride = r * SW;
  // Each query tile's rows of C transposed (r x mb, contiguous): the tile's broadcasts read one
  // pointer at constant offsets instead of mb row pointers (which spill).
  AlignedFloats ct = aligned_floats(nq * r);
  for (int64_t q0 = 0; q0 < nq; q0 += rows_per_tile) {
    const int64_t mb = std::min(rows_per_tile, nq - q0);
    for (int64_t b = 0; b < mb; ++b)
      for (int64_t j = 0; j < r; ++j) ct[q0 * r + j * mb + b] = C[(q0 + b) * r + j];
  }
  PanelPrefetcher pf;
  Hook hook(t, nq, r, rows_per_tile, nb, E, ld, scales);

  for (int64_t p = col_begin; p < col_end; p += nb) {
    const int64_t ncols = std::min(nb, col_end - p);
    const int64_t nstrips = (ncols + SW - 1) / SW;
    pf.start(E, kElemBytes<ET>, ld, r, p + ncols, std::min(nb, col_end - p - ncols), nstrips * tiles);
    if (hook.run_panel(p, ncols, pf)) continue;
    pack_panel<V, ET>(E, ld, r, p, ncols, panel.get());
    const float* sc = nullptr;
    if constexpr (ET == kI8) {
      for (int64_t c = 0; c < nstrips * SW; ++c) pscale[c] = c < ncols ? scales[p + c] : 0.0f;
      sc = pscale.get();
    }
    auto scale_at = [&](int64_t s) { return sc ? sc + s * SW : nullptr; };
    for (int64_t s = 0; s < nstrips; ++s) {
      const float* strip = panel.get() + s * strip_stride;
      for (int64_t q0 = 0; q0 < nq; q0 += rows_per_tile) {
        const int64_t mb = std::min(rows_per_tile, nq - q0);
        dispatch_rows(mb, [&]<int MB>() {
          if constexpr (MB <= V::kMaxRows) tile_kernel<V, MB, 1>(t, strip, strip_stride, q0, p + s * SW, scale_at(s), ct.get() + q0 * r, pf);
        });
      }
    }
  }
}

template <class V, template <int> class Hook = NoPanelHookFor>
void score_topk_scan_vec(EMBKERN_CUR_SCAN_ARGS) {
  if (nq == 0 || col_begin >= col_end || heaps.k == 0) return;
  switch (etype) {
    case kBF16: return scan_typed<V, kBF16, Hook<kBF16>>(C, nq, r, E, etype, scales, ld, col_begin, col_end, ex, heaps);
    case kI8: return scan_typed<V, kI8, Hook<kI8>>(C, nq, r, E, etype, scales, ld, col_begin, col_end, ex, heaps);
    default: return scan_typed<V, kF32, Hook<kF32>>(C, nq, r, E, etype, scales, ld, col_begin, col_end, ex, heaps);
  }
}

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::cur
