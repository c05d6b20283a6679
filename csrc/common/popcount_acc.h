// Per-lane popcount accumulators for vector kernels that sum popcounts of many words (Hamming,
// bit-plane SDC). Each is defined only where its instructions are enabled, so an ISA translation
// unit gets exactly the ones its flags allow (see common/isa_namespace.h for the namespace).
//   acc.add(x): adds popcount of each 64-bit lane of x;  acc.finish(): the 64-bit lane sums.
#pragma once
#include <immintrin.h>

#include "common/isa_namespace.h"

namespace embkern {
inline namespace EMBKERN_ISA_NS {

#if defined(__AVX2__)
// VPSHUFB nibble lookups; byte counts summed over up to 31 words (8 x 31 < 256), then widened
// with VPSADBW.
struct NibblePopcountAcc256 {
  __m256i sum8 = _mm256_setzero_si256(), sum64 = _mm256_setzero_si256();
  int pending = 0;
  void add(__m256i x) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    const __m256i lo = _mm256_and_si256(x, low4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
    sum8 = _mm256_add_epi8(sum8, _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi)));
    if (++pending == 31) flush();
  }
  void flush() {
    sum64 = _mm256_add_epi64(sum64, _mm256_sad_epu8(sum8, _mm256_setzero_si256()));
    sum8 = _mm256_setzero_si256();
    pending = 0;
  }
  __m256i finish() {
    flush();
    return sum64;
  }
};
#endif

#if defined(__AVX512BW__)
// The same with zmm registers, for AVX-512 CPUs without VPOPCNTDQ (Skylake-X, Cascade Lake).
struct NibblePopcountAcc512 {
  __m512i sum8 = _mm512_setzero_si512(), sum64 = _mm512_setzero_si512();
  int pending = 0;
  void add(__m512i x) {
    // popcount of each nibble value 0..15, repeated in every 128-bit lane
    const __m512i lut = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);
    const __m512i low4 = _mm512_set1_epi8(0x0f);
    const __m512i lo = _mm512_and_si512(x, low4), hi = _mm512_and_si512(_mm512_srli_epi16(x, 4), low4);
    sum8 = _mm512_add_epi8(sum8, _mm512_add_epi8(_mm512_shuffle_epi8(lut, lo), _mm512_shuffle_epi8(lut, hi)));
    if (++pending == 31) flush();
  }
  void flush() {
    sum64 = _mm512_add_epi64(sum64, _mm512_sad_epu8(sum8, _mm512_setzero_si512()));
    sum8 = _mm512_setzero_si512();
    pending = 0;
  }
  __m512i finish() {
    flush();
    return sum64;
  }
};
#endif

#if defined(__AVX512VPOPCNTDQ__)
// One VPOPCNTQ per word (Ice Lake, Sapphire Rapids, Zen 4).
struct PopcntAcc512 {
  __m512i sum = _mm512_setzero_si512();
  void add(__m512i x) { sum = _mm512_add_epi64(sum, _mm512_popcnt_epi64(x)); }
  __m512i finish() { return sum; }
};
#endif

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern
