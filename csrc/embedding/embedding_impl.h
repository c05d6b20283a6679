// The embedding kernels, written once over a lane-traits class V and instantiated by each ISA
// translation unit with its own flags. V provides (A = accumulation type, Reg = kLanes of A):
//   zero(), set1(A), load<T>(const T*), load_part<T>(const T*, n)   (T -> A, exact),
//   add, fma(s, x, acc), div, store(A*, Reg), store_part(A*, Reg, n),
//   store_w<T>(T*, Reg), store_w_part<T>(T*, Reg, n)                 (A -> T, round to nearest even).
// A row of D elements is processed in blocks of up to kMaxRegs registers kept in registers across
// the rows of a bag (or the pairs of a unique row); the last register of a block may be partial.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "common/float_convert.h"
#include "common/isa_namespace.h"
#include "embedding/embedding_kernels.h"

namespace embkern::emb {
inline namespace EMBKERN_ISA_NS {

// ---- scalar conversions (bf16 / fp16 ones: common/float_convert.h) --------------------------------

inline float to_f32(float x) { return x; }
inline double to_f64(double x) { return x; }
template <class T>
struct Conv;
template <>
struct Conv<float> {
  static float in(float x) { return x; }
  static float out(float x) { return x; }
};
template <>
struct Conv<double> {
  static double in(double x) { return x; }
  static double out(double x) { return x; }
};
template <>
struct Conv<bf16_t> {
  static float in(bf16_t x) { return bf16_to_f32(x.x); }
  static bf16_t out(float x) { return bf16_t{f32_to_bf16(x)}; }
};
template <>
struct Conv<f16_t> {
  static float in(f16_t x) { return f16_to_f32(x.x); }
  static f16_t out(float x) { return f16_t{f32_to_f16(x)}; }
};

// Scalar lanes (the portable path; also the float64 path of every ISA).
template <class A_>
struct ScalarLanes {
  using A = A_;
  using Reg = A_;
  static constexpr int kLanes = 1;
  static Reg zero() { return A(0); }
  static Reg set1(A x) { return x; }
  template <class T>
  static Reg load(const T* p) { return A(Conv<T>::in(*p)); }
  template <class T>
  static Reg load_part(const T* p, int) { return load(p); }
  static Reg add(Reg a, Reg b) { return a + b; }
  static Reg fma(Reg s, Reg x, Reg acc) { return std::fma(s, x, acc); }
  static Reg div(Reg a, Reg b) { return a / b; }
  static void store(A* p, Reg r) { *p = r; }
  static void store_part(A* p, Reg r, int) { *p = r; }
  template <class T>
  static void store_w(T* p, Reg r) { *p = Conv<T>::out(r); }
  template <class T>
  static void store_w_part(T* p, Reg r, int) { store_w(p, r); }
};

constexpr int kMaxRegs = 8;       // registers of accumulators per block of a row
// (value, probe) rows hashed before accumulating: many times the prefetch distance, since the
// prefetches stop at the end of a block.
constexpr int64_t kBlockPairs = 2048;
constexpr int64_t kGradPrefetchAhead = 12;  // backward: pairs ahead

// Into L2 (T1): see kPrefetchRows. always_inline: GCC 12 can find a prefetch-only helper free of side
// effects and delete its calls before inlining them (seen with fastrp's equivalent helper).
[[gnu::always_inline]] inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 0, 2);
}

// Calls body.template operator()<NR, PART>() for NR registers, the last partial when PART.
template <int L, class F>
inline void dispatch_regs(int64_t dn, F&& body) {
  const int nr = int((dn + L - 1) / L);
  const bool part = dn % L != 0;
#define EMBKERN_EMB_CASE(N) \
  case N:                   \
    return part ? body.template operator()<N, true>() : body.template operator()<N, false>();
  switch (nr) {
    EMBKERN_EMB_CASE(1)
    EMBKERN_EMB_CASE(2)
    EMBKERN_EMB_CASE(3)
    EMBKERN_EMB_CASE(4)
    EMBKERN_EMB_CASE(5)
    EMBKERN_EMB_CASE(6)
    EMBKERN_EMB_CASE(7)
    default:
      return part ? body.template operator()<8, true>() : body.template operator()<8, false>();
  }
#undef EMBKERN_EMB_CASE
}

