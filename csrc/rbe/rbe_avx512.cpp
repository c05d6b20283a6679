// AVX-512 (F/BW/VL/DQ) SDC kernels for CPUs without VPOPCNTDQ (Skylake-X, Cascade Lake): the
// bit-plane AND products are counted with VPSHUFB nibble lookups.
#include "rbe/rbe_avx512_lanes.h"

namespace embkern::rbe {

namespace {
// Byte counts summed over up to 31 words (8 x 31 < 256), then widened with VPSADBW.
struct NibbleAcc {
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
using Lanes = Avx512Lanes<NibbleAcc>;
}  // namespace

void sdc_topk_scan_avx512(EMBKERN_RBE_SCAN_ARGS) {
  sdc_topk_scan_vec<Lanes>(queries, nq, db, db_begin, db_end, shape, heaps);
}

void sdc_scores_avx512(EMBKERN_RBE_SCORES_ARGS) {
  sdc_scores_vec<Lanes>(queries, nq, db, db_begin, db_end, shape, out, out_stride);
}

}  // namespace embkern::rbe
