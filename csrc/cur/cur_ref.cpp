// Portable scalar twin of the cur kernels: the oracle every vector path matches bit for bit
// (same FMA order per score, see cur_kernels.h).
#include <cmath>

#include "cur/cur_common.h"

namespace embkern::cur {

void score_topk_scan_scalar(EMBKERN_CUR_SCAN_ARGS) {
  for (int64_t n = col_begin; n < col_end; ++n) {
    for (int64_t q = 0; q < nq; ++q) {
      float acc = 0.0f;
      for (int64_t j = 0; j < r; ++j) acc = std::fma(C[q * r + j], e_value(E, etype, j * ld + n), acc);
      if (etype == kI8) acc = acc * scales[n];
      if (std::isnan(acc) || is_excluded(ex, q, n)) continue;
      ScoreHeap heap(heaps.vals + q * heaps.k, heaps.ids + q * heaps.k, heaps.k, heaps.size[q]);
      heap.push(acc, n);
      heaps.size[q] = heap.size();
    }
  }
}

}  // namespace embkern::cur
