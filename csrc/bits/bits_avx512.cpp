// AVX-512 (F/BW/VL/DQ) bits kernels: popcount by VPSHUFB nibble lookups, for CPUs without
// VPOPCNTDQ (Skylake-X, Cascade Lake); also pack_bits.
#include <cstring>

#include "bits/bits_avx512_lanes.h"
#include "common/popcount_acc.h"

namespace embkern::bits {

namespace {
using Lanes = Avx512Lanes<NibblePopcountAcc512>;
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
