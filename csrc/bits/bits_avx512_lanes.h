// AVX-512 lane traits for bits_scan_impl.h, shared by the two AVX-512 translation units; the
// popcount of a vector's 64-bit lanes is the only difference and comes in as `Acc`.
#pragma once
#include <immintrin.h>

#include "bits/bits_scan_impl.h"

namespace embkern::bits {
inline namespace EMBKERN_ISA_NS {

template <class AccT>
struct Avx512Lanes {
  static constexpr int kLanes = 8;
  using Vec = __m512i;
  using Acc = AccT;
  static Vec load(const uint64_t* p) { return _mm512_loadu_si512(p); }
  static Vec set1(uint64_t v) { return _mm512_set1_epi64(int64_t(v)); }
  static Vec xor_(Vec a, Vec b) { return _mm512_xor_si512(a, b); }
  static uint32_t lt_mask(Vec d, Vec bar) { return _mm512_cmplt_epu64_mask(d, bar); }
  static void to_array(Vec d, uint64_t* out) { _mm512_store_si512(out, d); }
};

// Reverses the bit order inside each byte: turns a compare mask (bit d = dimension d) into
// numpy.packbits order (dimension 0 in the most significant bit of byte 0).
inline uint64_t reverse_bits_in_bytes(uint64_t m) {
  m = ((m >> 1) & 0x5555555555555555ull) | ((m & 0x5555555555555555ull) << 1);
  m = ((m >> 2) & 0x3333333333333333ull) | ((m & 0x3333333333333333ull) << 2);
  return ((m >> 4) & 0x0F0F0F0F0F0F0F0Full) | ((m & 0x0F0F0F0F0F0F0F0Full) << 4);
}

}  // namespace EMBKERN_ISA_NS
}  // namespace embkern::bits
