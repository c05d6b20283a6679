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