// ---- forward ------------------------------------------------------------------------------------

struct Segment {
  int64_t start, n;  // rows [start, start + n) of the block buffer
  int64_t out_off;   // element offset of the output slot
  bool accumulate;   // combine sum: out += pooled
};

// Pools rows[0..n) (scaled by scales[j] when given) over columns [d0, d0 + dn) into out.
template <class V, class T, int NR, bool PART>
inline __attribute__((always_inline)) void pool_block(const T* w, int64_t D, int64_t d0, int64_t dn,
                                                      const int64_t* rows, const typename V::A* scales, int64_t n,
                                                      int64_t pf_avail, typename V::A* out, bool mean,
                                                      bool accumulate, bool prefetch, int64_t pf) {
  using Reg = typename V::Reg;
  constexpr int L = V::kLanes;
  const int last = int(dn - (NR - 1) * L);
  Reg acc[NR];
#pragma GCC unroll 8
  for (int k = 0; k < NR; ++k) acc[k] = V::zero();
  const int64_t row_bytes = D * int64_t(sizeof(T));
  for (int64_t j = 0; j < n; ++j) {
    if (prefetch && j + pf < pf_avail) prefetch_bytes(w + rows[j + pf] * D, row_bytes);
    const T* r = w + rows[j] * D + d0;
    if (scales) {
      const Reg s = V::set1(scales[j]);
#pragma GCC unroll 8
      for (int k = 0; k < NR; ++k) {
        const Reg x = (PART && k == NR - 1) ? V::load_part(r + k * L, last) : V::load(r + k * L);
        acc[k] = V::fma(s, x, acc[k]);
      }
    } else {
#pragma GCC unroll 8
      for (int k = 0; k < NR; ++k) {
        const Reg x = (PART && k == NR - 1) ? V::load_part(r + k * L, last) : V::load(r + k * L);
        acc[k] = V::add(acc[k], x);
      }
    }
  }
  if (mean && n > 0) {
    const Reg cnt = V::set1(typename V::A(n));
#pragma GCC unroll 8
    for (int k = 0; k < NR; ++k) acc[k] = V::div(acc[k], cnt);
  }
  typename V::A* o = out + d0;
#pragma GCC unroll 8
  for (int k = 0; k < NR; ++k) {
    Reg v = acc[k];
    if (PART && k == NR - 1) {
      if (accumulate) v = V::add(V::load_part(o + k * L, last), v);
      V::store_part(o + k * L, v, last);
    } else {
      if (accumulate) v = V::add(V::load(o + k * L), v);
      V::store(o + k * L, v);
    }
  }
}

template <class V, class T>
void pool_segment(const T* w, int64_t D, const int64_t* rows, const typename V::A* scales, int64_t n, int64_t pf_avail,
                  typename V::A* out, bool mean, bool accumulate, int64_t pf = kPrefetchRows) {
  constexpr int64_t kBlock = int64_t(kMaxRegs) * V::kLanes;
  for (int64_t d0 = 0; d0 < D; d0 += kBlock) {
    const int64_t dn = std::min(kBlock, D - d0);
    dispatch_regs<V::kLanes>(dn, [&]<int NR, bool PART>() {
      pool_block<V, T, NR, PART>(w, D, d0, dn, rows, scales, n, pf_avail, out, mean, accumulate, d0 == 0 && pf > 0, pf);
    });
  }
}

