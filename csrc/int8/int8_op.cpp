// int8 family ops: schemas, argument checks, CPU and CUDA registration (fake kernels:
// python/embkern/_ops.py). Calibration, dequantization and rescoring are thin torch code in
// python/embkern/int8.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "common/parallel_topk.h"
#include "int8/int8_cuda.h"
#include "int8/int8_kernels.h"

#ifdef EMBKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace embkern::int8 {
namespace {

using at::Tensor;

// ---- argument checks (shared by every backend) -------------------------------------------------

// scale: float32 [] or [dim], finite and > 0; zero_point: int32 [] or [dim], in [-128, 127].
// Returns both expanded to float32 [dim], contiguous, on x's device.
std::pair<Tensor, Tensor> check_params(const Tensor& x, const Tensor& scale, const Tensor& zero_point, const char* op) {
  const int64_t dim = x.size(1);
  check_dtype(scale, op, "scale", at::kFloat);
  check_dtype(zero_point, op, "zero_point", at::kInt);
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{scale, "scale"}, {zero_point, "zero_point"}}) {
    TORCH_CHECK_VALUE(t.dim() == 0 || (t.dim() == 1 && (t.size(0) == dim || t.size(0) == 1)), op, ": ", name,
                      " must be a scalar or have shape [", dim, "] (one per dimension), got shape ", t.sizes());
    check_same_device(x, "x", t, name, op);
  }
  if (scale.numel() > 0) {
    const Tensor bad = at::logical_not(at::logical_and(at::isfinite(scale), at::gt(scale, 0)));
    if (at::any(bad).item<bool>()) {
      const int64_t i = at::nonzero(bad.reshape({-1}))[0][0].item<int64_t>();
      TORCH_CHECK_VALUE(false, op, ": scale must be finite and > 0 everywhere, got ",
                        scale.reshape({-1})[i].item<float>(), " at index ", i);
    }
    const Tensor out_of_range = at::logical_or(at::lt(zero_point, -128), at::gt(zero_point, 127));
    if (at::any(out_of_range).item<bool>()) {
      const int64_t i = at::nonzero(out_of_range.reshape({-1}))[0][0].item<int64_t>();
      TORCH_CHECK_VALUE(false, op, ": zero_point must be in [-128, 127], got ", zero_point.reshape({-1})[i].item<int>(),
                        " at index ", i);
    }
  }
  return {scale.to(at::kFloat).reshape({-1}).expand({dim}).contiguous(),
          zero_point.to(at::kFloat).reshape({-1}).expand({dim}).contiguous()};
}

void check_quantize_input(const Tensor& x, const char* op) {
  check_rank(x, op, "x", 2);
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), op, ": x must be a floating tensor (float32, float16, ",
                   "bfloat16 or float64), got dtype ", dtype_name(x.scalar_type()));
}

void check_query_database(const Tensor& queries, const Tensor& database, const char* op) {
  check_dtype(queries, op, "queries", at::kChar);
  check_dtype(database, op, "database", at::kChar);
  check_rank(queries, op, "queries", 2);
  check_rank(database, op, "database", 2);
  TORCH_CHECK_VALUE(queries.size(1) == database.size(1), op,
                    ": queries and database must have the same dimension, got ", queries.size(1), " and ",
                    database.size(1));
  TORCH_CHECK_VALUE(database.size(1) >= 1, op, ": the dimension must be >= 1, got shape ", database.sizes());
  TORCH_CHECK_VALUE(database.size(1) <= kMaxDim, op, ": dimension ", database.size(1),
                    " could overflow int32 accumulation (|dot| <= D * 128 * 128 must stay below 2^31, so D <= ",
                    kMaxDim, ")");
  check_same_device(queries, "queries", database, "database", op);
  TORCH_CHECK_VALUE(database.size(0) >= 1, op, ": database must not be empty (got 0 rows)");
}

