// rbe family ops: schemas, argument checks, CPU and CUDA registration (fake kernels: python/embkern/_ops.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "common/parallel_topk.h"
#include "rbe/rbe_cuda.h"
#include "rbe/rbe_kernels.h"

#ifdef EMBKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace embkern::rbe {
namespace {

using at::Tensor;

// S = 4 dot - ... stays below 2^31 in magnitude for dim * 4 * 15^2 < 2^31 (kernels convert it from int32).
constexpr int64_t kMaxDim = int64_t(1) << 21;

// ---- argument checks (shared by every backend) -------------------------------------------------

void check_bits(int64_t bits, const char* op) {
  TORCH_CHECK_VALUE(bits >= 1 && bits <= 4, op, ": bits must be in [1, 4] (bits per dimension), got ", bits);
}

void check_codes(const Tensor& t, int64_t dim, int64_t bits, const char* op, const char* name) {
  check_dtype(t, op, name, at::kByte);
  check_rank(t, op, name, 2);
  const int64_t want = sdc_code_bytes(dim, int(bits));
  TORCH_CHECK_VALUE(t.size(1) == want, op, ": ", name, " has ", t.size(1), " bytes per code, but dim=", dim,
                    " and bits=", bits, " need ceil(dim * bits / 8) = ", want);
}

SdcShape check_sdc(const Tensor& q, const Tensor& db, int64_t dim, int64_t bits, const std::optional<Tensor>& inv,
                   const char* op) {
  check_bits(bits, op);
  TORCH_CHECK_VALUE(dim >= 1 && dim <= kMaxDim, op, ": dim must be in [1, ", kMaxDim, "], got ", dim);
  check_codes(q, dim, bits, op, "q_codes");
  check_codes(db, dim, bits, op, "db_codes");
  check_same_device(q, "q_codes", db, "db_codes", op);
  if (inv) {
    check_dtype(*inv, op, "db_inv_norm", at::kFloat);
    check_rank(*inv, op, "db_inv_norm", 1);
    TORCH_CHECK_VALUE(inv->size(0) == db.size(0), op, ": db_inv_norm must have one value per database row (",
                      db.size(0), "), got ", inv->size(0));
    check_same_device(*inv, "db_inv_norm", db, "db_codes", op);
    // A NaN would never enter a heap and leave top-k short; an infinity times a zero score is NaN.
    TORCH_CHECK_VALUE(inv->numel() == 0 || at::isfinite(*inv).all().item<bool>(), op,
                      ": db_inv_norm must be finite, got a NaN or infinite value");
  }
  return SdcShape{dim, int(bits), sdc_code_bytes(dim, int(bits)), nullptr};
}

void check_topk_k(int64_t k, int64_t n, const char* op) {
  TORCH_CHECK_VALUE(n >= 1, op, ": db_codes must not be empty (got 0 rows)");
  TORCH_CHECK_VALUE(k >= 1 && k <= n, op, ": k must be in [1, ", n, "] (the number of database rows), got ", k);
}

// ---- CPU -----------------------------------------------------------------------------------------

using ScanFn = void (*)(EMBKERN_RBE_SCAN_ARGS);
using ScoresFn = void (*)(EMBKERN_RBE_SCORES_ARGS);

// 2 bits per dimension: VPERMB tables beat bit planes (1.33 vs 2 port-5 ops per pair at dim 256,
// measured in benchmarks/bench_rbe.py); other widths use bit planes.
bool use_vbmi(const CpuFeatures& f, const SdcShape& s) { return f.avx512 && f.vbmi && s.bits == 2 && s.dim <= kVbmiMaxDim; }
// 2 bits and a few queries: read rows in place (the blocked kernels' repack would dominate).
bool use_vnni(const CpuFeatures& f, const SdcShape& s, int64_t nq) {
  return f.avx512 && f.vnni && s.bits == 2 && nq <= kVnniMaxQueries;
}

ScanFn pick_scan([[maybe_unused]] const SdcShape& s, [[maybe_unused]] int64_t nq) {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (use_vnni(f, s, nq)) return sdc_topk_scan_avx512vnni;
  if (use_vbmi(f, s)) return sdc_topk_scan_avx512vbmi;
  if (f.avx512 && f.vpopcntdq) return sdc_topk_scan_avx512vpopcnt;
  if (f.avx512) return sdc_topk_scan_avx512;
  if (f.avx2) return sdc_topk_scan_avx2;
#endif
  return sdc_topk_scan_scalar;
}

ScoresFn pick_scores([[maybe_unused]] const SdcShape& s, [[maybe_unused]] int64_t nq) {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (use_vnni(f, s, nq)) return sdc_scores_avx512vnni;
  if (use_vbmi(f, s)) return sdc_scores_avx512vbmi;
  if (f.avx512 && f.vpopcntdq) return sdc_scores_avx512vpopcnt;
  if (f.avx512) return sdc_scores_avx512;
  if (f.avx2) return sdc_scores_avx2;
#endif
  return sdc_scores_scalar;
}

Tensor sdc_scores_cpu(const Tensor& q_codes, const Tensor& db_codes, int64_t dim, int64_t bits,
                      const std::optional<Tensor>& db_inv_norm) {
  SdcShape s = check_sdc(q_codes, db_codes, dim, bits, db_inv_norm, "sdc_scores");
  const int64_t nq = q_codes.size(0), nb = db_codes.size(0);
  checked_mul(nq, nb, "sdc_scores", "the output size queries x database");
  Tensor out = at::empty({nq, nb}, q_codes.options().dtype(at::kFloat));
  if (nq == 0 || nb == 0) return out;
  const Tensor q = q_codes.contiguous(), db = db_codes.contiguous();
  Tensor inv;
  if (db_inv_norm) {
    inv = db_inv_norm->contiguous();
    s.db_inv_norm = inv.data_ptr<float>();
  }
  const uint8_t *qp = q.data_ptr<uint8_t>(), *dp = db.data_ptr<uint8_t>();
  float* op = out.data_ptr<float>();
  const ScoresFn scores = pick_scores(s, nq);
  const int64_t cb = s.code_bytes;
  if (nq >= 8 * at::get_num_threads()) {
    at::parallel_for(0, nq, 1, [&](int64_t b, int64_t e) { scores(qp + b * cb, e - b, dp, 0, nb, s, op + b * nb, nb); });
  } else {
    at::parallel_for(0, nb, kMinTopkRowsPerTask, [&](int64_t b, int64_t e) { scores(qp, nq, dp, b, e, s, op + b, nb); });
  }
  return out;
}

std::tuple<Tensor, Tensor> sdc_topk_cpu(const Tensor& q_codes, const Tensor& db_codes, int64_t dim, int64_t bits,
                                        int64_t k, const std::optional<Tensor>& db_inv_norm) {
  SdcShape s = check_sdc(q_codes, db_codes, dim, bits, db_inv_norm, "sdc_topk");
  const int64_t nq = q_codes.size(0), nb = db_codes.size(0);
  check_topk_k(k, nb, "sdc_topk");
  checked_mul(nq, k, "sdc_topk", "the output size queries x k");
  Tensor out_v = at::empty({nq, k}, q_codes.options().dtype(at::kFloat));
  Tensor out_i = at::empty({nq, k}, q_codes.options().dtype(at::kLong));
  const Tensor q = q_codes.contiguous(), db = db_codes.contiguous();
  Tensor inv;
  if (db_inv_norm) {
    inv = db_inv_norm->contiguous();
    s.db_inv_norm = inv.data_ptr<float>();
  }
  const uint8_t *qp = q.data_ptr<uint8_t>(), *dp = db.data_ptr<uint8_t>();
  const ScanFn scan = pick_scan(s, nq);
  const int64_t cb = s.code_bytes;
  parallel_topk<float, /*LargerIsBetter=*/true>(
      nq, nb, k, out_v.data_ptr<float>(), out_i.data_ptr<int64_t>(), "sdc_topk",
      [&](int64_t qb, int64_t qe, int64_t db_b, int64_t db_e, float* hv, int64_t* hi, int64_t* hn) {
        scan(qp + qb * cb, qe - qb, dp, db_b, db_e, s, SdcHeaps{hv, hi, hn, k});
      });
  return {out_v, out_i};
}

// ---- encoder epilogue and converters ---------------------------------------------------------------

void check_float2d(const Tensor& t, const char* op, const char* name) {
  check_dtype(t, op, name, at::kFloat);
  check_rank(t, op, name, 2);
}

Tensor rbe_residual_cpu(const Tensor& x, const Tensor& h) {
  check_float2d(x, "rbe_residual", "x");
  check_float2d(h, "rbe_residual", "h");
  TORCH_CHECK_VALUE(x.sizes() == h.sizes(), "rbe_residual: x and h must have the same shape, got ", x.sizes(),
                    " and ", h.sizes());
  check_same_device(x, "x", h, "h", "rbe_residual");
  const Tensor xc = x.contiguous(), hc = h.contiguous();
  Tensor out = at::empty_like(xc);
  const int64_t n = x.size(0), d = x.size(1);
  if (out.numel() == 0) return out;
  const float *xp = xc.data_ptr<float>(), *hp = hc.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, 256, [&](int64_t b, int64_t e) { rbe_residual_f32(xp + b * d, hp + b * d, e - b, d, op + b * d); });
  return out;
}

