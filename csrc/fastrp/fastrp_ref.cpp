// Scalar fastrp kernels: the portable path and the oracle the vector paths must match bit for bit.
#include <cmath>
#include <vector>

#include "fastrp/fastrp_rows.h"

namespace embkern::fastrp {

void spmm_rows_scalar(const SpmmArgs& a, int64_t row_begin, int64_t row_end) {
  const int64_t d = a.d;
  std::vector<float> v(static_cast<size_t>(d));
  for (int64_t r = row_begin; r < row_end; ++r) {
    prefetch_acc_src(a, r, row_end);
    std::fill(v.begin(), v.end(), 0.f);
    for (int64_t j = a.indptr[r]; j < a.indptr[r + 1]; ++j) {
      const float w = entry_weight(a, j);
      const int64_t col = a.indices[j], src = col * d;  // (the oracle reads the width per entry)
      if (a.x_codes) {
        for (int64_t c = 0; c < d; ++c) v[c] = std::fma(w, code_value(a, col, c), v[c]);
      } else if (a.x_bf16) {
        const uint16_t* xr = static_cast<const uint16_t*>(a.x) + src;
        for (int64_t c = 0; c < d; ++c) v[c] = std::fma(w, bf16_to_f32(xr[c]), v[c]);
      } else {
        const float* xr = static_cast<const float*>(a.x) + src;
        for (int64_t c = 0; c < d; ++c) v[c] = std::fma(w, xr[c], v[c]);
      }
    }
    apply_row_scale(v.data(), d, a.row_scale, r);
    row_epilogue(v.data(), d, r, a.y, a.y_bf16, a.y_normalize, a.acc, a.acc_weight, a.acc_normalize, a.acc_overwrite,
                 a.acc_src, a.acc_src_bf16, a.acc_src_weight, a.acc_src_normalize, a.y_stream);
  }
  end_row_stores();
}

void init_rows_scalar(const InitArgs& a, int64_t row_begin, int64_t row_end) { init_rows_impl(a, row_begin, row_end, fill_random_scalar, fill_codes_scalar); }

DegreeFlags degree_rows_scalar(const DegreeArgs& a, int64_t row_begin, int64_t row_end) { return degree_rows_impl(a, row_begin, row_end); }

}  // namespace embkern::fastrp