void check_k(int64_t k, int64_t n, const char* op) {
  TORCH_CHECK_VALUE(k >= 1 && k <= n, op, ": k must be in [1, ", n, "] (the number of database rows), got ", k);
}

bool is_cosine(const std::string& metric, const char* op) {
  TORCH_CHECK_VALUE(metric == "dot" || metric == "cosine", op, ": metric must be 'dot' or 'cosine', got '", metric,
                    "'");
  return metric == "cosine";
}

// float32 L2 norms of int8 rows: float(sqrt(double(sum of squares))), the exact sum rounded once.
Tensor int8_row_norms(const Tensor& codes) {
  return at::sqrt(at::sum(at::square(codes.to(at::kLong)), {1}).to(at::kDouble)).to(at::kFloat);
}

// 1 / norm in float32, after checking every norm is finite and > 0 (a zero-norm row has no cosine).
Tensor inverse_norms(const Tensor& norms, const char* op, const char* name, int64_t n, bool given) {
  if (given) {
    check_dtype(norms, op, name, at::kFloat);
    TORCH_CHECK_VALUE(norms.dim() == 1 && norms.size(0) == n, op, ": ", name, " must have shape [", n,
                      "], got shape ", norms.sizes());
  }
  const Tensor bad = at::logical_not(at::logical_and(at::isfinite(norms), at::gt(norms, 0)));
  if (n > 0 && at::any(bad).item<bool>()) {
    const int64_t i = at::nonzero(bad)[0][0].item<int64_t>();
    TORCH_CHECK_VALUE(false, op, ": metric='cosine' needs a finite, non-zero norm for every row of ", name,
                      ", got ", norms[i].item<float>(), " for row ", i);
  }
  return at::reciprocal(norms).contiguous();
}

// ---- CPU -----------------------------------------------------------------------------------------

using QuantFn = bool (*)(EMBKERN_INT8_QUANT_ARGS);
using DotFn = void (*)(EMBKERN_INT8_DOT_ARGS);
using CosFn = void (*)(EMBKERN_INT8_COS_ARGS);

QuantFn pick_quantize() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (f.avx512) return quantize_f32_avx512;
  if (f.avx2) return quantize_f32_avx2;
#endif
  return quantize_f32_scalar;
}

template <bool Cos>
auto pick_topk() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if constexpr (Cos) {
    if (f.avx512 && f.vnni) return int8_topk_cos_avx512vnni;
    if (f.avx512) return int8_topk_cos_avx512;
    if (f.avx2) return int8_topk_cos_avx2;
    return int8_topk_cos_scalar;
  } else {
    if (f.avx512 && f.vnni) return int8_topk_dot_avx512vnni;
    if (f.avx512) return int8_topk_dot_avx512;
    if (f.avx2) return int8_topk_dot_avx2;
    return int8_topk_dot_scalar;
  }
#else
  if constexpr (Cos) return int8_topk_cos_scalar;
  else return int8_topk_dot_scalar;
#endif
}

Tensor int8_quantize_cpu(const Tensor& x, const Tensor& scale, const Tensor& zero_point) {
  const char* op = "int8_quantize";
  check_quantize_input(x, op);
  auto [s, z] = check_params(x, scale, zero_point, op);
  const int64_t n = x.size(0), dim = x.size(1);
  Tensor out = at::empty({n, dim}, x.options().dtype(at::kChar));
  if (n == 0 || dim == 0) return out;
  const Tensor xf = x.to(at::kFloat).contiguous();
  const float *xp = xf.data_ptr<float>(), *sp = s.data_ptr<float>(), *zp = z.data_ptr<float>();
  int8_t* o = out.data_ptr<int8_t>();
  const QuantFn quant = pick_quantize();
  std::atomic<bool> finite{true};
  const int64_t grain = std::max<int64_t>(1, 65536 / dim);
  at::parallel_for(0, n, grain, [&](int64_t b, int64_t e) {
    if (!quant(xp + b * dim, e - b, dim, sp, zp, o + b * dim)) finite = false;
  });
  if (!finite) {
    const Tensor bad = at::logical_not(at::isfinite(xf));
    const Tensor where = at::nonzero(bad)[0];
    const int64_t i = where[0].item<int64_t>(), d = where[1].item<int64_t>();
    TORCH_CHECK_VALUE(false, op, ": x must be finite, got ", xf[i][d].item<float>(), " at [", i, ", ", d, "]");
  }
  return out;
}

