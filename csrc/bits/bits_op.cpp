// bits family ops: schemas, argument checks, CPU and CUDA registration (fake kernels: python/embkern/_ops.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "bits/bits_common.h"
#include "bits/bits_cuda.h"
#include "bits/bits_kernels.h"
#include "common/checks.h"
#include "common/cpu_features.h"
#include "common/parallel_topk.h"

#ifdef EMBKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace embkern::bits {
namespace {

using at::Tensor;

// ---- argument checks (shared by every backend) -------------------------------------------------

void check_codes(const Tensor& t, const char* op, const char* name) {
  check_dtype(t, op, name, at::kByte);
  check_rank(t, op, name, 2);
  TORCH_CHECK_VALUE(t.size(1) >= 1, op, ": ", name, " must have at least 1 byte per code, got shape ", t.sizes());
}

void check_query_database(const Tensor& queries, const Tensor& database, const char* op) {
  check_codes(queries, op, "queries");
  check_codes(database, op, "database");
  TORCH_CHECK_VALUE(queries.size(1) == database.size(1), op,
                    ": queries and database must have the same bytes per code, got ", queries.size(1), " and ",
                    database.size(1));
  check_same_device(queries, "queries", database, "database", op);
}

void check_topk_k(int64_t k, int64_t n, const char* op) {
  TORCH_CHECK_VALUE(n >= 1, op, ": database must not be empty (got 0 rows)");
  TORCH_CHECK_VALUE(k >= 1 && k <= n, op, ": k must be in [1, ", n, "] (the number of database rows), got ", k);
}

void check_pack_input(const Tensor& x, const char* op) {
  check_rank(x, op, "x", 2);
  TORCH_CHECK_TYPE(!x.is_complex(), op, ": x must be a real tensor, got dtype ", dtype_name(x.scalar_type()));
}

void check_unpack_input(const Tensor& codes, int64_t dim, const char* op) {
  check_dtype(codes, op, "codes", at::kByte);
  check_rank(codes, op, "codes", 2);
  TORCH_CHECK_VALUE(dim >= 0, op, ": dim must be >= 0, got ", dim);
  TORCH_CHECK_VALUE((dim + 7) / 8 == codes.size(1), op, ": dim=", dim, " needs ", (dim + 7) / 8,
                    " bytes per code, but codes has ", codes.size(1));
}

// ---- CPU -----------------------------------------------------------------------------------------

using ScanFn = void (*)(EMBKERN_BITS_SCAN_ARGS);
using DistFn = void (*)(EMBKERN_BITS_DIST_ARGS);
using PackFn = void (*)(EMBKERN_BITS_PACK_ARGS);

ScanFn pick_scan() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (f.avx512 && f.vpopcntdq) return hamming_topk_scan_avx512vpopcnt;
  if (f.avx512) return hamming_topk_scan_avx512;
  if (f.avx2) return hamming_topk_scan_avx2;
#endif
  return hamming_topk_scan_scalar;
}

DistFn pick_distance() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (f.avx512 && f.vpopcntdq) return hamming_distance_avx512vpopcnt;
  if (f.avx512) return hamming_distance_avx512;
  if (f.avx2) return hamming_distance_avx2;
#endif
  return hamming_distance_scalar;
}

PackFn pick_pack() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (f.avx512) return pack_bits_f32_avx512;
  if (f.avx2) return pack_bits_f32_avx2;
#endif
  return pack_bits_f32_scalar;
}


Tensor pack_bits_cpu(const Tensor& x, double threshold) {
  check_pack_input(x, "pack_bits");
  const int64_t n = x.size(0), dim = x.size(1), bytes = (dim + 7) / 8;
  Tensor out = at::empty({n, bytes}, x.options().dtype(at::kByte));
  if (n == 0 || bytes == 0) return out;
  // float32 compares against float(threshold), exactly as torch's `x > threshold` does.
  if (x.scalar_type() == at::kFloat) {
    const Tensor xc = x.contiguous();
    const PackFn pack = pick_pack();
    const float* xp = xc.data_ptr<float>();
    uint8_t* op = out.data_ptr<uint8_t>();
    at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
      pack(xp + b * dim, e - b, dim, float(threshold), op + b * bytes);
    });
  } else {
    // Compare in the input's own dtype (exact), then pack the booleans.
    const Tensor bits = at::gt(x, threshold).to(at::kByte).contiguous();
    const uint8_t* bp = bits.data_ptr<uint8_t>();
    uint8_t* op = out.data_ptr<uint8_t>();
    at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
      pack_bits_bool_scalar(bp + b * dim, e - b, dim, op + b * bytes);
    });
  }
  return out;
}

