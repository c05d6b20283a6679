// Portable scalar twin of the int8 kernels: the reference every vector path must match bit for bit.
#include <cmath>
#include <vector>

#include "common/topk.h"
#include "int8/int8_kernels.h"

namespace embkern::int8 {

bool quantize_f32_scalar(EMBKERN_INT8_QUANT_ARGS) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + i * dim;
    int8_t* o = out + i * dim;
    for (int64_t d = 0; d < dim; ++d) {
      const float v = xr[d];
      if (!std::isfinite(v)) ok = false;
      // float32 division then round half to even (the default rounding mode), then saturate: a
      // value past the int8 range becomes -128 or 127, never wraps.
      float r = std::nearbyint(v / scale[d]) + zero_point[d];
      r = std::fmin(std::fmax(r, -128.f), 127.f);
      o[d] = int8_t(r);
    }
  }
  return ok;
}

namespace {
inline int32_t dot_i8(const int8_t* a, const int8_t* b, int64_t dim) {
  int32_t s = 0;
  for (int64_t d = 0; d < dim; ++d) s += int32_t(a[d]) * int32_t(b[d]);
  return s;
}
}  // namespace

void int8_topk_dot_scalar(EMBKERN_INT8_DOT_ARGS) {
  for (int64_t j = db_begin; j < db_end; ++j) {
    const int8_t* row = db + j * dim;
    for (int64_t q = 0; q < nq; ++q) {
      TopKHeap<int32_t, true> heap(heaps.vals + q * heaps.k, heaps.idx + q * heaps.k, heaps.k, heaps.size[q]);
      const int32_t s = dot_i8(queries + q * dim, row, dim);
      if (s > heap.bar()) {
        heap.push(s, j);
        heaps.size[q] = heap.size();
      }
    }
  }
}

void int8_topk_cos_scalar(EMBKERN_INT8_COS_ARGS) {
  for (int64_t j = db_begin; j < db_end; ++j) {
    const int8_t* row = db + j * dim;
    for (int64_t q = 0; q < nq; ++q) {
      TopKHeap<float, true> heap(heaps.vals + q * heaps.k, heaps.idx + q * heaps.k, heaps.k, heaps.size[q]);
      const float s = (float(dot_i8(queries + q * dim, row, dim)) * db_inv_norm[j]) * q_inv_norm[q];
      if (s > heap.bar()) {
        heap.push(s, j);
        heaps.size[q] = heap.size();
      }
    }
  }
}

}  // namespace embkern::int8
