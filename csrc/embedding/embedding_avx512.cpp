// AVX-512 embedding kernels: 16 fp32 lanes, masked tails, bf16/fp16 widened in registers.
// GCC 12 reports its own AVX-512 intrinsics headers as using uninitialized values (a known false positive).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include "embedding/embedding_impl.h"

namespace embkern::emb {
namespace {

inline __mmask16 tail_mask(int n) { return __mmask16((1u << n) - 1u); }

struct Avx512Lanes {
  using A = float;
  using Reg = __m512;
  static constexpr int kLanes = 16;
  static Reg zero() { return _mm512_setzero_ps(); }
  static Reg set1(float x) { return _mm512_set1_ps(x); }
  static Reg widen_bf16(__m256i h) { return bf16x16_to_f32(h); }
  static Reg load(const float* p) { return _mm512_loadu_ps(p); }
  static Reg load(const bf16_t* p) { return widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static Reg load(const f16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
  static Reg load_part(const float* p, int n) { return _mm512_maskz_loadu_ps(tail_mask(n), p); }
  static Reg load_part(const bf16_t* p, int n) { return widen_bf16(_mm256_maskz_loadu_epi16(tail_mask(n), p)); }
  static Reg load_part(const f16_t* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(tail_mask(n), p)); }
  static Reg add(Reg a, Reg b) { return _mm512_add_ps(a, b); }
  static Reg fma(Reg s, Reg x, Reg acc) { return _mm512_fmadd_ps(s, x, acc); }
  static Reg div(Reg a, Reg b) { return _mm512_div_ps(a, b); }
  static void store(float* p, Reg r) { _mm512_storeu_ps(p, r); }
  static void store_part(float* p, Reg r, int n) { _mm512_mask_storeu_ps(p, tail_mask(n), r); }
  static __m256i narrow_bf16(Reg r) { return f32x16_to_bf16(r); }
  static __m256i narrow_f16(Reg r) { return _mm512_cvtps_ph(r, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
  static void store_w(float* p, Reg r) { store(p, r); }
  static void store_w(bf16_t* p, Reg r) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_bf16(r)); }
  static void store_w(f16_t* p, Reg r) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), narrow_f16(r)); }
  static void store_w_part(float* p, Reg r, int n) { store_part(p, r, n); }
  static void store_w_part(bf16_t* p, Reg r, int n) { _mm256_mask_storeu_epi16(p, tail_mask(n), narrow_bf16(r)); }
  static void store_w_part(f16_t* p, Reg r, int n) { _mm256_mask_storeu_epi16(p, tail_mask(n), narrow_f16(r)); }
};

}  // namespace

EMBKERN_EMB_DEFINE_ISA(avx512, Avx512Lanes)

}  // namespace embkern::emb