Tensor unpack_bits_cpu(const Tensor& codes, int64_t dim) {
  check_unpack_input(codes, dim, "unpack_bits");
  const int64_t n = codes.size(0);
  Tensor out = at::empty({n, dim}, codes.options().dtype(at::kBool));
  if (n == 0 || dim == 0) return out;
  const Tensor c = codes.contiguous();
  const uint8_t* cp = c.data_ptr<uint8_t>();
  uint8_t* op = reinterpret_cast<uint8_t*>(out.data_ptr<bool>());
  const int64_t bytes = c.size(1);
  at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) { unpack_bits_scalar(cp + b * bytes, e - b, dim, op + b * dim); });
  return out;
}

Tensor hamming_distance_cpu(const Tensor& queries, const Tensor& database) {
  check_query_database(queries, database, "hamming_distance");
  const int64_t nq = queries.size(0), nb = database.size(0), cb = queries.size(1);
  checked_mul(nq, nb, "hamming_distance", "the output size queries x database");
  Tensor out = at::empty({nq, nb}, queries.options().dtype(at::kInt));
  if (nq == 0 || nb == 0) return out;
  const Tensor q = queries.contiguous(), db = database.contiguous();
  const uint8_t *qp = q.data_ptr<uint8_t>(), *dp = db.data_ptr<uint8_t>();
  int32_t* op = out.data_ptr<int32_t>();
  const DistFn dist = pick_distance();
  // By queries when there are enough of them, else by database columns.
  if (nq >= 8 * at::get_num_threads()) {
    at::parallel_for(0, nq, 1, [&](int64_t b, int64_t e) { dist(qp + b * cb, e - b, dp, nb, cb, op + b * nb, nb); });
  } else {
    at::parallel_for(0, nb, kMinTopkRowsPerTask, [&](int64_t b, int64_t e) {
      dist(qp, nq, dp + b * cb, e - b, cb, op + b, nb);
    });
  }
  return out;
}

std::tuple<Tensor, Tensor> hamming_topk_cpu(const Tensor& queries, const Tensor& database, int64_t k) {
  check_query_database(queries, database, "hamming_topk");
  const int64_t nq = queries.size(0), nb = database.size(0), cb = queries.size(1);
  check_topk_k(k, nb, "hamming_topk");
  checked_mul(nq, k, "hamming_topk", "the output size queries x k");
  Tensor out_d = at::empty({nq, k}, queries.options().dtype(at::kInt));
  Tensor out_i = at::empty({nq, k}, queries.options().dtype(at::kLong));
  const Tensor q = queries.contiguous(), db = database.contiguous();
  const uint8_t *qp = q.data_ptr<uint8_t>(), *dp = db.data_ptr<uint8_t>();
  const ScanFn scan = pick_scan();
  parallel_topk<int32_t, /*LargerIsBetter=*/false>(
      nq, nb, k, out_d.data_ptr<int32_t>(), out_i.data_ptr<int64_t>(), "hamming_topk",
      [&](int64_t qb, int64_t qe, int64_t db_b, int64_t db_e, int32_t* hv, int64_t* hi, int64_t* hn) {
        scan(qp + qb * cb, qe - qb, dp, db_b, db_e, cb, HammingHeaps{hv, hi, hn, k});
      });
  return {out_d, out_i};
}

// ---- CUDA ----------------------------------------------------------------------------------------