// Hashes the bags of batch rows [b, ...) into rows / scales / segs until about kBlockPairs rows
// are queued; returns the first batch row not taken. Kept scalar: short loops (a bag has a few ids)
// gain nothing from vectorizing, and GCC's AVX-512 version of them measured slower.
template <class A>
__attribute__((noinline, optimize("no-tree-vectorize"))) int64_t hash_block(
    const ForwardArgs& a, int64_t b, int64_t b_end, std::vector<int64_t>& rows, std::vector<A>& scales,
    std::vector<Segment>& segs) {
  const MuxLayout& L = a.L;
  const A* psw = static_cast<const A*>(a.psw);
  const int64_t D = a.dim, B = L.batch, F = L.num_features;
  const bool concat = a.combine == kCombineConcat;
  rows.clear();
  scales.clear();
  segs.clear();
  for (; b < b_end && int64_t(rows.size()) < kBlockPairs; ++b) {
    for (int64_t f = 0; f < F; ++f) {
      const int64_t s = L.offsets[f * B + b], e = L.offsets[f * B + b + 1];
      const int64_t g0 = L.probe_offsets[f], g1 = L.probe_offsets[f + 1], n = e - s;
      const size_t at = rows.size();
      rows.resize(at + size_t(n * (g1 - g0)));
      int64_t* out = rows.data() + at;
      for (int64_t g = g0; g < g1; ++g)
        segs.push_back({int64_t(at) + (g - g0) * n, n, b * a.out_cols + (concat ? g * D : 0), !concat});
      for (int64_t i = 0; i < n; ++i) {
        const uint64_t pm = mix64(value_bits(L, s + i));
        for (int64_t g = g0; g < g1; ++g)
          out[(g - g0) * n + i] = probe_row(pm, L.keys[g], L.row_base[g], L.row_size[g]);
      }
      if (a.pair_keys) {
        uint64_t* k = a.pair_keys + a.pair_base[f] + (s - L.offsets[f * B]) * (g1 - g0);
        const uint64_t code = uint64_t(b) << a.probe_bits;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t g = g0; g < g1; ++g)
            k[i * (g1 - g0) + (g - g0)] = (uint64_t(out[(g - g0) * n + i]) << a.key_shift) | code | uint64_t(g);
      }
      if (psw)
        for (int64_t g = g0; g < g1; ++g) scales.insert(scales.end(), psw + s, psw + e);
    }
  }
  return b;
}

template <class V, class T>
void forward_pooled_t(const ForwardArgs& a, int64_t b_begin, int64_t b_end) {
  using A = typename V::A;
  const T* w = static_cast<const T*>(a.weight);
  A* out = static_cast<A*>(a.out);
  const int64_t D = a.dim;
  const bool mean = a.pooling == kPoolMean, concat = a.combine == kCombineConcat;
  std::vector<int64_t> rows;
  std::vector<A> scales;
  std::vector<Segment> segs;
  rows.reserve(size_t(kBlockPairs * 2));
  constexpr int64_t kBlock = int64_t(kMaxRegs) * V::kLanes;
  const auto run = [&]<int NR, bool PART>() {
    for (int64_t b = b_begin; b < b_end;) {
      const int64_t first = b;
      b = hash_block<A>(a, b, b_end, rows, scales, segs);
      if (!concat)
        for (int64_t r = first; r < b; ++r) std::fill(out + r * a.out_cols, out + r * a.out_cols + D, A(0));
      const int64_t total = int64_t(rows.size());
      const A* sc = a.psw ? scales.data() : nullptr;
      for (const Segment& sg : segs) {
        if constexpr (NR > 0) {  // the whole row in registers: one pass per bag
          pool_block<V, T, NR, PART>(w, D, 0, D, rows.data() + sg.start, sc ? sc + sg.start : nullptr, sg.n,
                                     total - sg.start, out + sg.out_off, mean, sg.accumulate, a.prefetch > 0,
                                     a.prefetch);
        } else {
          pool_segment<V, T>(w, D, rows.data() + sg.start, sc ? sc + sg.start : nullptr, sg.n, total - sg.start,
                             out + sg.out_off, mean, sg.accumulate, a.prefetch);
        }
      }
    }
  };
  if (D <= kBlock)
    dispatch_regs<V::kLanes>(D, run);
  else
    run.template operator()<0, false>();
}

template <class V, class T>
void forward_none_t(const ForwardArgs& a, int64_t f, int64_t i_begin, int64_t i_end) {
  using A = typename V::A;
  const MuxLayout& L = a.L;
  const T* w = static_cast<const T*>(a.weight);
  A* out = static_cast<A*>(a.out);
  const int64_t D = a.dim, g0 = L.probe_offsets[f], g1 = L.probe_offsets[f + 1], P = g1 - g0;
  std::vector<int64_t> rows;
  for (int64_t i0 = i_begin; i0 < i_end; i0 += kBlockPairs) {
    const int64_t i1 = std::min(i_end, i0 + kBlockPairs);
    rows.resize(size_t((i1 - i0) * P));
    for (int64_t i = i0; i < i1; ++i) {
      const uint64_t pm = mix64(value_bits(L, i));
      for (int64_t g = g0; g < g1; ++g)
        rows[size_t((i - i0) * P + (g - g0))] = probe_row(pm, L.keys[g], L.row_base[g], L.row_size[g]);
    }
    const int64_t total = int64_t(rows.size());
    for (int64_t j = 0; j < total; ++j) {
      const int64_t i = i0 + j / P, p = j % P;
      // combine sum: the value's probes are added into one D-wide slot, first probe stores.
      const bool concat = a.combine == kCombineConcat;
      pool_segment<V, T>(w, D, rows.data() + j, nullptr, 1, total - j, out + i * a.out_cols + (concat ? p * D : 0),
                         false, !concat && p > 0);
    }
  }
}