void check_sign_step(const Tensor& pre, const std::optional<Tensor>& levels, int64_t step, const char* op) {
  check_float2d(pre, op, "pre");
  TORCH_CHECK_VALUE(step >= 0 && step <= 3, op, ": step must be in [0, 3] (at most 4 bits per dimension), got ", step);
  TORCH_CHECK_VALUE(levels.has_value() == (step > 0), op, ": levels must be ", step > 0 ? "given" : "None",
                    " at step ", step);
  if (levels) {
    check_dtype(*levels, op, "levels", at::kByte);
    TORCH_CHECK_VALUE(levels->sizes() == pre.sizes(), op, ": levels must have the shape of pre ", pre.sizes(),
                      ", got ", levels->sizes());
    check_same_device(*levels, "levels", pre, "pre", op);
  }
}

std::tuple<Tensor, Tensor> rbe_sign_step_cpu(const Tensor& pre, const std::optional<Tensor>& levels, int64_t step) {
  check_sign_step(pre, levels, step, "rbe_sign_step");
  const Tensor pc = pre.contiguous();
  const Tensor lc = levels ? levels->contiguous() : Tensor();
  Tensor lo = at::empty(pre.sizes(), pre.options().dtype(at::kByte));
  Tensor b = at::empty(pre.sizes(), pre.options());
  const int64_t n = pre.size(0), m = pre.size(1);
  if (pre.numel() == 0) return {lo, b};
  const float* pp = pc.data_ptr<float>();
  const uint8_t* lp = levels ? lc.data_ptr<uint8_t>() : nullptr;
  uint8_t* lop = lo.data_ptr<uint8_t>();
  float* bp = b.data_ptr<float>();
  at::parallel_for(0, n, 256, [&](int64_t r0, int64_t r1) {
    rbe_sign_step_f32(pp + r0 * m, lp ? lp + r0 * m : nullptr, r1 - r0, m, int(step), lop + r0 * m, bp + r0 * m);
  });
  return {lo, b};
}

