// AVX2 SDC kernels: 4 rows per vector, bit-plane AND products counted with VPSHUFB nibble lookups.
#include <immintrin.h>

#include "rbe/rbe_scan_impl.h"
#include "common/popcount_acc.h"

namespace embkern::rbe {

namespace {
struct Avx2Lanes {
  static constexpr int kLanes = 4;
  using Vec = __m256i;
  using FVec = __m128;
  using Acc = NibblePopcountAcc256;
  static Vec load(const uint64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Vec load_i64(const int64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Vec set1(uint64_t v) { return _mm256_set1_epi64x(int64_t(v)); }
  static Vec and_(Vec a, Vec b) { return _mm256_and_si256(a, b); }
  static Vec add(Vec a, Vec b) { return _mm256_add_epi64(a, b); }
  static Vec sub(Vec a, Vec b) { return _mm256_sub_epi64(a, b); }
  // |S| < 2^31 (checked by the op), so the low halves of the lanes are the values.
  static FVec to_float(Vec s) {
    const __m256i lo = _mm256_permutevar8x32_epi32(s, _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6));
    return _mm_cvtepi32_ps(_mm256_castsi256_si128(lo));
  }
  static FVec fmul(FVec a, FVec b) { return _mm_mul_ps(a, b); }
  static FVec fload(const float* p) { return _mm_loadu_ps(p); }
  static FVec fset1(float v) { return _mm_set1_ps(v); }
  static uint32_t gt_mask(FVec v, FVec bar) { return uint32_t(_mm_movemask_ps(_mm_cmp_ps(v, bar, _CMP_GT_OQ))); }
  static void fstore(float* p, FVec v) { _mm_storeu_ps(p, v); }
};
}  // namespace

void sdc_topk_scan_avx2(EMBKERN_RBE_SCAN_ARGS) {
  sdc_topk_scan_vec<Avx2Lanes>(queries, nq, db, db_begin, db_end, shape, heaps);
}

void sdc_scores_avx2(EMBKERN_RBE_SCORES_ARGS) {
  sdc_scores_vec<Avx2Lanes>(queries, nq, db, db_begin, db_end, shape, out, out_stride);
}

}  // namespace embkern::rbe
