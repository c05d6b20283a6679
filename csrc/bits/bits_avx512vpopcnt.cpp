// AVX-512 bits kernels with AVX512_VPOPCNTDQ (Ice Lake, Zen 4): one VPOPCNTQ per word of 8 rows.
#include "bits/bits_avx512_lanes.h"
#include "common/popcount_acc.h"

namespace embkern::bits {

namespace {
using Lanes = Avx512Lanes<PopcntAcc512>;
}  // namespace

void hamming_topk_scan_avx512vpopcnt(EMBKERN_BITS_SCAN_ARGS) {
  hamming_topk_scan_vec<Lanes>(queries, nq, db, db_begin, db_end, code_bytes, heaps);
}

void hamming_distance_avx512vpopcnt(EMBKERN_BITS_DIST_ARGS) {
  hamming_distance_vec<Lanes>(queries, nq, db, nb, code_bytes, out, out_stride);
}

}  // namespace embkern::bits
