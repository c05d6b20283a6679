// Row helpers shared by every ISA's fastrp kernels (compiled per ISA; see common/isa_namespace.h).
// The arithmetic uses explicit fma so that the scalar twin (no -mfma: a libm call) and the
// vector paths (one instruction) round identically: every ISA gives the same bits.
#pragma once
#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "common/float_convert.h"
#include "common/isa_namespace.h"
#include "fastrp/fastrp_hash.h"
#include "fastrp/fastrp_kernels.h"

namespace embkern::fastrp {
inline namespace EMBKERN_ISA_NS {

// Sum of squares in a fixed order: 16 lane partials (column c goes to lane c % 16), then a
// pairwise tree, so every ISA can form it with the same bits. (x(c): column c of the row, fp32 or
// widened bf16)
template <class X>
inline float row_sumsq_of(X&& x, int64_t d) {
  float part[16] = {0.f};
  int64_t c = 0;
  for (; c + 16 <= d; c += 16)
    for (int l = 0; l < 16; ++l) part[l] = std::fma(x(c + l), x(c + l), part[l]);
  for (int l = 0; c + l < d; ++l) part[l] = std::fma(x(c + l), x(c + l), part[l]);
  for (int w = 8; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) part[l] += part[l + w];
  return part[0];
}

#if defined(__AVX2__)
// The vector forms of the same sum keep part[l] in lane l and add the same pairs (fp32 addition is
// commutative, so only the pairing matters): the same bits as row_sumsq_of, which GCC compiled to 16
// scalar fma chains with the partials spilled to the stack. This is the tree after its first level,
// h[l] = part[l] + part[l + 8].
inline float tree_sum_of_halves(__m256 h) {
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));  // l + (l + 4)
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));                                          // l + (l + 2)
  return _mm_cvtss_f32(_mm_add_ss(q, _mm_movehdup_ps(q)));                         // 0 + 1
}
#endif

#if defined(__AVX512F__)
// AVX-512: the 16 partials in one zmm. load(c, mask) gives columns c .. c + 15 as fp32 (masked lanes 0).
template <class Load>
inline float row_sumsq_avx512(Load&& load, int64_t d) {
  __m512 part = _mm512_setzero_ps();
  int64_t c = 0;
  for (; c + 16 <= d; c += 16) {
    const __m512 x = load(c, __mmask16(0xFFFF));
    part = _mm512_fmadd_ps(x, x, part);
  }
  if (c < d) {
    const __mmask16 m = __mmask16((1u << (d - c)) - 1u);
    const __m512 x = load(c, m);
    part = _mm512_mask3_fmadd_ps(x, x, part, m);
  }
  return tree_sum_of_halves(_mm256_add_ps(_mm512_castps512_ps256(part), _mm512_extractf32x8_ps(part, 1)));
}
inline __m512 load_f32x16(const float* p, int64_t c, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p + c); }
inline __m512 load_f32x16(const uint16_t* bf16, int64_t c, __mmask16 m) {
  return bf16x16_to_f32(_mm256_maskz_loadu_epi16(m, bf16 + c));
}
#endif

inline float as_f32(float x) { return x; }
inline float as_f32(uint16_t bf16) { return bf16_to_f32(bf16); }

#if defined(__AVX2__) && !defined(__AVX512F__)
// AVX2: part[0..7] and part[8..15] in two ymm. A tail goes through a zero-padded copy:
// fma(0, 0, p) == p leaves the unused partials alone.
template <class T>
inline float row_sumsq_avx2(const T* row, int64_t d) {
  __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
  alignas(32) float pad[16];
  for (int64_t c = 0; c < d; c += 16) {
    __m256 a, b;
    if (c + 16 > d) {
      for (int l = 0; l < 16; ++l) pad[l] = c + l < d ? as_f32(row[c + l]) : 0.f;
      a = _mm256_load_ps(pad);
      b = _mm256_load_ps(pad + 8);
    } else if constexpr (std::is_same_v<T, float>) {
      a = _mm256_loadu_ps(row + c);
      b = _mm256_loadu_ps(row + c + 8);
    } else {
      a = bf16x8_to_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c)));
      b = bf16x8_to_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + c + 8)));
    }
    lo = _mm256_fmadd_ps(a, a, lo);
    hi = _mm256_fmadd_ps(b, b, hi);
  }
  return tree_sum_of_halves(_mm256_add_ps(lo, hi));
}
#endif

