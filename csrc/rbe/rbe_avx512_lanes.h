// AVX-512 lane traits for rbe_scan_impl.h, shared by the two AVX-512 translation units; the
// popcount of a vector's 64-bit lanes is the only difference and comes in as `Acc`.
#pragma once
#include <immintrin.h>

#include "rbe/rbe_scan_impl.h"

namespace embkern::rbe {
inline namespace EMBKERN_ISA_NS {

template <class AccT>
struct Avx512Lanes {
  static constexpr int kLanes = 8;
  using Vec = __m512i;
  using FVec = __m256;
  using Acc = AccT;
  static Vec load(const uint64_t* p) { return _mm512_loadu_si512(p); }
  static Vec load_i64(const int64_t* p) { return _mm512_loadu_si512(p); }
  static Vec set1(uint64_t v) { return _mm512_set1_epi64(int64_t(v)); }
  static Vec and_(Vec a, Vec b) { return _mm512_and_si512(a, b); }
  static Vec add(Vec a, Vec b) { return _mm512_add_epi64(a, b); }
  static Vec sub(Vec a, Vec b) { return _mm512_sub_epi64(a, b); }
  static FVec to_float(Vec s) { return _mm512_cvtepi64_ps(s); }
  static FVec fmul(FVec a, FVec b) { return _mm256_mul_ps(a, b); }
  static FVec fload(const float* p) { return _mm256_loadu_ps(p); }
  static FVec fset1(float v) { return _mm256_set1_ps(v); }
  static uint32_t gt_mask(FVec v, FVec bar) { return _mm256_cmp_ps_mask(v, bar, _CMP_GT_OQ); }
  static void fstore(float* p, FVec v) { _mm256_storeu_ps(p, v); }
};

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::rbe
