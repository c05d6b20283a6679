// AVX2 + FMA fused score + top-k: 8-lane FMA, register tile of up to 6 queries x 16 columns.
#include <immintrin.h>

#include "common/float_convert.h"
#include "cur/cur_scan_impl.h"

namespace embkern::cur {

namespace {
struct V256 {
  static constexpr int kLanes = 8;
  static constexpr int kMaxRows = 6;  // 12 accumulators + 2 strip vectors + 1 broadcast of 16 ymm
  using Vec = __m256;
  static Vec zero() { return _mm256_setzero_ps(); }
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static Vec set1(float x) { return _mm256_set1_ps(x); }
  static Vec fmadd(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
  static Vec mul(Vec a, Vec b) { return _mm256_mul_ps(a, b); }
  static uint32_t gt_mask(Vec a, Vec b) { return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(a, b, _CMP_GT_OQ))); }
  static uint32_t ord_mask(Vec a) { return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(a, a, _CMP_ORD_Q))); }
  static Vec load_bf16(const uint16_t* p) { return bf16x8_to_f32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static Vec load_i8(const int8_t* p) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
};
}  // namespace

void score_topk_scan_avx2(EMBKERN_CUR_SCAN_ARGS) {
  score_topk_scan_vec<V256>(C, nq, r, E, etype, scales, ld, col_begin, col_end, ex, heaps);
}

}  // namespace embkern::cur
