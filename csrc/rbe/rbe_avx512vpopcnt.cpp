// AVX-512 SDC kernels with AVX512_VPOPCNTDQ (Ice Lake, Sapphire Rapids, Zen 4): bit-plane AND +
// one VPOPCNTQ per plane pair and word of 8 rows.
#include "rbe/rbe_avx512_lanes.h"
#include "common/popcount_acc.h"

namespace embkern::rbe {

namespace {
using Lanes = Avx512Lanes<PopcntAcc512>;
}  // namespace

void sdc_topk_scan_avx512vpopcnt(EMBKERN_RBE_SCAN_ARGS) {
  sdc_topk_scan_vec<Lanes>(queries, nq, db, db_begin, db_end, shape, heaps);
}

void sdc_scores_avx512vpopcnt(EMBKERN_RBE_SCORES_ARGS) {
  sdc_scores_vec<Lanes>(queries, nq, db, db_begin, db_end, shape, out, out_stride);
}

}  // namespace embkern::rbe