void check_levels(const Tensor& levels, int64_t bits, const char* op) {
  check_bits(bits, op);
  check_dtype(levels, op, "levels", at::kByte);
  check_rank(levels, op, "levels", 2);
  if (levels.numel() > 0 && levels.device().is_cpu()) {
    const int64_t mx = levels.max().item<int64_t>();
    TORCH_CHECK_VALUE(mx < (int64_t(1) << bits), op, ": levels must be < 2^bits = ", int64_t(1) << bits,
                      " for bits=", bits, ", got a level of ", mx);
  }
}

std::tuple<Tensor, Tensor> rbe_pack_levels_cpu(const Tensor& levels, int64_t bits) {
  check_levels(levels, bits, "rbe_pack_levels");
  const int64_t n = levels.size(0), dim = levels.size(1), bytes = sdc_code_bytes(dim, int(bits));
  Tensor codes = at::empty({n, bytes}, levels.options());
  Tensor inv = at::empty({n}, levels.options().dtype(at::kFloat));
  if (n == 0) return {codes, inv};
  const Tensor lc = levels.contiguous();
  const uint8_t* lp = lc.data_ptr<uint8_t>();
  uint8_t* cp = codes.data_ptr<uint8_t>();
  float* ip = inv.data_ptr<float>();
  at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) {
    rbe_pack_levels(lp + b * dim, e - b, dim, int(bits), cp + b * bytes, ip + b);
  });
  return {codes, inv};
}

