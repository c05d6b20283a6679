// AVX-512 (F/BW/VL/DQ) bits kernels: popcount by VPSHUFB nibble lookups, for CPUs without
// VPOPCNTDQ (Skylake-X, Cascade Lake); also pack_bits.
#include <cstring>

#include "bits/bits_avx512_lanes.h"

namespace embkern::bits {

namespace {
// Byte counts summed over up to 31 words (8 x 31 < 256), then widened with VPSADBW.
struct NibbleAcc {
  // popcount of each nibble value 0..15, repeated in every 128-bit lane
  const __m512i lut = _mm512_set4_epi32(0x04030302, 0x03020201, 0x03020201, 0x02010100);
  const __m512i low4 = _mm512_set1_epi8(0x0f);
  __m512i sum8 = _mm512_setzero_si512(), sum64 = _mm512_setzero_si512();
  int pending = 0;
  void add(__m512i x) {
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
using Lanes = Avx512Lanes<NibbleAcc>;
}  // namespace

void hamming_topk_scan_avx512(EMBKERN_BITS_SCAN_ARGS) {
  hamming_topk_scan_vec<Lanes>(queries, nq, db, db_begin, db_end, code_bytes, heaps);
}

void hamming_distance_avx512(EMBKERN_BITS_DIST_ARGS) {
  hamming_distance_vec<Lanes>(queries, nq, db, nb, code_bytes, out, out_stride);
}

void pack_bits_f32_avx512(EMBKERN_BITS_PACK_ARGS) {
  const int64_t bytes = (dim + 7) / 8;
  const __m512 t = _mm512_set1_ps(threshold);
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + i * dim;
    uint8_t* o = out + i * bytes;
    for (int64_t d0 = 0; d0 < dim; d0 += 64) {
      uint64_t m = 0;
      for (int c = 0; c < 4; ++c) {
        const int64_t d = d0 + 16 * c;
        if (d >= dim) break;
        const int64_t left = dim - d;
        const __mmask16 valid = left >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << left) - 1);
        const __m512 v = _mm512_maskz_loadu_ps(valid, xr + d);
        m |= uint64_t(_mm512_mask_cmp_ps_mask(valid, v, t, _CMP_GT_OQ)) << (16 * c);
      }
      m = reverse_bits_in_bytes(m);
      const int64_t nbytes = std::min<int64_t>(8, bytes - d0 / 8);
      std::memcpy(o + d0 / 8, &m, size_t(nbytes));
    }
  }
}

}  // namespace embkern::bits
