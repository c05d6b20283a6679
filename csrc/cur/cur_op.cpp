// cur family ops: schema, argument checks, CPU and CUDA registration (fake kernels: python/embkern/_ops.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <vector>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "common/topk.h"
#include "cur/cur_cuda.h"
#include "cur/cur_kernels.h"

#ifdef EMBKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace embkern::cur {
namespace {

using at::Tensor;
constexpr const char* kOp = "score_topk";
using ScoreHeap = TopKHeap<float, /*LargerIsBetter=*/true>;

// ---- argument checks (shared by every backend) -------------------------------------------------

int etype_of(const Tensor& E) {
  switch (E.scalar_type()) {
    case at::kFloat: return kF32;
    case at::kBFloat16: return kBF16;
    case at::kChar: return kI8;
    default:
      TORCH_CHECK_TYPE(false, kOp, ": E must have dtype torch.float32, torch.bfloat16 or torch.int8, got ",
                       dtype_name(E.scalar_type()));
  }
  return kF32;
}

// Checks shapes, dtypes, devices and values; returns E's storage type.
int check_inputs(const Tensor& C, const Tensor& E, const std::optional<Tensor>& exclude,
                 const std::optional<Tensor>& scales) {
  check_dtype(C, kOp, "C", at::kFloat);
  check_rank(C, kOp, "C", 2);
  check_rank(E, kOp, "E", 2);
  const int et = etype_of(E);
  TORCH_CHECK_VALUE(C.size(1) == E.size(0), kOp, ": C must have as many columns as E has rows (r), got C of shape ",
                    C.sizes(), " and E of shape ", E.sizes());
  check_same_device(C, "C", E, "E", kOp);
  if (et == kI8) {
    TORCH_CHECK_VALUE(scales.has_value(), kOp, ": E of dtype torch.int8 needs scales (float32[N] per-column scales)");
    check_dtype(*scales, kOp, "scales", at::kFloat);
    check_rank(*scales, kOp, "scales", 1);
    TORCH_CHECK_VALUE(scales->size(0) == E.size(1), kOp, ": scales must have shape [", E.size(1),
                      "] (one per column of E), got ", scales->sizes());
    check_same_device(*scales, "scales", E, "E", kOp);
    TORCH_CHECK_VALUE(at::isfinite(*scales).all().item<bool>(), kOp, ": scales must be finite (found NaN or Inf)");
  } else {
    TORCH_CHECK_VALUE(!scales.has_value(), kOp, ": scales are only for E of dtype torch.int8, got E of dtype ",
                      dtype_name(E.scalar_type()));
  }
  if (exclude.has_value()) {
    check_dtype(*exclude, kOp, "exclude", at::kLong);
    check_rank(*exclude, kOp, "exclude", 2);
    TORCH_CHECK_VALUE(exclude->size(0) == C.size(0), kOp, ": exclude must have one row per query (", C.size(0),
                      "), got shape ", exclude->sizes());
    check_same_device(*exclude, "exclude", C, "C", kOp);
  }
  TORCH_CHECK_VALUE(at::isfinite(C).all().item<bool>(), kOp, ": C must be finite (found NaN or Inf)");
  return et;
}

// Per query: the sorted, unique excluded ids (-1 entries are padding). Checks the range.
struct ExclusionLists {
  std::vector<int64_t> ids, offsets;
  int64_t max_count = 0;
};

ExclusionLists exclusion_lists(const Tensor& exclude_cpu, int64_t n) {
  ExclusionLists out;
  const int64_t b = exclude_cpu.size(0), m = exclude_cpu.size(1);
  const Tensor ex = exclude_cpu.contiguous();
  const int64_t* p = ex.data_ptr<int64_t>();
  out.offsets.assign(size_t(b + 1), 0);
  out.ids.reserve(size_t(b * m));
  for (int64_t q = 0; q < b; ++q) {
    const size_t start = out.ids.size();
    for (int64_t j = 0; j < m; ++j) {
      const int64_t id = p[q * m + j];
      if (id == -1) continue;
      TORCH_CHECK_INDEX(id >= 0 && id < n, kOp, ": exclude[", q, ", ", j, "] = ", id,
                        " is out of range: ids must be in [0, ", n, ") or -1 (padding)");
      out.ids.push_back(id);
    }
    std::sort(out.ids.begin() + start, out.ids.end());
    out.ids.erase(std::unique(out.ids.begin() + start, out.ids.end()), out.ids.end());
    out.offsets[q + 1] = int64_t(out.ids.size());
    out.max_count = std::max<int64_t>(out.max_count, int64_t(out.ids.size() - start));
  }
  return out;
}

void check_k(int64_t k, int64_t n, int64_t max_excluded) {
  TORCH_CHECK_VALUE(k >= 1 && k <= n - max_excluded, kOp, ": k must be in [1, ", n - max_excluded, "] (N = ", n,
                    " items minus at most ", max_excluded, " excluded for a query), got ", k);
}

// ---- CPU -----------------------------------------------------------------------------------------

using ScanFn = void (*)(EMBKERN_CUR_SCAN_ARGS);

ScanFn pick_scan() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (f.avx512 && f.vnni) return score_topk_scan_avx512vnni;
  if (f.avx512) return score_topk_scan_avx512;
  if (f.avx2) return score_topk_scan_avx2;
#endif
  return score_topk_scan_scalar;
}