// 1 / ||row|| of d fp32 or bf16 (uint16 bits) values; 0 for a zero row (and for an inf or NaN sum).
template <class T>
inline float inv_norm(const T* row, int64_t d) {
#if defined(__AVX512F__)
  const float ss = row_sumsq_avx512([row](int64_t c, __mmask16 m) { return load_f32x16(row, c, m); }, d);
#elif defined(__AVX2__)
  const float ss = row_sumsq_avx2(row, d);
#else
  const float ss = row_sumsq_of([row](int64_t c) { return as_f32(row[c]); }, d);
#endif
  return ss > 0.f ? 1.0f / std::sqrt(ss) : 0.f;
}

// A row of d elements at `row` is whole 64-byte lines (what a streamed store writes).
template <class T>
inline bool whole_lines(const T* row, int64_t d) {
  return (reinterpret_cast<uintptr_t>(row) & 63) == 0 && d % (64 / int64_t(sizeof(T))) == 0;
}

// Writes dst[c] = value(c) for c in [0, d). With `stream`, on an ISA with non-temporal stores and a
// row of whole 64-byte lines, the row is assembled 64 bytes at a time and streamed: no read for
// ownership of its lines, and it does not evict the iterate the same SpMM is gathering (a bf16
// iterate at P5's size is 256 MB, about the L3). end_row_stores() orders the streams before the
// caller's threads join.
template <class T, class Value>
inline void write_row(T* dst, int64_t d, bool stream, Value&& value) {
#if defined(__AVX2__)
  constexpr int64_t kLine = 64 / int64_t(sizeof(T));
  if (stream && whole_lines(dst, d)) {
    alignas(64) T line[kLine];
    for (int64_t c0 = 0; c0 < d; c0 += kLine) {
      for (int64_t c = 0; c < kLine; ++c) line[c] = value(c0 + c);
#if defined(__AVX512F__)
      _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + c0), _mm512_load_si512(line));
#else
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + c0), _mm256_load_si256(reinterpret_cast<const __m256i*>(line)));
      _mm256_stream_si256(reinterpret_cast<__m256i*>(dst + c0) + 1,
                          _mm256_load_si256(reinterpret_cast<const __m256i*>(line) + 1));
#endif
    }
    return;
  }
#endif
  (void)stream;
  for (int64_t c = 0; c < d; ++c) dst[c] = value(c);
}

inline void end_row_stores() {
#if defined(__AVX2__)
  _mm_sfence();
#endif
}

#if defined(__AVX512F__)
// y's row = v (times `scale` when `scaled`), fp32 or bf16, 64 bytes per store; streamed when asked
// and the row is whole aligned lines (see write_row). The same bits as write_row's scalar values.
inline void write_y_row_avx512(void* y, bool bf16, int64_t row, const float* v, int64_t d, bool scaled, float scale,
                               bool stream) {
  const __m512 sc = _mm512_set1_ps(scale);
  const auto value = [&](int64_t c, __mmask16 m) {
    const __m512 x = _mm512_maskz_loadu_ps(m, v + c);
    return scaled ? _mm512_mul_ps(x, sc) : x;
  };
  const auto tail = [&](int64_t c) { return d - c >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (d - c)) - 1u); };
  if (bf16) {
    uint16_t* dst = static_cast<uint16_t*>(y) + row * d;
    const bool nt = stream && whole_lines(dst, d);
    int64_t c = 0;
    for (; c + 32 <= d; c += 32) {
      const __m512i line = _mm512_inserti64x4(_mm512_castsi256_si512(f32x16_to_bf16(value(c, __mmask16(0xFFFF)))),
                                              f32x16_to_bf16(value(c + 16, __mmask16(0xFFFF))), 1);
      if (nt)
        _mm512_stream_si512(reinterpret_cast<__m512i*>(dst + c), line);
      else
        _mm512_storeu_si512(dst + c, line);
    }
    for (; c < d; c += 16) _mm256_mask_storeu_epi16(dst + c, tail(c), f32x16_to_bf16(value(c, tail(c))));
  } else {
    float* dst = static_cast<float*>(y) + row * d;
    const bool nt = stream && whole_lines(dst, d);
    for (int64_t c = 0; c < d; c += 16) {
      if (nt)
        _mm512_stream_ps(dst + c, value(c, __mmask16(0xFFFF)));
      else
        _mm512_mask_storeu_ps(dst + c, tail(c), value(c, tail(c)));
    }
  }
}
#endif