template <bool Cos, class T>
void run_topk_cpu(const Tensor& q, const Tensor& db, int64_t k, const Tensor& q_inv, const Tensor& db_inv, T* out_v,
                  int64_t* out_i) {
  const int64_t nq = q.size(0), nb = db.size(0), dim = q.size(1);
  const int8_t *qp = q.data_ptr<int8_t>(), *dp = db.data_ptr<int8_t>();
  const float* qi = Cos ? q_inv.data_ptr<float>() : nullptr;
  const float* di = Cos ? db_inv.data_ptr<float>() : nullptr;
  const auto scan = pick_topk<Cos>();
  parallel_topk<T, /*LargerIsBetter=*/true>(
      nq, nb, k, out_v, out_i, "int8_topk",
      [&](int64_t qb, int64_t qe, int64_t db_b, int64_t db_e, T* hv, int64_t* hi, int64_t* hn) {
        if constexpr (Cos)
          scan(qp + qb * dim, qe - qb, dp, db_b, db_e, dim, qi + qb, di, Heaps<float>{hv, hi, hn, k});
        else
          scan(qp + qb * dim, qe - qb, dp, db_b, db_e, dim, Heaps<int32_t>{hv, hi, hn, k});
      });
}

std::tuple<Tensor, Tensor> int8_topk_cpu(const Tensor& queries, const Tensor& database, int64_t k,
                                         c10::string_view metric, const std::optional<Tensor>& database_norms) {
  const char* op = "int8_topk";
  check_query_database(queries, database, op);
  const bool cos = is_cosine(std::string(metric), op);
  const int64_t nq = queries.size(0), nb = database.size(0);
  check_k(k, nb, op);
  checked_mul(nq, k, op, "the output size queries x k");
  if (database_norms.has_value()) check_same_device(database, "database", *database_norms, "database_norms", op);
  Tensor out_v = at::empty({nq, k}, queries.options().dtype(at::kFloat));
  Tensor out_i = at::empty({nq, k}, queries.options().dtype(at::kLong));
  if (nq == 0) return {out_v, out_i};
  const Tensor q = queries.contiguous(), db = database.contiguous();
  if (cos) {
    const Tensor db_inv = inverse_norms(database_norms.has_value() ? *database_norms : int8_row_norms(db), op,
                                        "database_norms", nb, database_norms.has_value());
    const Tensor q_inv = inverse_norms(int8_row_norms(q), op, "queries", nq, false);
    run_topk_cpu<true>(q, db, k, q_inv, db_inv, out_v.data_ptr<float>(), out_i.data_ptr<int64_t>());
  } else {
    Tensor scores = at::empty({nq, k}, queries.options().dtype(at::kInt));
    run_topk_cpu<false>(q, db, k, Tensor(), Tensor(), scores.data_ptr<int32_t>(), out_i.data_ptr<int64_t>());
    out_v.copy_(scores);
  }
  return {out_v, out_i};
}

// ---- CUDA ----------------------------------------------------------------------------------------