#ifdef EMBKERN_WITH_CUDA
cudaStream_t current_stream(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

Tensor pack_bits_cuda(const Tensor& x, double threshold) {
  check_pack_input(x, "pack_bits");
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.size(0), dim = x.size(1);
  Tensor out = at::empty({n, (dim + 7) / 8}, x.options().dtype(at::kByte));
  if (n == 0 || dim == 0) return out;
  // Other dtypes are compared in their own dtype first, then packed as 0/1 floats against 0.5.
  const bool is_f32 = x.scalar_type() == at::kFloat;
  const Tensor xf = is_f32 ? x.contiguous() : at::gt(x, threshold).to(at::kFloat).contiguous();
  const float t = is_f32 ? float(threshold) : 0.5f;
  cuda::pack_bits_f32(xf.data_ptr<float>(), n, dim, t, out.data_ptr<uint8_t>(), current_stream(x));
  return out;
}

Tensor unpack_bits_cuda(const Tensor& codes, int64_t dim) {
  check_unpack_input(codes, dim, "unpack_bits");
  const c10::cuda::CUDAGuard guard(codes.device());
  const int64_t n = codes.size(0);
  Tensor out = at::empty({n, dim}, codes.options().dtype(at::kBool));
  if (n == 0 || dim == 0) return out;
  const Tensor c = codes.contiguous();
  cuda::unpack_bits(c.data_ptr<uint8_t>(), n, dim, reinterpret_cast<uint8_t*>(out.data_ptr<bool>()), current_stream(c));
  return out;
}

Tensor hamming_distance_cuda(const Tensor& queries, const Tensor& database) {
  check_query_database(queries, database, "hamming_distance");
  const c10::cuda::CUDAGuard guard(queries.device());
  const int64_t nq = queries.size(0), nb = database.size(0);
  checked_mul(nq, nb, "hamming_distance", "the output size queries x database");
  Tensor out = at::empty({nq, nb}, queries.options().dtype(at::kInt));
  if (nq == 0 || nb == 0) return out;
  const Tensor q = queries.contiguous(), db = database.contiguous();
  cuda::hamming_distance(q.data_ptr<uint8_t>(), nq, db.data_ptr<uint8_t>(), nb, q.size(1), out.data_ptr<int32_t>(),
                         current_stream(q));
  return out;
}

std::tuple<Tensor, Tensor> hamming_topk_cuda(const Tensor& queries, const Tensor& database, int64_t k) {
  check_query_database(queries, database, "hamming_topk");
  const int64_t nq = queries.size(0), nb = database.size(0), cb = queries.size(1);
  check_topk_k(k, nb, "hamming_topk");
  checked_mul(nq, k, "hamming_topk", "the output size queries x k");
  const c10::cuda::CUDAGuard guard(queries.device());
  Tensor out_d = at::empty({nq, k}, queries.options().dtype(at::kInt));
  Tensor out_i = at::empty({nq, k}, queries.options().dtype(at::kLong));
  if (nq == 0) return {out_d, out_i};
  const Tensor q = queries.contiguous(), db = database.contiguous();
  const size_t ws_bytes = cuda::hamming_topk_workspace_bytes(nq, nb, cb, k);
  Tensor ws = at::empty({int64_t(std::max<size_t>(ws_bytes, 1))}, queries.options().dtype(at::kByte));
  cuda::hamming_topk(q.data_ptr<uint8_t>(), nq, db.data_ptr<uint8_t>(), nb, cb, k, out_d.data_ptr<int32_t>(),
                     out_i.data_ptr<int64_t>(), ws.data_ptr(), ws_bytes, current_stream(q));
  return {out_d, out_i};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(embkern, m) {
  m.def("pack_bits(Tensor x, float threshold=0.0) -> Tensor");
  m.def("unpack_bits(Tensor codes, int dim) -> Tensor");
  m.def("hamming_distance(Tensor queries, Tensor database) -> Tensor");
  m.def("hamming_topk(Tensor queries, Tensor database, int k) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(embkern, CPU, m) {
  m.impl("pack_bits", &pack_bits_cpu);
  m.impl("unpack_bits", &unpack_bits_cpu);
  m.impl("hamming_distance", &hamming_distance_cpu);
  m.impl("hamming_topk", &hamming_topk_cpu);
}

#ifdef EMBKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(embkern, CUDA, m) {
  m.impl("pack_bits", &pack_bits_cuda);
  m.impl("unpack_bits", &unpack_bits_cuda);
  m.impl("hamming_distance", &hamming_distance_cuda);
  m.impl("hamming_topk", &hamming_topk_cuda);
}
#endif

}  // namespace embkern::bits