// The fused epilogue of one row: v (d floats, already row-scaled; used as scratch) -> y, acc. `overwrite_acc`
// writes acc instead of adding to it (initialization). `y_stream` writes y with write_row's
// streams; an acc assembled from acc_src is always streamed (it is the finished output).
inline void row_epilogue(float* v, int64_t d, int64_t row, void* y, bool y_bf16, bool y_normalize, float* acc,
                         float acc_weight, bool acc_normalize, bool overwrite_acc, const void* acc_src = nullptr,
                         bool acc_src_bf16 = false, float acc_src_weight = 0.f, bool acc_src_normalize = false,
                         bool y_stream = false) {
  const bool need_norm = (y && y_normalize) || (acc && acc_normalize);
  const float inv = need_norm ? inv_norm(v, d) : 1.f;
  if (y) {
    const float sy = y_normalize ? inv : 1.f;
#if defined(__AVX512F__)
    write_y_row_avx512(y, y_bf16, row, v, d, y_normalize, sy, y_stream);
#else
    if (y_bf16)
      write_row(static_cast<uint16_t*>(y) + row * d, d, y_stream,
                [&](int64_t c) { return f32_to_bf16(y_normalize ? v[c] * sy : v[c]); });
    else
      write_row(static_cast<float*>(y) + row * d, d, y_stream,
                [&](int64_t c) { return y_normalize ? v[c] * sy : v[c]; });
#endif
  }
  if (!acc) return;
  float* ar = acc + row * d;
  if (acc_src) {
    // acc[r] = the pending term of acc_src (exactly as its own overwrite would have made it) plus
    // this term, written once: acc is not read.
    const float* sr = static_cast<const float*>(acc_src) + row * d;
    const uint16_t* br = static_cast<const uint16_t*>(acc_src) + row * d;
    const auto s_at = [&](int64_t c) { return acc_src_bf16 ? bf16_to_f32(br[c]) : sr[c]; };
    const float sinv = !acc_src_normalize ? 1.f : acc_src_bf16 ? inv_norm(br, d) : inv_norm(sr, d);
#if defined(__AVX512F__)
    if (whole_lines(ar, d)) {  // one stream per 16 columns
      const __m512 ws = _mm512_set1_ps(acc_src_weight), si = _mm512_set1_ps(sinv);
      const __m512 wa = _mm512_set1_ps(acc_weight), vi = _mm512_set1_ps(inv);
      for (int64_t c = 0; c < d; c += 16) {
        const __m512 s = acc_src_bf16 ? load_f32x16(br, c, __mmask16(0xFFFF)) : _mm512_loadu_ps(sr + c);
        const __m512 pending = _mm512_mul_ps(ws, acc_src_normalize ? _mm512_mul_ps(s, si) : s);
        const __m512 x = _mm512_loadu_ps(v + c);
        _mm512_stream_ps(ar + c, _mm512_fmadd_ps(wa, acc_normalize ? _mm512_mul_ps(x, vi) : x, pending));
      }
      return;
    }
#endif
    // The sum goes to v first (dead after this row), then streams from there: a line assembled
    // straight from the bf16 loads is written as 32-byte halves and read back as one 64-byte vector,
    // a store-forwarding stall per line (~4% of a bf16 call's CPU time at P5's size).
    for (int64_t c = 0; c < d; ++c) {
      const float pending = acc_src_normalize ? acc_src_weight * (s_at(c) * sinv) : acc_src_weight * s_at(c);
      v[c] = std::fma(acc_weight, acc_normalize ? v[c] * inv : v[c], pending);
    }
    write_row(ar, d, true, [&](int64_t c) { return v[c]; });
  } else if (overwrite_acc) {
    if (acc_weight == 0.f) {
      std::memset(ar, 0, size_t(d) * 4);
    } else if (acc_normalize) {
      for (int64_t c = 0; c < d; ++c) ar[c] = acc_weight * (v[c] * inv);
    } else {
      for (int64_t c = 0; c < d; ++c) ar[c] = acc_weight * v[c];
    }
  } else if (acc_normalize) {
    for (int64_t c = 0; c < d; ++c) ar[c] = std::fma(acc_weight, v[c] * inv, ar[c]);
  } else {
    for (int64_t c = 0; c < d; ++c) ar[c] = std::fma(acc_weight, v[c], ar[c]);
  }
}

