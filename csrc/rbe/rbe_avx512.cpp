// AVX-512 (F/BW/VL/DQ) SDC kernels for CPUs without VPOPCNTDQ (Skylake-X, Cascade Lake): the
// bit-plane AND products are counted with VPSHUFB nibble lookups.
#include "rbe/rbe_avx512_lanes.h"
#include "common/popcount_acc.h"

namespace embkern::rbe {

namespace {
using Lanes = Avx512Lanes<NibblePopcountAcc512>;
}  // namespace

void sdc_topk_scan_avx512(EMBKERN_RBE_SCAN_ARGS) {
  sdc_topk_scan_vec<Lanes>(queries, nq, db, db_begin, db_end, shape, heaps);
}

void sdc_scores_avx512(EMBKERN_RBE_SCORES_ARGS) {
  sdc_scores_vec<Lanes>(queries, nq, db, db_begin, db_end, shape, out, out_stride);
}

}  // namespace embkern::rbe