// ---- backward -----------------------------------------------------------------------------------

// Sum of squares in a fixed order shared by every path (CUDA included): lane j of 16 sums the
// elements d = j, j + 16, ... in increasing d with fma, then the lanes are folded 8, 4, 2, 1.
template <class A>
inline A sum_squares_16(const A* g, int64_t D) {
  A s[16] = {};
  for (int64_t d0 = 0; d0 < D; d0 += 16) {
    const int64_t n = std::min<int64_t>(16, D - d0);
    for (int64_t j = 0; j < n; ++j) s[j] = std::fma(g[d0 + j], g[d0 + j], s[j]);
  }
  for (int h = 8; h >= 1; h /= 2)
    for (int j = 0; j < h; ++j) s[j] = s[j] + s[j + h];
  return s[0];
}

template <class V, class T, int NR, bool PART>
inline __attribute__((always_inline)) void segment_block(const BackwardArgs& a, int64_t p0, int64_t p1, int64_t p_last,
                                                         uint64_t row, int64_t u, int64_t d0, int64_t dn,
                                                         typename V::A* rowbuf) {
  using A = typename V::A;
  using Reg = typename V::Reg;
  constexpr int L = V::kLanes;
  const int last = int(dn - (NR - 1) * L);
  const A* grad = static_cast<const A*>(a.grad);
  const A* scale = static_cast<const A*>(a.scale);
  const int gbits = a.probe_bits;
  const uint64_t gmask = (uint64_t(1) << gbits) - 1;
  const int64_t D = a.dim;
  Reg acc[NR];
#pragma GCC unroll 8
  for (int k = 0; k < NR; ++k) acc[k] = V::zero();
  if (a.slot_row == nullptr) {
    // Direct codes (unit scales): code >> probe_bits is the grad row itself, and fma(1, x, acc)
    // rounds exactly as x + acc. No per-value lookups, so the prefetch address is known at once.
    for (int64_t p = p0; p < p1; ++p) {
      const uint64_t code = a.codes[p] & a.code_mask;
      const A* src = grad + int64_t(code >> gbits) * a.grad_stride + a.g_col[int64_t(code & gmask)] + d0;
      if (p + kGradPrefetchAhead < p_last) {
        const uint64_t c2 = a.codes[p + kGradPrefetchAhead] & a.code_mask;
        prefetch_bytes(grad + int64_t(c2 >> gbits) * a.grad_stride + a.g_col[int64_t(c2 & gmask)] + d0,
                       dn * int64_t(sizeof(A)));
      }
#pragma GCC unroll 8
      for (int k = 0; k < NR; ++k) {
        const Reg x = (PART && k == NR - 1) ? V::load_part(src + k * L, last) : V::load(src + k * L);
        acc[k] = V::add(acc[k], x);
      }
    }
  } else {
    for (int64_t p = p0; p < p1; ++p) {
      const uint64_t code = a.codes[p] & a.code_mask;
      const int64_t i = int64_t(code >> gbits), g = int64_t(code & gmask);
      const A* src = grad + a.slot_row[i] * a.grad_stride + a.g_col[g] + d0;
      // The gradient slots are scattered over the [B, G*D] output gradient; a unique row has few
      // pairs, so prefetch across rows up to the end of this task's range.
      if (p + kGradPrefetchAhead < p_last) {
        const uint64_t c2 = a.codes[p + kGradPrefetchAhead] & a.code_mask;
        prefetch_bytes(grad + a.slot_row[int64_t(c2 >> gbits)] * a.grad_stride + a.g_col[int64_t(c2 & gmask)] + d0,
                       dn * int64_t(sizeof(A)));
      }
      const Reg s = V::set1(scale[i]);
#pragma GCC unroll 8
      for (int k = 0; k < NR; ++k) {
        const Reg x = (PART && k == NR - 1) ? V::load_part(src + k * L, last) : V::load(src + k * L);
        acc[k] = V::fma(s, x, acc[k]);
      }
    }
  }
  if (a.mode == kWriteRow) {
    A* o = static_cast<A*>(a.out) + (a.out_by_row ? int64_t(row) : u) * D + d0;
#pragma GCC unroll 8
    for (int k = 0; k < NR; ++k) {
      if (PART && k == NR - 1)
        V::store_part(o + k * L, acc[k], last);
      else
        V::store(o + k * L, acc[k]);
    }
  } else if (a.mode == kSgd) {
    T* w = static_cast<T*>(a.weight) + int64_t(row) * D + d0;
    const Reg neg_lr = V::set1(-A(a.lr));
#pragma GCC unroll 8
    for (int k = 0; k < NR; ++k) {
      if (PART && k == NR - 1)
        V::store_w_part(w + k * L, V::fma(neg_lr, acc[k], V::load_part(w + k * L, last)), last);
      else
        V::store_w(w + k * L, V::fma(neg_lr, acc[k], V::load(w + k * L)));
    }
  } else {  // rowwise adagrad: the whole row first (its squared norm scales the step)
    A* o = rowbuf + d0;
#pragma GCC unroll 8
    for (int k = 0; k < NR; ++k) {
      if (PART && k == NR - 1)
        V::store_part(o + k * L, acc[k], last);
      else
        V::store(o + k * L, acc[k]);
    }
  }
}

