// AVX2 embedding kernels: 8 fp32 lanes; bf16 widened in registers; fp16 (F16C is not part of our
// AVX2 level) and partial registers go through a small buffer.
#include <immintrin.h>

#include "embedding/embedding_impl.h"

namespace embkern::emb {
namespace {

struct Avx2Lanes {
  using A = float;
  using Reg = __m256;
  static constexpr int kLanes = 8;
  static Reg zero() { return _mm256_setzero_ps(); }
  static Reg set1(float x) { return _mm256_set1_ps(x); }
  static Reg load(const float* p) { return _mm256_loadu_ps(p); }
  static Reg load(const bf16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  static Reg load(const f16_t* p) {
    alignas(32) float buf[8];
    for (int j = 0; j < 8; ++j) buf[j] = f16_to_f32(p[j].x);
    return _mm256_load_ps(buf);
  }
  template <class T>
  static Reg load_part(const T* p, int n) {
    T buf[8] = {};
    std::memcpy(buf, p, sizeof(T) * size_t(n));
    return load(buf);
  }
  static Reg add(Reg a, Reg b) { return _mm256_add_ps(a, b); }
  static Reg fma(Reg s, Reg x, Reg acc) { return _mm256_fmadd_ps(s, x, acc); }
  static Reg div(Reg a, Reg b) { return _mm256_div_ps(a, b); }
  static void store(float* p, Reg r) { _mm256_storeu_ps(p, r); }
  static void store_part(float* p, Reg r, int n) {
    alignas(32) float buf[8];
    _mm256_store_ps(buf, r);
    std::memcpy(p, buf, sizeof(float) * size_t(n));
  }
  static void store_w(float* p, Reg r) { store(p, r); }
  template <class T>
  static void store_w(T* p, Reg r) { store_w_part(p, r, 8); }
  template <class T>
  static void store_w_part(T* p, Reg r, int n) {
    alignas(32) float buf[8];
    _mm256_store_ps(buf, r);
    for (int j = 0; j < n; ++j) p[j] = Conv<T>::out(buf[j]);
  }
};

}  // namespace

EMBKERN_EMB_DEFINE_ISA(avx2, Avx2Lanes)

}  // namespace embkern::emb