#ifdef EMBKERN_WITH_CUDA
cudaStream_t current_stream(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

Tensor int8_quantize_cuda(const Tensor& x, const Tensor& scale, const Tensor& zero_point) {
  const char* op = "int8_quantize";
  check_quantize_input(x, op);
  const c10::cuda::CUDAGuard guard(x.device());
  auto [s, z] = check_params(x, scale, zero_point, op);
  const int64_t n = x.size(0), dim = x.size(1);
  Tensor out = at::empty({n, dim}, x.options().dtype(at::kChar));
  if (n == 0 || dim == 0) return out;
  const Tensor xf = x.to(at::kFloat).contiguous();
  Tensor bad = at::zeros({1}, x.options().dtype(at::kInt));
  cuda::quantize_f32(xf.data_ptr<float>(), n, dim, s.data_ptr<float>(), z.data_ptr<float>(), out.data_ptr<int8_t>(),
                     bad.data_ptr<int32_t>(), current_stream(x));
  if (bad.item<int32_t>() != 0) {
    const Tensor where = at::nonzero(at::logical_not(at::isfinite(xf)))[0].cpu();
    const int64_t i = where[0].item<int64_t>(), d = where[1].item<int64_t>();
    TORCH_CHECK_VALUE(false, op, ": x must be finite, got ", xf[i][d].item<float>(), " at [", i, ", ", d, "]");
  }
  return out;
}

std::tuple<Tensor, Tensor> int8_topk_cuda(const Tensor& queries, const Tensor& database, int64_t k,
                                          c10::string_view metric, const std::optional<Tensor>& database_norms) {
  const char* op = "int8_topk";
  check_query_database(queries, database, op);
  const bool cos = is_cosine(std::string(metric), op);
  const int64_t nq = queries.size(0), nb = database.size(0), dim = queries.size(1);
  check_k(k, nb, op);
  checked_mul(nq, k, op, "the output size queries x k");
  TORCH_CHECK_VALUE(k <= cuda::int8_topk_max_k(), op, ": k must be <= ", cuda::int8_topk_max_k(),
                    " on CUDA (the per-block selection keeps k candidates in shared memory), got ", k,
                    "; run on CPU for larger k");
  if (database_norms.has_value()) check_same_device(database, "database", *database_norms, "database_norms", op);
  const c10::cuda::CUDAGuard guard(queries.device());
  Tensor out_v = at::empty({nq, k}, queries.options().dtype(at::kFloat));
  Tensor out_i = at::empty({nq, k}, queries.options().dtype(at::kLong));
  if (nq == 0) return {out_v, out_i};
  const Tensor q = queries.contiguous(), db = database.contiguous();
  Tensor q_inv, db_inv;
  if (cos) {
    db_inv = inverse_norms(database_norms.has_value() ? *database_norms : int8_row_norms(db), op, "database_norms", nb,
                           database_norms.has_value());
    q_inv = inverse_norms(int8_row_norms(q), op, "queries", nq, false);
  }
  const size_t ws_bytes = cuda::int8_topk_workspace_bytes(nq, nb, k);
  Tensor ws = at::empty({int64_t(std::max<size_t>(ws_bytes, 1))}, queries.options().dtype(at::kByte));
  cuda::int8_topk(q.data_ptr<int8_t>(), nq, db.data_ptr<int8_t>(), nb, dim, k, cos ? q_inv.data_ptr<float>() : nullptr,
                  cos ? db_inv.data_ptr<float>() : nullptr, out_v.data_ptr<float>(), out_i.data_ptr<int64_t>(),
                  ws.data_ptr(), ws_bytes, current_stream(q));
  return {out_v, out_i};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(embkern, m) {
  m.def("int8_quantize(Tensor x, Tensor scale, Tensor zero_point) -> Tensor");
  m.def("int8_topk(Tensor queries, Tensor database, int k, str metric=\"dot\", Tensor? database_norms=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(embkern, CPU, m) {
  m.impl("int8_quantize", &int8_quantize_cpu);
  m.impl("int8_topk", &int8_topk_cpu);
}

#ifdef EMBKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(embkern, CUDA, m) {
  m.impl("int8_quantize", &int8_quantize_cuda);
  m.impl("int8_topk", &int8_topk_cuda);
}
#endif

}  // namespace embkern::int8
