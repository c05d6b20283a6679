// AVX512_VNNI int8 top-k: vpdpbusd multiplies unsigned by signed bytes, so the database side is
// stored XOR 0x80 (= d + 128 as uint8) and each accumulator starts at -128 * sum(q): the result is
// the exact signed dot product. Query bytes come as 32-bit broadcasts (4 dims per lane).
#include <cstring>

#include "int8/int8_avx512_lanes.h"

namespace embkern::int8 {

namespace {
struct VnniLanes : Avx512Common {
  static constexpr int kPer = 4;
  static constexpr bool kBias = true;
  using Elem = uint8_t;
  using QElem = int8_t;
  static Elem to_elem(int8_t v) { return uint8_t(v) ^ 0x80u; }
  static void put_step(Elem* dst, const int8_t* src) {
    uint32_t w;
    std::memcpy(&w, src, 4);
    w ^= 0x80808080u;
    std::memcpy(dst, &w, 4);
  }
  static Vec load(const Elem* p) { return _mm512_load_si512(p); }
  // 16 rows x 16 dwords -> 16 steps of 16 rows, by a 4-stage shuffle transpose (64 shuffles per
  // 1 KB instead of 256 scalar moves); returns the number of steps written (a multiple of 16).
  static constexpr bool kVectorTranspose = true;
  static int64_t transpose_group(Elem* dst, const int8_t* rows, int64_t dim) {
    const __m512i bias = _mm512_set1_epi8(char(0x80));
    int64_t t0 = 0;
    for (; 4 * t0 + 64 <= dim; t0 += 16) {
      __m512i r[16], u[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(rows + i * dim + 4 * t0);
      for (int i = 0; i < 16; i += 2) {
        u[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
        u[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
      }
      // r[4a + c], lane L: rows 4a..4a+3 of dword 4L + c.
      for (int a = 0; a < 4; ++a) {
        r[4 * a + 0] = _mm512_unpacklo_epi64(u[4 * a], u[4 * a + 2]);
        r[4 * a + 1] = _mm512_unpackhi_epi64(u[4 * a], u[4 * a + 2]);
        r[4 * a + 2] = _mm512_unpacklo_epi64(u[4 * a + 1], u[4 * a + 3]);
        r[4 * a + 3] = _mm512_unpackhi_epi64(u[4 * a + 1], u[4 * a + 3]);
      }
      for (int c = 0; c < 4; ++c) {
        const __m512i v0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x88), v1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xDD);
        const __m512i v2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x88),
                      v3 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xDD);
        const __m512i o[4] = {_mm512_shuffle_i32x4(v0, v2, 0x88), _mm512_shuffle_i32x4(v1, v3, 0x88),
                              _mm512_shuffle_i32x4(v0, v2, 0xDD), _mm512_shuffle_i32x4(v1, v3, 0xDD)};
        for (int l = 0; l < 4; ++l)
          _mm512_store_si512(dst + (t0 + 4 * l + c) * 64, _mm512_xor_si512(o[l], bias));
      }
    }
    return t0;
  }
  static Vec bcast(const QElem* p) {
    int32_t w;
    std::memcpy(&w, p, 4);
    return _mm512_set1_epi32(w);
  }
  static Vec madd(Vec acc, Vec db, Vec q) { return _mm512_dpbusd_epi32(acc, db, q); }
};
}  // namespace

void int8_topk_dot_avx512vnni(EMBKERN_INT8_DOT_ARGS) {
  int8_topk_scan_vec<VnniLanes, false>(queries, nq, db, db_begin, db_end, dim, nullptr, nullptr, heaps);
}

void int8_topk_cos_avx512vnni(EMBKERN_INT8_COS_ARGS) {
  int8_topk_scan_vec<VnniLanes, true>(queries, nq, db, db_begin, db_end, dim, q_inv_norm, db_inv_norm, heaps);
}

}  // namespace embkern::int8
