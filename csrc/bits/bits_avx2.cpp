// AVX2 bits kernels: 4 rows per vector, popcount by VPSHUFB nibble lookups; also pack_bits.
#include <immintrin.h>

#include <cstring>

#include "bits/bits_scan_impl.h"
#include "common/popcount_acc.h"

namespace embkern::bits {

namespace {
struct Avx2Lanes {
  static constexpr int kLanes = 4;
  using Vec = __m256i;
  using Acc = NibblePopcountAcc256;
  static Vec load(const uint64_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
  static Vec set1(uint64_t v) { return _mm256_set1_epi64x(int64_t(v)); }
  static Vec xor_(Vec a, Vec b) { return _mm256_xor_si256(a, b); }
  // Distances and bars are below 2^31, so the signed compare is exact.
  static uint32_t lt_mask(Vec d, Vec bar) {
    return uint32_t(_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(bar, d))));
  }
  static void to_array(Vec d, uint64_t* out) { _mm256_store_si256(reinterpret_cast<__m256i*>(out), d); }
};

// Bit-reversed byte: turns a movemask (bit d = dimension d) into packbits order.
inline uint8_t reverse_byte(uint32_t b) {
  b = ((b >> 1) & 0x55u) | ((b & 0x55u) << 1);
  b = ((b >> 2) & 0x33u) | ((b & 0x33u) << 2);
  return uint8_t(((b >> 4) & 0x0Fu) | ((b & 0x0Fu) << 4));
}
}  // namespace

void hamming_topk_scan_avx2(EMBKERN_BITS_SCAN_ARGS) {
  hamming_topk_scan_vec<Avx2Lanes>(queries, nq, db, db_begin, db_end, code_bytes, heaps);
}

void hamming_distance_avx2(EMBKERN_BITS_DIST_ARGS) {
  hamming_distance_vec<Avx2Lanes>(queries, nq, db, nb, code_bytes, out, out_stride);
}

void pack_bits_f32_avx2(EMBKERN_BITS_PACK_ARGS) {
  const int64_t bytes = (dim + 7) / 8, full = dim / 8;
  const __m256 t = _mm256_set1_ps(threshold);
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + i * dim;
    uint8_t* o = out + i * bytes;
    for (int64_t b = 0; b < full; ++b)
      o[b] = reverse_byte(uint32_t(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(xr + 8 * b), t, _CMP_GT_OQ))));
    if (full < bytes) {  // tail byte: padding bits stay 0
      uint8_t v = 0;
      for (int64_t d = 8 * full; d < 8 * full + 8; ++d) v = uint8_t(v << 1) | uint8_t(d < dim && xr[d] > threshold);
      o[full] = v;
    }
  }
}

}  // namespace embkern::bits