// Columns per task below which E is not split further.
constexpr int64_t kMinColsPerTask = 8192;

std::tuple<Tensor, Tensor> score_topk_cpu(const Tensor& C, const Tensor& E, int64_t k,
                                          const std::optional<Tensor>& exclude, const std::optional<Tensor>& scales) {
  const int et = check_inputs(C, E, exclude, scales);
  const int64_t nq = C.size(0), r = C.size(1), n = E.size(1);
  ExclusionLists exl;
  if (exclude.has_value()) exl = exclusion_lists(*exclude, n);
  check_k(k, n, exl.max_count);
  const int64_t qk = checked_mul(nq, k, kOp, "the output size B x k");
  Tensor out_v = at::empty({nq, k}, C.options());
  Tensor out_i = at::empty({nq, k}, C.options().dtype(at::kLong));
  if (nq == 0) return {out_v, out_i};

  const Tensor Cc = C.contiguous();
  // E's rows may be strided (a column slice of a wider matrix); columns must be contiguous.
  const Tensor Ec = E.stride(1) == 1 && E.stride(0) >= std::max<int64_t>(n, 1) ? E : E.contiguous();
  const Tensor Sc = scales.has_value() ? scales->contiguous() : Tensor();
  const float* cp = Cc.data_ptr<float>();
  const void* ep = Ec.data_ptr();
  const int64_t ld = Ec.size(0) > 1 ? Ec.stride(0) : n;
  const float* sp = Sc.defined() ? Sc.data_ptr<float>() : nullptr;
  const Exclusions ex{exl.ids.data(), exclude.has_value() ? exl.offsets.data() : nullptr};
  const ScanFn scan = pick_scan();

  // Split E's columns across tasks, each with heaps of its own for every query, merged below: E is
  // read once in total whatever B is (splitting by queries would read it once per thread).
  const int64_t threads = at::get_num_threads();
  const int64_t tasks = std::max<int64_t>(1, std::min(threads, n / kMinColsPerTask));
  float* ov = out_v.data_ptr<float>();
  int64_t* oi = out_i.data_ptr<int64_t>();
  std::vector<int64_t> sizes(size_t(nq), 0);
  if (tasks == 1) {
    scan(cp, nq, r, ep, et, sp, ld, 0, n, ex, ScoreHeaps{ov, oi, sizes.data(), k});
  } else {
    std::vector<float> tv(size_t(checked_mul(tasks, qk, kOp, "per-task heaps")));
    std::vector<int64_t> ti(tv.size()), tn(size_t(tasks * nq), 0);
    at::parallel_for(0, tasks, 1, [&](int64_t tb, int64_t te) {
      for (int64_t t = tb; t < te; ++t)
        scan(cp, nq, r, ep, et, sp, ld, t * n / tasks, (t + 1) * n / tasks, ex,
             ScoreHeaps{&tv[t * qk], &ti[t * qk], &tn[t * nq], k});
    });
    at::parallel_for(0, nq, 1, [&](int64_t b, int64_t e) {
      for (int64_t q = b; q < e; ++q) {
        ScoreHeap heap(ov + q * k, oi + q * k, k);
        for (int64_t t = 0; t < tasks; ++t)
          for (int64_t j = 0; j < tn[t * nq + q]; ++j) heap.push(tv[t * qk + q * k + j], ti[t * qk + q * k + j]);
        sizes[q] = heap.size();
      }
    });
  }
  for (int64_t q = 0; q < nq; ++q)
    TORCH_CHECK_VALUE(sizes[q] == k, kOp, ": query ", q, " has only ", sizes[q], " items with a non-NaN score, fewer than k = ",
                      k, " (E or scales contain NaN/Inf)");
  at::parallel_for(0, nq, 16, [&](int64_t b, int64_t e) {
    for (int64_t q = b; q < e; ++q) ScoreHeap(ov + q * k, oi + q * k, k, k).sort_best_first();
  });
  return {out_v, out_i};
}