// Gathered rows are prefetched this many entries ahead into L2 (T1). Hints T0/T1/none and distances
// 2..32 were measured first (T1 best; T0 fills the line buffers and L1 with rows needed much later);
// at P5's size 48 then took the fp32 pipeline from 661-666 to 585-613 ms (the last SpMM 241-254 ->
// 215-218 ms; 96 no better), with bf16 rows unchanged.
constexpr int64_t kGatherAhead = 48;

// Prefetches the `bytes` of x's row ids[j] (elements of esize bytes) from column c0 on, into
// L2, when entry j exists. Prefetch helpers are always_inline: GCC 12 otherwise finds them free of
// side effects (they only read memory) and deletes their calls before inlining, prefetches and all.
template <class Ids>
[[gnu::always_inline]] inline void prefetch_x_row(const SpmmArgs& a, const Ids& ids, int64_t j, int64_t c0, int64_t esize,
                                                  int64_t bytes) {
  if (j >= a.nnz) return;
  const char* p = static_cast<const char*>(a.x) + (ids[j] * a.d + c0) * esize;
  for (int64_t l = 0; l < bytes; l += 64) __builtin_prefetch(p + l, 0, 2);  // locality 2: T1
}

inline float entry_weight(const SpmmArgs& a, int64_t j) { return a.weights ? a.weights[j] : 1.f; }

// f(std::integral_constant<int, count>()) for count in [1, 8] (larger counts give 8): the vector
// kernels take their number of accumulators per column block as a template parameter, so that the
// accumulators stay in registers.
template <class F>
inline void with_vector_count(int count, F&& f) {
  switch (count) {
    case 1: return f(std::integral_constant<int, 1>());
    case 2: return f(std::integral_constant<int, 2>());
    case 3: return f(std::integral_constant<int, 3>());
    case 4: return f(std::integral_constant<int, 4>());
    case 5: return f(std::integral_constant<int, 5>());
    case 6: return f(std::integral_constant<int, 6>());
    case 7: return f(std::integral_constant<int, 7>());
    default: return f(std::integral_constant<int, 8>());
  }
}

// The pending term's row (SpmmArgs::acc_src) is read once, by the epilogue, after the row's random
// gathers, which keep the hardware prefetcher from following the sequential stream: fetch it two rows
// early (the last SpMM at P5's size: ~18 ms faster in fp32 and bf16).
[[gnu::always_inline]] inline void prefetch_acc_src(const SpmmArgs& a, int64_t row, int64_t row_end) {
  constexpr int64_t kAhead = 2;
  if (!a.acc_src || row + kAhead >= row_end) return;
  const int64_t bytes = a.d * (a.acc_src_bf16 ? 2 : 4);
  const char* p = static_cast<const char*>(a.acc_src) + (row + kAhead) * bytes;
  for (int64_t l = 0; l < bytes; l += 64) __builtin_prefetch(p + l, 0, 3);
}

inline void apply_row_scale(float* v, int64_t d, const float* row_scale, int64_t row) {
  if (!row_scale) return;
  const float s = row_scale[row];
  for (int64_t c = 0; c < d; ++c) v[c] *= s;
}

// See degree_rows in fastrp_kernels.h. 4096 rows at a time: their entries are one contiguous range,
// checked by flat loops that count offenders (count reductions vectorize; bool reductions did not),
// then summed per row while still in L2. A block whose weights are all 1 takes the counts (the same
// doubles) and skips the chain of dependent adds.
inline DegreeFlags degree_rows_impl(const DegreeArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t* ip = a.indptr;
  const float* w = a.weights;
  uint64_t bad = 0, not_one = 0;
  for (int64_t b = row_begin; b < row_end; b += 4096) {
    const int64_t e = std::min(row_end, b + 4096);
    with_typed_ids(a.indices, [&](const auto& ids) {
      for (int64_t j = ip[b]; j < ip[e]; ++j) bad += bad_index(ids[j], a.n);
    });
    uint64_t block_not_one = 0;
    if (w)
      for (int64_t j = ip[b]; j < ip[e]; ++j) {
        bad += bad_graph_weight(w[j]);
        block_not_one += w[j] != 1.f;
      }
    not_one += block_not_one;
    const bool counts = !w || block_not_one == 0;
    for (int64_t r = b; r < e; ++r) {
      double deg = 0.0;
      if (counts)
        deg = double(ip[r + 1] - ip[r]);
      else
        for (int64_t j = ip[r]; j < ip[r + 1]; ++j) deg += w[j];
      a.inv_deg[r] = deg > 0 ? float(1.0 / deg) : 0.f;
      a.lscale[r] = deg > 0 && a.beta != 0.0 ? float(std::pow(deg, a.beta)) : 1.f;  // pow(x, 0) == 1: skip libm
    }
  }
  DegreeFlags f;
  f.bad_entry = bad != 0;
  f.non_unit = not_one != 0;
  return f;
}

