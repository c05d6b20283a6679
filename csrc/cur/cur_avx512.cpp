// AVX-512 (F/BW/VL/DQ) fused score + top-k: 16-lane FMA, register tile of up to 14 queries x 32 columns.
#include "cur/cur_avx512_lanes.h"
#include "cur/cur_scan_impl.h"

namespace embkern::cur {

void score_topk_scan_avx512(EMBKERN_CUR_SCAN_ARGS) {
  score_topk_scan_vec<V512>(C, nq, r, E, etype, scales, ld, col_begin, col_end, ex, heaps);
}

}  // namespace embkern::cur
