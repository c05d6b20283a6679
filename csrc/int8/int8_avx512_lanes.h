// AVX-512 lane pieces shared by int8_avx512.cpp (vpmaddwd) and int8_avx512vnni.cpp (vpdpbusd):
// everything but the multiply-add and the transposed element type.
#pragma once
#include <immintrin.h>

// GCC 12 flags the deliberately undefined pass-through operand inside _mm512_roundscale_ps,
// _mm512_max_ps and friends (a false positive in its own intrinsic headers).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#include "int8/int8_scan_impl.h"

namespace embkern::int8 {
inline namespace EMBKERN_ISA_NS {

struct Avx512Common {
  static constexpr int kLanes = 16;
  static constexpr int kQT = 8;  // 8 queries x 2 groups = 16 accumulators, + 2 loads + 1 broadcast
  using Vec = __m512i;
  static Vec load_i32(const int32_t* p) { return _mm512_load_si512(p); }
  static Vec set1(int32_t v) { return _mm512_set1_epi32(v); }
  static uint32_t gt_mask(Vec a, int32_t bar) { return _mm512_cmpgt_epi32_mask(a, _mm512_set1_epi32(bar)); }
  static __m512 cos_scores(Vec a, const float* db_inv, float q_inv) {
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_load_ps(db_inv)), _mm512_set1_ps(q_inv));
  }
  static uint32_t gt_mask_f(Vec a, const float* db_inv, float q_inv, float bar) {
    return _mm512_cmp_ps_mask(cos_scores(a, db_inv, q_inv), _mm512_set1_ps(bar), _CMP_GT_OQ);
  }
  static void store(int32_t* out, Vec a) { _mm512_store_si512(out, a); }
  static void store_f(float* out, Vec a, const float* db_inv, float q_inv) {
    _mm512_store_ps(out, cos_scores(a, db_inv, q_inv));
  }
};

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::int8