// ---- CUDA ----------------------------------------------------------------------------------------

#ifdef EMBKERN_WITH_CUDA
std::tuple<Tensor, Tensor> score_topk_cuda(const Tensor& C, const Tensor& E, int64_t k,
                                           const std::optional<Tensor>& exclude, const std::optional<Tensor>& scales) {
  const int et = check_inputs(C, E, exclude, scales);
  const c10::cuda::CUDAGuard guard(C.device());
  const int64_t nq = C.size(0), r = C.size(1), n = E.size(1);
  // The k check needs the distinct excluded count per query (host copy of exclude: small).
  ExclusionLists exl;
  if (exclude.has_value()) exl = exclusion_lists(exclude->cpu(), n);
  check_k(k, n, exl.max_count);
  TORCH_CHECK_VALUE(k <= cuda::kMaxK, kOp, ": on CUDA k must be at most ", cuda::kMaxK, ", got ", k);
  TORCH_CHECK_VALUE(n < (int64_t(1) << 32) - 1, kOp, ": on CUDA E must have fewer than 2^32 - 1 columns, got ", n);
  checked_mul(nq, k, kOp, "the output size B x k");
  Tensor out_v = at::empty({nq, k}, C.options());
  Tensor out_i = at::empty({nq, k}, C.options().dtype(at::kLong));
  if (nq == 0) return {out_v, out_i};
  const Tensor Cc = C.contiguous(), Ec = E.contiguous();
  const Tensor Sc = scales.has_value() ? scales->contiguous() : Tensor();
  Tensor ex_ids, ex_off;
  if (exclude.has_value()) {
    ex_ids = at::tensor(exl.ids.empty() ? std::vector<int64_t>{0} : exl.ids, at::kLong).to(C.device());
    ex_off = at::tensor(exl.offsets, at::kLong).to(C.device());
  }
  const size_t ws_bytes = cuda::score_topk_workspace_bytes(nq, n, k);
  Tensor ws = at::empty({int64_t(std::max<size_t>(ws_bytes, 1))}, C.options().dtype(at::kByte));
  Tensor flag = at::zeros({1}, C.options().dtype(at::kInt));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream(C.device().index()).stream();
  cuda::score_topk(Cc.data_ptr<float>(), nq, r, Ec.data_ptr(), et, Sc.defined() ? Sc.data_ptr<float>() : nullptr, n,
                   exclude.has_value() ? ex_ids.data_ptr<int64_t>() : nullptr,
                   exclude.has_value() ? ex_off.data_ptr<int64_t>() : nullptr, k, out_v.data_ptr<float>(),
                   out_i.data_ptr<int64_t>(), flag.data_ptr<int32_t>(), ws.data_ptr(), ws_bytes, stream);
  TORCH_CHECK_VALUE(flag.item<int32_t>() == 0, kOp,
                    ": fewer than k items have a non-NaN score for some query (E or scales contain NaN/Inf)");
  return {out_v, out_i};
}
#endif

}  // namespace

TORCH_LIBRARY_FRAGMENT(embkern, m) {
  m.def("score_topk(Tensor C, Tensor E, int k, Tensor? exclude=None, Tensor? scales=None) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(embkern, CPU, m) { m.impl("score_topk", &score_topk_cpu); }

#ifdef EMBKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(embkern, CUDA, m) { m.impl("score_topk", &score_topk_cuda); }
#endif

}  // namespace embkern::cur