template <class V, class T, int NR, bool PART>
inline __attribute__((always_inline)) void scaled_update_block(T* w, const typename V::A* g, typename V::A neg_step,
                                                               int64_t dn) {
  using Reg = typename V::Reg;
  constexpr int L = V::kLanes;
  const int last = int(dn - (NR - 1) * L);
  const Reg s = V::set1(neg_step);
#pragma GCC unroll 8
  for (int k = 0; k < NR; ++k) {
    if (PART && k == NR - 1)
      V::store_w_part(w + k * L, V::fma(s, V::load_part(g + k * L, last), V::load_part(w + k * L, last)), last);
    else
      V::store_w(w + k * L, V::fma(s, V::load(g + k * L), V::load(w + k * L)));
  }
}

template <class V, class T>
void backward_segments_t(const BackwardArgs& a, int64_t u_begin, int64_t u_end) {
  using A = typename V::A;
  const int64_t D = a.dim;
  constexpr int64_t kBlock = int64_t(kMaxRegs) * V::kLanes;
  std::vector<A> rowbuf(a.mode == kRowwiseAdagrad ? size_t(D) : 0);
  const bool in_place = a.mode != kWriteRow;
  const bool walk = a.seg_start == nullptr;  // [u_begin, u_end) are pair indices
  const auto row_at = [&](int64_t q) { return a.rows[q] >> a.row_shift; };
  // Walking pairs, a task owns the rows whose first pair lies in its range: both ends move to the
  // next row start, so every row is summed whole by one task whatever the split.
  const auto row_start = [&](int64_t q) {
    while (q > 0 && q < a.num_pairs && row_at(q) == row_at(q - 1)) ++q;
    return q;
  };
  const int64_t u_first = walk ? row_start(u_begin) : u_begin, u_stop = walk ? row_start(u_end) : u_end;
  const int64_t p_last = walk ? u_stop : a.seg_start[u_end];
  // NR > 0: the whole row fits in NR registers, so the register count is dispatched once per call
  // instead of once per row; NR == 0: blocks of kBlock columns.
  const auto run = [&]<int NR, bool PART>() {
    for (int64_t u = u_first, p1 = 0; u < u_stop; u = walk ? p1 : u + 1) {
      const int64_t p0 = walk ? u : a.seg_start[u];
      p1 = p0 + 1;
      if (walk)
        while (p1 < u_stop && row_at(p1) == row_at(p0)) ++p1;
      else
        p1 = a.seg_start[u + 1];
      const uint64_t row = row_at(p0);
      // The weight row a few rows ahead, read-modify-written then (pairs ahead when walking: a row
      // has ~1.1-1.6 pairs).
      if (in_place) {
        const int64_t ahead = walk ? p0 + 6 : u + 4;
        if (ahead < u_stop)
          prefetch_bytes(static_cast<const T*>(a.weight) + int64_t(row_at(walk ? ahead : a.seg_start[ahead])) * D,
                         D * int64_t(sizeof(T)));
      }
      if constexpr (NR > 0) {
        segment_block<V, T, NR, PART>(a, p0, p1, p_last, row, u, 0, D, rowbuf.data());
      } else {
        for (int64_t d0 = 0; d0 < D; d0 += kBlock) {
          const int64_t dn = std::min(kBlock, D - d0);
          dispatch_regs<V::kLanes>(dn, [&]<int NR2, bool PART2>() {
            segment_block<V, T, NR2, PART2>(a, p0, p1, p_last, row, u, d0, dn, rowbuf.data());
          });
        }
      }
      if (a.mode == kRowwiseAdagrad) {
        // FBGEMM EXACT_ROWWISE_ADAGRAD: G_r += mean_d(g^2); w_r -= lr / (sqrt(G_r) + eps) * g_r.
        A* mom = static_cast<A*>(a.momentum) + row;
        const A m = *mom + sum_squares_16(rowbuf.data(), D) / A(D);
        *mom = m;
        const A step = A(a.lr) / (std::sqrt(m) + A(a.eps));
        T* w = static_cast<T*>(a.weight) + int64_t(row) * D;
        for (int64_t d0 = 0; d0 < D; d0 += kBlock) {
          const int64_t dn = std::min(kBlock, D - d0);
          dispatch_regs<V::kLanes>(dn, [&]<int NR2, bool PART2>() {
            scaled_update_block<V, T, NR2, PART2>(w + d0, rowbuf.data() + d0, -step, dn);
          });
        }
      }
    }
  };
  if (D <= kBlock)
    dispatch_regs<V::kLanes>(D, run);
  else
    run.template operator()<0, false>();
}

