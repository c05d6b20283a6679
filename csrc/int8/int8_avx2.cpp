// AVX2 int8 kernels: top-k by vpmaddwd on int16 sign-extended pairs (8 rows per ymm), and
// quantization.
#include <immintrin.h>

#include <cmath>
#include <cstring>

#include "int8/int8_scan_impl.h"

namespace embkern::int8 {

namespace {
struct Avx2Lanes {
  static constexpr int kLanes = 8;
  static constexpr int kPer = 2;
  static constexpr int kQT = 6;  // 6 queries x 2 groups = 12 accumulators, + 2 loads + 1 broadcast
  static constexpr bool kBias = false;
  static constexpr bool kVectorTranspose = false;
  static int64_t transpose_group(int16_t*, const int8_t*, int64_t) { return 0; }
  using Elem = int16_t;
  using QElem = int16_t;
  using Vec = __m256i;
  static Elem to_elem(int8_t v) { return int16_t(v); }
  static void put_step(Elem* dst, const int8_t* src) {
    dst[0] = src[0];
    dst[1] = src[1];
  }
  static Vec load_i32(const int32_t* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
  static Vec set1(int32_t v) { return _mm256_set1_epi32(v); }
  static Vec load(const Elem* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
  static Vec bcast(const QElem* p) {
    int32_t w;
    std::memcpy(&w, p, 4);
    return _mm256_set1_epi32(w);
  }
  static Vec madd(Vec acc, Vec db, Vec q) { return _mm256_add_epi32(acc, _mm256_madd_epi16(db, q)); }
  static uint32_t gt_mask(Vec a, int32_t bar) {
    return uint32_t(_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(a, _mm256_set1_epi32(bar)))));
  }
  static __m256 cos_scores(Vec a, const float* db_inv, float q_inv) {
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_load_ps(db_inv)), _mm256_set1_ps(q_inv));
  }
  static uint32_t gt_mask_f(Vec a, const float* db_inv, float q_inv, float bar) {
    return uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(cos_scores(a, db_inv, q_inv), _mm256_set1_ps(bar), _CMP_GT_OQ)));
  }
  static void store(int32_t* out, Vec a) { _mm256_store_si256(reinterpret_cast<__m256i*>(out), a); }
  static void store_f(float* out, Vec a, const float* db_inv, float q_inv) {
    _mm256_store_ps(out, cos_scores(a, db_inv, q_inv));
  }
};
}  // namespace

void int8_topk_dot_avx2(EMBKERN_INT8_DOT_ARGS) {
  int8_topk_scan_vec<Avx2Lanes, false>(queries, nq, db, db_begin, db_end, dim, nullptr, nullptr, heaps);
}

void int8_topk_cos_avx2(EMBKERN_INT8_COS_ARGS) {
  int8_topk_scan_vec<Avx2Lanes, true>(queries, nq, db, db_begin, db_end, dim, q_inv_norm, db_inv_norm, heaps);
}

bool quantize_f32_avx2(EMBKERN_INT8_QUANT_ARGS) {
  const __m256 lo = _mm256_set1_ps(-128.f), hi = _mm256_set1_ps(127.f);
  __m256 bad = _mm256_setzero_ps();
  bool tail_ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + i * dim;
    int8_t* o = out + i * dim;
    int64_t d = 0;
    for (; d + 8 <= dim; d += 8) {
      const __m256 v = _mm256_loadu_ps(xr + d);
      bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_sub_ps(v, v), _mm256_setzero_ps(), _CMP_UNORD_Q));
      __m256 r = _mm256_round_ps(_mm256_div_ps(v, _mm256_loadu_ps(scale + d)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      r = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(r, _mm256_loadu_ps(zero_point + d)), lo), hi);
      const __m256i iv = _mm256_cvtps_epi32(r);  // exact: already integral and in [-128, 127]
      const __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(iv), _mm256_extracti128_si256(iv, 1));
      const __m128i b = _mm_packs_epi16(w, w);
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o + d), b);
    }
    for (; d < dim; ++d) {  // same float32 operations as the scalar path
      const float v = xr[d];
      if (!std::isfinite(v)) tail_ok = false;
      float r = std::nearbyint(v / scale[d]) + zero_point[d];
      r = std::fmin(std::fmax(r, -128.f), 127.f);
      o[d] = int8_t(r);
    }
  }
  return tail_ok && _mm256_movemask_ps(bad) == 0;
}

}  // namespace embkern::int8