Tensor rbe_unpack_levels_cpu(const Tensor& codes, int64_t dim, int64_t bits) {
  check_bits(bits, "rbe_unpack_levels");
  TORCH_CHECK_VALUE(dim >= 0, "rbe_unpack_levels: dim must be >= 0, got ", dim);
  check_codes(codes, dim, bits, "rbe_unpack_levels", "codes");
  const int64_t n = codes.size(0), bytes = codes.size(1);
  Tensor out = at::empty({n, dim}, codes.options());
  if (n == 0 || dim == 0) return out;
  const Tensor c = codes.contiguous();
  const uint8_t* cp = c.data_ptr<uint8_t>();
  uint8_t* op = out.data_ptr<uint8_t>();
  at::parallel_for(0, n, 1024, [&](int64_t b, int64_t e) { rbe_unpack_levels(cp + b * bytes, e - b, dim, int(bits), op + b * dim); });
  return out;
}

// ---- CUDA ----------------------------------------------------------------------------------------

#ifdef EMBKERN_WITH_CUDA
cudaStream_t current_stream(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

Tensor sdc_scores_cuda(const Tensor& q_codes, const Tensor& db_codes, int64_t dim, int64_t bits,
                       const std::optional<Tensor>& db_inv_norm) {
  const c10::cuda::CUDAGuard guard(q_codes.device());
  const SdcShape s = check_sdc(q_codes, db_codes, dim, bits, db_inv_norm, "sdc_scores");
  const int64_t nq = q_codes.size(0), nb = db_codes.size(0);
  checked_mul(nq, nb, "sdc_scores", "the output size queries x database");
  Tensor out = at::empty({nq, nb}, q_codes.options().dtype(at::kFloat));
  if (nq == 0 || nb == 0) return out;
  const Tensor q = q_codes.contiguous(), db = db_codes.contiguous();
  const Tensor inv = db_inv_norm ? db_inv_norm->contiguous() : Tensor();
  const int64_t words = sdc_plane_words(dim);
  Tensor ws = at::empty({int64_t(cuda::sdc_workspace_words(nq, nb, s.bits, words))}, q.options().dtype(at::kLong));
  cuda::sdc_scores(q.data_ptr<uint8_t>(), nq, db.data_ptr<uint8_t>(), nb, s.dim, s.bits,
                   db_inv_norm ? inv.data_ptr<float>() : nullptr, out.data_ptr<float>(),
                   reinterpret_cast<uint64_t*>(ws.data_ptr<int64_t>()), current_stream(q));
  return out;
}

std::tuple<Tensor, Tensor> sdc_topk_cuda(const Tensor& q_codes, const Tensor& db_codes, int64_t dim, int64_t bits,
                                         int64_t k, const std::optional<Tensor>& db_inv_norm) {
  const c10::cuda::CUDAGuard guard(q_codes.device());
  const SdcShape s = check_sdc(q_codes, db_codes, dim, bits, db_inv_norm, "sdc_topk");
  const int64_t nq = q_codes.size(0), nb = db_codes.size(0);
  check_topk_k(k, nb, "sdc_topk");
  TORCH_CHECK_VALUE(nb < (int64_t(1) << 32), "sdc_topk: CUDA supports up to 2^32 - 1 database rows, got ", nb);
  Tensor out_v = at::empty({nq, k}, q_codes.options().dtype(at::kFloat));
  Tensor out_i = at::empty({nq, k}, q_codes.options().dtype(at::kLong));
  if (nq == 0) return {out_v, out_i};
  const Tensor q = q_codes.contiguous(), db = db_codes.contiguous();
  const Tensor inv = db_inv_norm ? db_inv_norm->contiguous() : Tensor();
  const int64_t words = sdc_plane_words(dim);
  // Queries go in chunks whose (score, index) keys fit a bounded buffer: never a Q x N matrix.
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(nq, (int64_t(1) << 25) / nb));
  Tensor ws = at::empty({int64_t(cuda::sdc_workspace_words(chunk, nb, s.bits, words))}, q.options().dtype(at::kLong));
  Tensor keys = at::empty({chunk, nb}, q.options().dtype(at::kLong));
  for (int64_t q0 = 0; q0 < nq; q0 += chunk) {
    const int64_t qn = std::min(chunk, nq - q0);
    Tensor kc = keys.narrow(0, 0, qn);
    cuda::sdc_keys(q.data_ptr<uint8_t>() + q0 * s.code_bytes, qn, db.data_ptr<uint8_t>(), nb, s.dim, s.bits,
                   db_inv_norm ? inv.data_ptr<float>() : nullptr, kc.data_ptr<int64_t>(),
                   reinterpret_cast<uint64_t*>(ws.data_ptr<int64_t>()), current_stream(q));
    // Keys are unique (score bits, then the inverted index), so top-k is exact and deterministic.
    const Tensor top = std::get<0>(at::topk(kc, k, 1, /*largest=*/true, /*sorted=*/true)).contiguous();
    cuda::sdc_decode_keys(top.data_ptr<int64_t>(), qn * k, out_v.data_ptr<float>() + q0 * k,
                          out_i.data_ptr<int64_t>() + q0 * k, current_stream(q));
  }
  return {out_v, out_i};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(embkern, m) {
  m.def("sdc_scores(Tensor q_codes, Tensor db_codes, int dim, int bits, Tensor? db_inv_norm=None) -> Tensor");
  m.def("sdc_topk(Tensor q_codes, Tensor db_codes, int dim, int bits, int k, Tensor? db_inv_norm=None) -> (Tensor, Tensor)");
  m.def("rbe_residual(Tensor x, Tensor h) -> Tensor");
  m.def("rbe_sign_step(Tensor pre, Tensor? levels, int step) -> (Tensor, Tensor)");
  m.def("rbe_pack_levels(Tensor levels, int bits) -> (Tensor, Tensor)");
  m.def("rbe_unpack_levels(Tensor codes, int dim, int bits) -> Tensor");
}

TORCH_LIBRARY_IMPL(embkern, CPU, m) {
  m.impl("sdc_scores", &sdc_scores_cpu);
  m.impl("sdc_topk", &sdc_topk_cpu);
  m.impl("rbe_residual", &rbe_residual_cpu);
  m.impl("rbe_sign_step", &rbe_sign_step_cpu);
  m.impl("rbe_pack_levels", &rbe_pack_levels_cpu);
  m.impl("rbe_unpack_levels", &rbe_unpack_levels_cpu);
}

#ifdef EMBKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(embkern, CUDA, m) {
  m.impl("sdc_scores", &sdc_scores_cuda);
  m.impl("sdc_topk", &sdc_topk_cuda);
}
#endif

}  // namespace embkern::rbe