// Instantiates the three entry points of one ISA: F32/BF16/F16 weights go through lanes V,
// F64 weights through the scalar double lanes.
#define EMBKERN_EMB_DEFINE_ISA(SUFFIX, V)                                                                        \
  void forward_pooled_##SUFFIX(EMBKERN_EMB_FWD_ARGS) {                                                         \
    switch (a.wtype) {                                                                                         \
      case WType::F32: return forward_pooled_t<V, float>(a, b_begin, b_end);                                  \
      case WType::BF16: return forward_pooled_t<V, bf16_t>(a, b_begin, b_end);                                \
      case WType::F16: return forward_pooled_t<V, f16_t>(a, b_begin, b_end);                                  \
      case WType::F64: return forward_pooled_t<ScalarLanes<double>, double>(a, b_begin, b_end);               \
    }                                                                                                          \
  }                                                                                                            \
  void forward_none_##SUFFIX(EMBKERN_EMB_NONE_ARGS) {                                                          \
    switch (a.wtype) {                                                                                         \
      case WType::F32: return forward_none_t<V, float>(a, feature, i_begin, i_end);                           \
      case WType::BF16: return forward_none_t<V, bf16_t>(a, feature, i_begin, i_end);                        \
      case WType::F16: return forward_none_t<V, f16_t>(a, feature, i_begin, i_end);                           \
      case WType::F64: return forward_none_t<ScalarLanes<double>, double>(a, feature, i_begin, i_end);        \
    }                                                                                                          \
  }                                                                                                            \
  void backward_segments_##SUFFIX(EMBKERN_EMB_BWD_ARGS) {                                                      \
    switch (a.wtype) {                                                                                         \
      case WType::F32: return backward_segments_t<V, float>(a, u_begin, u_end);                               \
      case WType::BF16: return backward_segments_t<V, bf16_t>(a, u_begin, u_end);                            \
      case WType::F16: return backward_segments_t<V, f16_t>(a, u_begin, u_end);                              \
      case WType::F64: return backward_segments_t<ScalarLanes<double>, double>(a, u_begin, u_end);            \
    }                                                                                                          \
  }

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::emb