// v[0 .. n) = R[row_state, 0 .. n): the portable version of the hash loop.
inline void fill_random_scalar(uint64_t row_state, float* v, int64_t n, uint64_t threshold, float sqrt_s) {
  for (int64_t c = 0; c < n; ++c) v[c] = rp_entry(row_state, c, threshold, sqrt_s);
}

// Sign codes of R[row_state, 0 .. n) (see SpmmArgs::x_codes): ceil(n / 16) words of 2-bit fields.
inline void fill_codes_scalar(uint64_t row_state, uint32_t* words, int64_t n, uint64_t threshold) {
  for (int64_t w = 0; w < code_words_of(n); ++w) words[w] = 0;
  for (int64_t c = 0; c < n; ++c) words[c >> 4] |= rp_sign_code(row_state, c, threshold) << (2 * (c & 15));
}

// The magnitude of coded row src.
inline float code_magnitude(const SpmmArgs& a, int64_t src) {
  if (!a.code_row_magnitude) return a.code_magnitude;
  float v;
  std::memcpy(&v, a.x_codes + src * a.code_stride + a.code_words, 4);
  return v;
}

// x[src, c] of a coded matrix (scalar tails and the scalar path).
inline float code_value(const SpmmArgs& a, int64_t src, int64_t c) {
  const uint32_t field = (a.x_codes[src * a.code_stride + (c >> 4)] >> (2 * (c & 15))) & 3u;
  const float v = code_magnitude(a, src);
  return field == 1u ? v : (field == 2u ? -v : 0.f);
}

// The initial matrix; `fill_random` / `fill_codes` are the ISA's versions of fill_random_scalar /
// fill_codes_scalar (bit-identical). With a.codes the rows of L R are stored as sign codes (y unused).
template <class FillRandom, class FillCodes>
inline void init_rows_impl(const InitArgs& a, int64_t row_begin, int64_t row_end, FillRandom&& fill_random,
                           FillCodes&& fill_codes) {
  std::vector<float> v(static_cast<size_t>(a.dim));
  const int64_t fdim = a.dim - a.rand_dim;
  const int64_t cw = code_words_of(a.dim), stride = code_stride_of(a.dim, a.code_row_magnitude);
  for (int64_t r = row_begin; r < row_end; ++r) {
    const int64_t key = a.keys ? a.keys[r] : r;
    const uint64_t rs = rp_row_state(a.seed_state, key);
    if (a.codes) {
      uint32_t* row = a.codes + r * stride;
      fill_codes(rs, row, a.dim, a.threshold);
      int64_t used = cw;
      if (a.code_row_magnitude) {
        const float val = code_magnitude_of(a.sqrt_s, a.row_scale, r, a.vals_bf16);
        std::memcpy(row + used++, &val, 4);
      }
      std::memset(row + used, 0, size_t(stride - used) * 4);  // padding: no uninitialized bytes
      if (!a.y && !a.acc) continue;
    }
    fill_random(rs, v.data(), a.rand_dim, a.threshold, a.sqrt_s);
    if (fdim > 0) {
      float* fv = v.data() + a.rand_dim;
      std::memset(fv, 0, size_t(fdim) * 4);
      const float* fr = a.features + r * a.num_features;
      for (int64_t p = 0; p < a.num_features; ++p) {
        const float f = fr[p];
        if (f == 0.f) continue;  // skipping exact zeros changes nothing (fma(0, x, y) == y for finite x)
        const float* pr = a.feature_proj + p * fdim;
        for (int64_t c = 0; c < fdim; ++c) fv[c] = std::fma(f, pr[c], fv[c]);
      }
    }
    apply_row_scale(v.data(), a.dim, a.row_scale, r);
    row_epilogue(v.data(), a.dim, r, a.y, a.y_bf16, false, a.acc, a.acc_weight, a.acc_normalize, true);
  }
}

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::fastrp
