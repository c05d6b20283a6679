// AVX-512 (F/BW/VL/DQ) lane traits for cur_scan_impl.h, shared by cur_avx512.cpp and
// cur_avx512vnni.cpp (each compiles it in its own ISA namespace).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "common/float_convert.h"
#include "common/isa_namespace.h"

namespace embkern::cur {
inline namespace EMBKERN_ISA_NS {

struct V512 {
  static constexpr int kLanes = 16;
  static constexpr int kMaxRows = 14;  // 28 accumulators + 2 strip vectors + 1 broadcast of 32 zmm
  using Vec = __m512;
  static Vec zero() { return _mm512_setzero_ps(); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static Vec set1(float x) { return _mm512_set1_ps(x); }
  static Vec fmadd(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
  static Vec mul(Vec a, Vec b) { return _mm512_mul_ps(a, b); }
  static uint32_t gt_mask(Vec a, Vec b) { return _mm512_cmp_ps_mask(a, b, _CMP_GT_OQ); }
  static uint32_t ord_mask(Vec a) { return _mm512_cmp_ps_mask(a, a, _CMP_ORD_Q); }
  static Vec load_bf16(const uint16_t* p) { return bf16x16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static Vec load_i8(const int8_t* p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
};

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::cur
