// Scalar embedding kernels: the portable path and the oracle of the vector ones.
#include "embedding/embedding_impl.h"

namespace embkern::emb {

EMBKERN_EMB_DEFINE_ISA(scalar, ScalarLanes<float>)

namespace {
template <class A, class T>
void psw_grad_t(const ForwardArgs& a, const A* grad, int64_t grad_stride, int64_t f, int64_t i_begin, int64_t i_end,
                A* gpsw) {
  const MuxLayout& L = a.L;
  const T* w = static_cast<const T*>(a.weight);
  const int64_t D = a.dim, B = L.batch;
  const int64_t* bag_ends = L.offsets + f * B + 1;  // bag b of feature f ends at bag_ends[b]
  for (int64_t i = i_begin; i < i_end; ++i) {
    const int64_t b = std::upper_bound(bag_ends, bag_ends + B, i) - bag_ends;
    const uint64_t pm = mix64(value_bits(L, i));
    A total = 0;
    for (int64_t g = L.probe_offsets[f]; g < L.probe_offsets[f + 1]; ++g) {
      const T* r = w + probe_row(pm, L.keys[g], L.row_base[g], L.row_size[g]) * D;
      const A* go = grad + b * grad_stride + (a.combine == kCombineConcat ? g * D : 0);
      A dot = 0;
      for (int64_t d = 0; d < D; ++d) dot = std::fma(go[d], A(Conv<T>::in(r[d])), dot);
      total = total + dot;
    }
    gpsw[i] = total;
  }
}
}  // namespace

void psw_grad_scalar(const ForwardArgs& a, const void* grad, int64_t grad_stride, int64_t f, int64_t i_begin,
                     int64_t i_end, void* gpsw) {
  switch (a.wtype) {
    case WType::F32:
      return psw_grad_t<float, float>(a, static_cast<const float*>(grad), grad_stride, f, i_begin, i_end,
                                      static_cast<float*>(gpsw));
    case WType::BF16:
      return psw_grad_t<float, bf16_t>(a, static_cast<const float*>(grad), grad_stride, f, i_begin, i_end,
                                       static_cast<float*>(gpsw));
    case WType::F16:
      return psw_grad_t<float, f16_t>(a, static_cast<const float*>(grad), grad_stride, f, i_begin, i_end,
                                      static_cast<float*>(gpsw));
    case WType::F64:
      return psw_grad_t<double, double>(a, static_cast<const double*>(grad), grad_stride, f, i_begin, i_end,
                                        static_cast<double*>(gpsw));
  }
}

}  // namespace embkern::emb
