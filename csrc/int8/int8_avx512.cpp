// AVX-512BW int8 kernels for CPUs without VNNI (Skylake-X): top-k by vpmaddwd on int16
// sign-extended pairs (exact: 2 * 128 * 128 fits int32, unlike vpmaddubsw's saturating int16),
// and quantization.
#include <cstring>

#include "int8/int8_avx512_lanes.h"

namespace embkern::int8 {

namespace {
struct MaddLanes : Avx512Common {
  static constexpr int kPer = 2;
  static constexpr bool kBias = false;
  static constexpr bool kVectorTranspose = false;
  static int64_t transpose_group(int16_t*, const int8_t*, int64_t) { return 0; }
  using Elem = int16_t;
  using QElem = int16_t;
  static Elem to_elem(int8_t v) { return int16_t(v); }
  static void put_step(Elem* dst, const int8_t* src) {
    dst[0] = src[0];
    dst[1] = src[1];
  }
  static Vec load(const Elem* p) { return _mm512_load_si512(p); }
  static Vec bcast(const QElem* p) {
    int32_t w;
    std::memcpy(&w, p, 4);
    return _mm512_set1_epi32(w);
  }
  static Vec madd(Vec acc, Vec db, Vec q) { return _mm512_add_epi32(acc, _mm512_madd_epi16(db, q)); }
};
}  // namespace

void int8_topk_dot_avx512(EMBKERN_INT8_DOT_ARGS) {
  int8_topk_scan_vec<MaddLanes, false>(queries, nq, db, db_begin, db_end, dim, nullptr, nullptr, heaps);
}

void int8_topk_cos_avx512(EMBKERN_INT8_COS_ARGS) {
  int8_topk_scan_vec<MaddLanes, true>(queries, nq, db, db_begin, db_end, dim, q_inv_norm, db_inv_norm, heaps);
}

bool quantize_f32_avx512(EMBKERN_INT8_QUANT_ARGS) {
  const __m512 lo = _mm512_set1_ps(-128.f), hi = _mm512_set1_ps(127.f);
  __mmask16 bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + i * dim;
    int8_t* o = out + i * dim;
    for (int64_t d = 0; d < dim; d += 16) {
      const int64_t left = dim - d;
      const __mmask16 m = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
      const __m512 v = _mm512_maskz_loadu_ps(m, xr + d);
      // x - x is NaN exactly when x is NaN or +-Inf.
      bad |= _mm512_mask_cmp_ps_mask(m, _mm512_sub_ps(v, v), _mm512_setzero_ps(), _CMP_UNORD_Q);
      __m512 r = _mm512_div_ps(v, _mm512_mask_loadu_ps(_mm512_set1_ps(1.f), m, scale + d));
      r = _mm512_roundscale_ps(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, zero_point + d));
      r = _mm512_min_ps(_mm512_max_ps(r, lo), hi);
      _mm_mask_storeu_epi8(o + d, m, _mm512_cvtsepi32_epi8(_mm512_cvtps_epi32(r)));
    }
  }
  return bad == 0;
}

}  // namespace embkern::int8
