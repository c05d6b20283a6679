// fastrp family ops: schemas, argument checks, CPU and CUDA registration (fake kernels: python/embkern/_ops.py).
//
// csr_spmm / csr_spmm_accumulate_: CSR x dense with a fused epilogue (row scale, L2 normalization,
// accumulation). fastrp: the whole FastRP pipeline on three n x dim buffers (two propagated
// matrices in the storage dtype and the fp32 output). fastrp_projection: rows of R for given keys
// (debug / reference use).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "common/checks.h"
#include "common/cpu_features.h"
#include "fastrp/fastrp_cuda.h"
#include "fastrp/fastrp_hash.h"
#include "fastrp/fastrp_kernels.h"

#ifdef EMBKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace embkern::fastrp {
namespace {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// ---- argument checks (shared by every backend; at:: reductions work on any device) ---------------

int64_t item_i64(const Tensor& t) { return t.item<int64_t>(); }

// The first position where `bad` (bool, 1-D) is true.
int64_t first_true(const Tensor& bad) { return item_i64(bad.to(at::kByte).argmax()); }

// The first i in [0, n) with bad(i), or -1: blocks of 4096 are tested without early exit, in
// parallel; only a block that holds an offender is scanned again for its position.
// These checks read every index of a 10M-entry graph, so a plain early-exit loop cost ~20 ms.
template <class Bad>
int64_t first_offender(int64_t n, Bad&& bad) {
  constexpr int64_t kBlock = 4096;
  std::atomic<int64_t> found{std::numeric_limits<int64_t>::max()};
  at::parallel_for(0, (n + kBlock - 1) / kBlock, 16, [&](int64_t bb, int64_t be) {
    for (int64_t b = bb; b < be && b * kBlock < found.load(std::memory_order_relaxed); ++b) {
      const int64_t lo = b * kBlock, hi = std::min(n, lo + kBlock);
      bool any = false;
      for (int64_t i = lo; i < hi; ++i) any |= bad(i);
      if (!any) continue;
      int64_t i = lo;
      while (!bad(i)) ++i;
      int64_t cur = found.load(std::memory_order_relaxed);
      while (i < cur && !found.compare_exchange_weak(cur, i, std::memory_order_relaxed)) {
      }
      break;  // later blocks of this range cannot hold an earlier offender
    }
  });
  const int64_t f = found.load();
  return f == std::numeric_limits<int64_t>::max() ? -1 : f;
}

// The kernels' view of a contiguous int64 or int32 indices tensor.
ColumnIds column_ids(const Tensor& indices) { return ColumnIds{indices.data_ptr(), indices.scalar_type() == at::kInt}; }

// Indices as the backend reads them, contiguous: the CPU kernels read int32 in place; the CUDA
// kernels take int64 (an int32 tensor is widened on the device).
Tensor kernel_indices(const Tensor& indices) {
  const Tensor t = indices.is_cuda() && indices.scalar_type() == at::kInt ? indices.to(at::kLong) : indices;
  return t.contiguous();
}

// A CSR matrix with `rows` rows, columns in [0, cols), optional float32 weights. Graph weights
// (FastRP) must also be finite and non-negative. Without `scan_entries` a CPU matrix gets only its
// O(rows) checks (enough to walk the rows safely): the caller checks each entry in its own pass and
// calls again with the scans to report an offender.
void check_csr(const Tensor& indptr, const Tensor& indices, const OptTensor& weights, int64_t rows, int64_t cols,
               const char* op, bool graph_weights, bool scan_entries = true) {
  check_dtype(indptr, op, "indptr", at::kLong);
  check_rank(indptr, op, "indptr", 1);
  TORCH_CHECK_TYPE(indices.scalar_type() == at::kLong || indices.scalar_type() == at::kInt, op,
                   ": indices must have dtype int64 or int32, got ", dtype_name(indices.scalar_type()));
  check_rank(indices, op, "indices", 1);
  check_same_device(indptr, "indptr", indices, "indices", op);
  TORCH_CHECK_VALUE(indptr.numel() == rows + 1, op, ": indptr must have length ", rows + 1,
                    " (number of rows + 1), got ", indptr.numel());
  const int64_t nnz = indices.numel();
  if (weights) {
    check_dtype(*weights, op, "weights", at::kFloat);
    check_rank(*weights, op, "weights", 1);
    check_same_device(*weights, "weights", indices, "indices", op);
    TORCH_CHECK_VALUE(weights->numel() == nnz, op, ": weights must have one entry per index (", nnz, "), got ",
                      weights->numel());
  }
  // Each check finds the first offending position (p < 0: none) and reports it.
  int64_t first, last, p_drop = -1, p_index = -1, p_weight = -1;
  if (indptr.is_cpu()) {  // plain loops: one pass each, far cheaper than tensor temporaries here
    const Tensor ipc = indptr.contiguous(), ixc = indices.contiguous();
    const int64_t* ip = ipc.data_ptr<int64_t>();
    first = ip[0];
    last = ip[rows];
    p_drop = first_offender(rows, [&](int64_t r) { return ip[r + 1] < ip[r]; });
    if (scan_entries)
      with_typed_ids(column_ids(ixc), [&](const auto& ix) {
        p_index = first_offender(nnz, [&](int64_t j) { return bad_index(ix[j], cols); });
      });
    if (weights && graph_weights && scan_entries) {
      const Tensor wc = weights->contiguous();
      const float* w = wc.data_ptr<float>();
      p_weight = first_offender(nnz, [&](int64_t j) { return bad_graph_weight(w[j]); });
    }
  } else {
    // One reduction per array and one transfer (a single synchronization): indptr's ends, whether
    // it drops anywhere, the index range, and the weight range as float64 bits (NaN makes min >= 0
    // false). Positions are looked up only when something is wrong.
    const auto i64 = indptr.options().dtype(at::kLong);
    std::vector<Tensor> parts{indptr.narrow(0, 0, 1), indptr.narrow(0, rows, 1)};
    parts.push_back(rows > 0 ? at::lt(indptr.slice(0, 1), indptr.slice(0, 0, rows)).any().to(i64).reshape({1})
                             : at::zeros({1}, i64));
    if (nnz > 0) {
      const auto [lo, hi] = at::aminmax(indices);
      parts.push_back(at::stack({lo, hi}).to(at::kLong));
    }
    const bool scan_weights = weights && graph_weights && nnz > 0;
    if (scan_weights) {
      const auto [lo, hi] = at::aminmax(*weights);
      parts.push_back(at::stack({lo, hi}).to(at::kDouble).view(at::kLong));
    }
    const Tensor h = at::cat(parts).cpu();
    const int64_t* v = h.data_ptr<int64_t>();
    first = v[0];
    last = v[1];
    if (v[2] != 0) p_drop = first_true(indptr.slice(0, 1) < indptr.slice(0, 0, rows));
    if (nnz > 0 && (v[3] < 0 || v[4] >= cols)) p_index = first_true((indices < 0).logical_or_(indices >= cols));
    if (scan_weights) {
      double wlo, whi;
      std::memcpy(&wlo, v + 5, sizeof(double));  // scan_weights implies nnz > 0: the index range is at 3, 4
      std::memcpy(&whi, v + 6, sizeof(double));
      if (!(wlo >= 0 && whi <= std::numeric_limits<double>::max()))
        p_weight = first_true(at::isfinite(*weights).logical_not_().logical_or_(*weights < 0));
    }
  }
  TORCH_CHECK_VALUE(first == 0, op, ": indptr[0] must be 0, got ", first);
  TORCH_CHECK_VALUE(p_drop < 0, op, ": indptr must be non-decreasing, got indptr[", p_drop + 1, "] = ",
                    p_drop < 0 ? 0 : item_i64(indptr[p_drop + 1]), " < indptr[", p_drop, "] = ",
                    p_drop < 0 ? 0 : item_i64(indptr[p_drop]));
  TORCH_CHECK_VALUE(last == nnz, op, ": indptr[-1] must equal the number of entries len(indices) = ", nnz, ", got ",
                    last);
  TORCH_CHECK_INDEX(p_index < 0, op, ": indices must be in [0, ", cols, "), got indices[", p_index, "] = ",
                    p_index < 0 ? 0 : item_i64(indices[p_index]));
  TORCH_CHECK_VALUE(p_weight < 0, op, ": weights must be finite and non-negative, got weights[", p_weight, "] = ",
                    p_weight < 0 ? 0.f : (*weights)[p_weight].item<float>());
}

void check_dense_x(const Tensor& x, const Tensor& indices, const char* op) {
  check_rank(x, op, "x", 2);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16, op,
                   ": x must have dtype torch.float32 or torch.bfloat16, got ", dtype_name(x.scalar_type()));
  check_same_device(x, "x", indices, "indices", op);
}

void check_row_scale(const OptTensor& row_scale, int64_t rows, const Tensor& indices, const char* op) {
  if (!row_scale) return;
  check_dtype(*row_scale, op, "row_scale", at::kFloat);
  check_rank(*row_scale, op, "row_scale", 1);
  check_same_device(*row_scale, "row_scale", indices, "indices", op);
  TORCH_CHECK_VALUE(row_scale->numel() == rows, op, ": row_scale must have one entry per row (", rows, "), got ",
                    row_scale->numel());
}

SpmmArgs spmm_args(const Tensor& indptr, const Tensor& indices, const OptTensor& weights, const Tensor& x,
                   const OptTensor& row_scale) {
  SpmmArgs a{};
  a.indptr = indptr.data_ptr<int64_t>();
  a.indices = column_ids(indices);
  a.weights = weights ? weights->data_ptr<float>() : nullptr;
  a.nnz = indices.numel();
  a.x = x.data_ptr();
  a.x_bf16 = x.scalar_type() == at::kBFloat16;
  a.d = x.size(1);
  a.row_scale = row_scale ? row_scale->data_ptr<float>() : nullptr;
  return a;
}

OptTensor contiguous_opt(const OptTensor& t) { return t ? OptTensor(t->contiguous()) : std::nullopt; }

// The projection parameters of s: threshold t = floor(2^64 / (2 s)) and float(sqrt(s)).
void check_s(double s, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(s) && s >= 1.0, op, ": s must be a finite number >= 1, got ", s);
}
uint64_t s_threshold(double s) { return uint64_t(std::ldexp(0.5 / s, 64)); }  // s = 1 gives 2^63, no overflow
float s_sqrt(double s) { return float(std::sqrt(s)); }

// ---- CPU -----------------------------------------------------------------------------------------

using SpmmFn = void (*)(const SpmmArgs&, int64_t, int64_t);
using InitFn = void (*)(const InitArgs&, int64_t, int64_t);
using DegreeFn = DegreeFlags (*)(const DegreeArgs&, int64_t, int64_t);

SpmmFn pick_spmm() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (f.avx512) return spmm_rows_avx512;
  if (f.avx2) return spmm_rows_avx2;
#endif
  return spmm_rows_scalar;
}

InitFn pick_init() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (f.avx512) return init_rows_avx512;
  if (f.avx2) return init_rows_avx2;
#endif
  return init_rows_scalar;
}

DegreeFn pick_degree() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (f.avx512) return degree_rows_avx512;
  if (f.avx2) return degree_rows_avx2;
#endif
  return degree_rows_scalar;
}

// Rows split into contiguous parts of about equal cost (nnz + rows) at row boundaries. Each row is
// computed whole by one thread in a fixed order, so the split never changes the result.
void spmm_cpu_run(const SpmmArgs& a, int64_t rows) {
  if (rows == 0) return;
  const SpmmFn fn = pick_spmm();
  const int64_t cost = a.nnz + rows;
  const int64_t parts = cost < 16384 ? 1 : std::min<int64_t>(rows, int64_t(at::get_num_threads()) * 8);
  const int64_t* ip = a.indptr;
  auto row_at = [&](int64_t p) -> int64_t {  // first row r with indptr[r] + r >= p * cost / parts
    const int64_t target = int64_t((static_cast<__int128>(p) * cost) / parts);
    int64_t lo = 0, hi = rows;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (ip[mid] + mid >= target) hi = mid; else lo = mid + 1;
    }
    return lo;
  };
  at::parallel_for(0, parts, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      const int64_t rb = p == 0 ? 0 : row_at(p), re = p + 1 == parts ? rows : row_at(p + 1);
      if (rb < re) fn(a, rb, re);
    }
  });
}

void init_cpu_run(const InitArgs& a, int64_t rows) {
  const InitFn fn = pick_init();
  at::parallel_for(0, rows, 512, [&](int64_t b, int64_t e) { fn(a, b, e); });
}

int64_t check_spmm_inputs(const Tensor& indptr, const Tensor& indices, const OptTensor& weights, const Tensor& x,
                          const OptTensor& row_scale, const char* op) {
  check_rank(indptr, op, "indptr", 1);
  TORCH_CHECK_VALUE(indptr.numel() >= 1, op, ": indptr must have at least 1 entry (rows + 1), got 0");
  const int64_t rows = indptr.numel() - 1;
  check_dense_x(x, indices, op);
  check_csr(indptr, indices, weights, rows, x.size(0), op, false);
  check_row_scale(row_scale, rows, indices, op);
  checked_mul(rows, x.size(1), op, "the output size rows x d");
  return rows;
}

void run_spmm(const SpmmArgs& a, int64_t rows, const Tensor& like);
Tensor empty_buffer(at::IntArrayRef size, const at::TensorOptions& opts);

Tensor csr_spmm_impl(const Tensor& indptr, const Tensor& indices, const OptTensor& weights, const Tensor& x,
                     const OptTensor& row_scale, bool normalize) {
  const int64_t rows = check_spmm_inputs(indptr, indices, weights, x, row_scale, "csr_spmm");
  Tensor out = empty_buffer({rows, x.size(1)}, x.options().dtype(at::kFloat));
  const Tensor ip = indptr.contiguous(), ix = kernel_indices(indices), xc = x.contiguous();
  const OptTensor w = contiguous_opt(weights), rs = contiguous_opt(row_scale);
  SpmmArgs a = spmm_args(ip, ix, w, xc, rs);
  a.y = out.data_ptr();
  a.y_normalize = normalize;
  run_spmm(a, rows, x);
  return out;
}

void csr_spmm_accumulate_impl(Tensor& out, const Tensor& indptr, const Tensor& indices, const OptTensor& weights,
                              const Tensor& x, const OptTensor& row_scale, double alpha, bool normalize) {
  const char* op = "csr_spmm_accumulate_";
  const int64_t rows = check_spmm_inputs(indptr, indices, weights, x, row_scale, op);
  check_dtype(out, op, "out", at::kFloat);
  check_same_device(out, "out", x, "x", op);
  TORCH_CHECK_VALUE(out.dim() == 2 && out.size(0) == rows && out.size(1) == x.size(1), op,
                    ": out must have shape [", rows, ", ", x.size(1), "], got ", out.sizes());
  TORCH_CHECK_VALUE(out.is_contiguous(), op, ": out must be contiguous (it is updated in place)");
  const Tensor ip = indptr.contiguous(), ix = kernel_indices(indices), xc = x.contiguous();
  const OptTensor w = contiguous_opt(weights), rs = contiguous_opt(row_scale);
  SpmmArgs a = spmm_args(ip, ix, w, xc, rs);
  a.acc = out.data_ptr<float>();
  a.acc_weight = float(alpha);
  a.acc_normalize = normalize;
  run_spmm(a, rows, x);
}

// ---- fastrp --------------------------------------------------------------------------------------

struct Plan {
  int64_t n = 0, dim = 0, rand_dim = 0, iters = 0;
  std::vector<float> weights;
  float self_weight = 0.f;
  bool propagate = false, normalize_terms = false, bf16 = false;
  uint64_t threshold = 0;
  float sqrt_s = 0.f;
  double beta = 0.0;
  int64_t seed = 0;
};

Plan check_fastrp(const Tensor& indptr, const Tensor& indices, const OptTensor& weights, int64_t num_nodes, int64_t dim,
                  at::ArrayRef<double> iteration_weights, double self_weight, double beta, double s, int64_t seed,
                  const OptTensor& node_keys, const std::string& normalize, const OptTensor& features,
                  int64_t feature_dim, std::optional<at::ScalarType> dtype, bool scan_entries) {
  const char* op = "fastrp";
  Plan p;
  TORCH_CHECK_VALUE(num_nodes >= 0, op, ": num_nodes must be >= 0, got ", num_nodes);
  TORCH_CHECK_VALUE(dim > 0, op, ": dim must be > 0, got ", dim);
  check_csr(indptr, indices, weights, num_nodes, num_nodes, op, true, scan_entries);
  checked_mul(num_nodes, dim, op, "the output size num_nodes x dim");
  bool any_weight = self_weight != 0.0;
  for (size_t i = 0; i < iteration_weights.size(); ++i) {
    TORCH_CHECK_VALUE(std::isfinite(iteration_weights[i]), op, ": iteration_weights must be finite, got iteration_weights[",
                      i, "] = ", iteration_weights[i]);
    if (iteration_weights[i] != 0.0) { any_weight = true; p.iters = int64_t(i) + 1; }
  }
  TORCH_CHECK_VALUE(std::isfinite(self_weight), op, ": self_weight must be finite, got ", self_weight);
  TORCH_CHECK_VALUE(any_weight, op, ": iteration_weights has no non-zero entry (got ", iteration_weights.size(),
                    " entries) and self_weight is 0: the embedding would be all zeros");
  TORCH_CHECK_VALUE(std::isfinite(beta), op, ": beta must be finite, got ", beta);
  check_s(s, op);
  TORCH_CHECK_VALUE(normalize == "merge" || normalize == "propagate" || normalize == "none", op,
                    ": normalize must be 'merge', 'propagate' or 'none', got '", normalize, "'");
  const at::ScalarType st = dtype.value_or(at::kFloat);
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kBFloat16, op, ": dtype must be torch.float32 or torch.bfloat16, got ",
                   dtype_name(st));
  if (node_keys) {
    check_dtype(*node_keys, op, "node_keys", at::kLong);
    check_rank(*node_keys, op, "node_keys", 1);
    check_same_device(*node_keys, "node_keys", indices, "indices", op);
    TORCH_CHECK_VALUE(node_keys->numel() == num_nodes, op, ": node_keys must have one key per node (", num_nodes,
                      "), got ", node_keys->numel());
  }
  TORCH_CHECK_VALUE(feature_dim >= 0 && feature_dim <= dim, op, ": feature_dim must be in [0, dim = ", dim, "], got ",
                    feature_dim);
  TORCH_CHECK_VALUE(!(feature_dim > 0 && !features), op, ": feature_dim = ", feature_dim,
                    " needs features (a float32 [num_nodes, F] tensor), got None");
  if (features) {
    TORCH_CHECK_VALUE(feature_dim > 0, op, ": features were given but feature_dim is 0; pass how many of the ", dim,
                      " columns the features fill");
    check_dtype(*features, op, "features", at::kFloat);
    check_rank(*features, op, "features", 2);
    check_same_device(*features, "features", indices, "indices", op);
    TORCH_CHECK_VALUE(features->size(0) == num_nodes && features->size(1) >= 1, op,
                      ": features must have shape [num_nodes = ", num_nodes, ", F >= 1], got ", features->sizes());
    TORCH_CHECK_VALUE(at::isfinite(*features).all().item<bool>(), op, ": features must be finite");
  }
  p.n = num_nodes;
  p.dim = dim;
  p.rand_dim = dim - feature_dim;
  p.weights.assign(iteration_weights.begin(), iteration_weights.end());
  p.self_weight = float(self_weight);
  p.propagate = normalize == "propagate";
  p.normalize_terms = normalize != "none";
  p.bf16 = st == at::kBFloat16;
  p.threshold = s_threshold(s);
  p.sqrt_s = s_sqrt(s);
  p.beta = beta;
  p.seed = seed;
  return p;
}

// P [F, feature_dim]: R rows of the feature key space (keys 0 .. F-1), made on the host (small).
Tensor feature_projection(const Plan& p, int64_t num_features) {
  const int64_t fdim = p.dim - p.rand_dim;
  Tensor proj = at::empty({num_features, fdim}, at::kFloat);
  float* pp = proj.data_ptr<float>();
  const uint64_t ss = rp_seed_state(p.seed, true);
  for (int64_t f = 0; f < num_features; ++f) {
    const uint64_t rs = rp_row_state(ss, f);
    for (int64_t c = 0; c < fdim; ++c) pp[f * fdim + c] = rp_entry(rs, c, p.threshold, p.sqrt_s);
  }
  return proj;
}

InitArgs init_args(const Plan& p, const OptTensor& keys, const OptTensor& features, const OptTensor& proj,
                   const Tensor& lscale) {
  InitArgs ia{};
  ia.dim = p.dim;
  ia.rand_dim = p.rand_dim;
  ia.seed_state = rp_seed_state(p.seed, false);
  ia.keys = keys ? keys->data_ptr<int64_t>() : nullptr;
  ia.threshold = p.threshold;
  ia.sqrt_s = p.sqrt_s;
  ia.row_scale = lscale.data_ptr<float>();
  ia.features = features ? features->data_ptr<float>() : nullptr;
  ia.num_features = features ? features->size(1) : 0;
  ia.feature_proj = proj ? proj->data_ptr<float>() : nullptr;
  ia.acc_weight = p.self_weight;
  ia.acc_normalize = p.normalize_terms;
  return ia;
}

// A fresh CPU buffer asks for transparent huge pages before its first touch (Linux, THP "madvise"
// mode): the gathers hit random rows of a buffer far larger than the 4 KiB-page TLB reach, and 2 MiB
// pages also take 512x fewer page faults. Harmless where THP is off or unavailable.
Tensor empty_buffer(at::IntArrayRef size, const at::TensorOptions& opts) {
  Tensor t = at::empty(size, opts);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  const size_t bytes = size_t(t.numel()) * t.element_size();
  if (t.device().is_cpu() && bytes >= 2 * kHuge) {
    const uintptr_t b = reinterpret_cast<uintptr_t>(t.data_ptr());
    const uintptr_t lo = (b + kHuge - 1) & ~(kHuge - 1), hi = (b + bytes) & ~(kHuge - 1);
    if (hi > lo) madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);
  }
#endif
  return t;
}

// The pipeline on any device: `init` and `spmm` run the backend's kernels. On the CPU (`cpu`):
// - without features and with every L finite (`finite_l`: a coded 0 must equal 0 * L), L R is
//   stored as sign codes (InitArgs::codes, 32 or 64 bytes a row) that the first SpMM expands on the
//   fly: no n x dim write of L R and no DRAM gathers in the first iteration;
// - without a self term, when the first weighted iteration k0 is the second to last (P5's and the
//   presets' weights), its iterate goes to a fresh buffer with its term left pending, and the last
//   iteration writes the whole sum (SpmmArgs::acc_src) into the dead input buffer of iteration k0,
//   which becomes the output: two n x dim buffers instead of three (one fresh buffer fewer to fault
//   in). In fp32 this is the same traffic and the same bits. In bf16 the iterate buffers are made
//   fp32-sized (only the first half is touched until one becomes the output) and the pending term
//   is read back from its stored bf16 iterate: iteration k0 writes n x dim bf16 instead of bf16 + an
//   fp32 accumulator, and the last reads bf16 instead of fp32 (0.75 GB less traffic at P5's size);
//   the term then carries its iterate's bf16 rounding, like every term in bf16 storage.
template <class InitRun, class SpmmRun>
Tensor fastrp_pipeline(const Plan& p, const Tensor& indptr, const Tensor& indices, const OptTensor& weights,
                       const OptTensor& keys, const OptTensor& features, const Tensor& inv_deg, const Tensor& lscale,
                       bool cpu, bool finite_l, bool uniform_l, InitRun&& init, SpmmRun&& spmm) {
  const auto opts = indices.options();
  const at::ScalarType st = p.bf16 ? at::kBFloat16 : at::kFloat;
  if (p.n == 0) return at::empty({0, p.dim}, opts.dtype(at::kFloat));
  OptTensor proj;
  if (features) proj = feature_projection(p, features->size(1)).to(indices.device());
  const bool codes = cpu && finite_l && p.iters >= 1 && p.rand_dim == p.dim;
  // All rows share one magnitude when L is constant (beta = 0, or a regular graph): the records then
  // hold codes only (32 bytes a row at dim 128 instead of 64; the first SpMM ~15 ms faster at P5's size).
  const bool code_row_magnitude = !uniform_l;
  const int64_t code_words = code_words_of(p.dim), code_stride = code_stride_of(p.dim, code_row_magnitude);
  int64_t k0 = 0;  // the first weighted iteration (exists when there is no self term)
  while (k0 < p.iters && p.weights[size_t(k0)] == 0.f) ++k0;
  const bool two = cpu && p.self_weight == 0.f && p.iters >= 2 && k0 == p.iters - 2 && (k0 >= 1 || !codes);
  Tensor out = two ? Tensor() : empty_buffer({p.n, p.dim}, opts.dtype(at::kFloat));
  // Iterate buffers (storage dtype) are made when first needed and reused once dead. With `two` each
  // is fp32-sized so that either can become the output; a bf16 iterate lives in its first half.
  Tensor cur, spare, codes_t;
  auto iterate_buffer = [&]() {
    Tensor t = spare.defined() ? spare : empty_buffer({p.n, p.dim}, opts.dtype(two ? at::kFloat : st));
    spare = Tensor();
    return t;
  };
  auto stored = [&](const Tensor& t) {  // the storage-dtype iterate held by buffer t
    return t.scalar_type() == st ? t : t.view({-1}).view(st).narrow(0, 0, p.n * p.dim).view({p.n, p.dim});
  };
  InitArgs ia = init_args(p, keys, features, proj, lscale);
  if (codes) {
    codes_t = empty_buffer({p.n, code_stride}, opts.dtype(at::kInt));
    ia.codes = reinterpret_cast<uint32_t*>(codes_t.data_ptr<int32_t>());
    ia.code_row_magnitude = code_row_magnitude;
    ia.vals_bf16 = p.bf16;
  } else if (p.iters >= 1) {
    cur = iterate_buffer();
    ia.y = stored(cur).data_ptr();
  }
  ia.y_bf16 = p.bf16;
  // Without a self term the first weighted iteration writes `out` instead of adding to zeros (one
  // n x dim write and read less). check_fastrp guarantees some weight is non-zero.
  bool out_written = p.self_weight != 0.f;
  ia.acc = out_written ? out.data_ptr<float>() : nullptr;
  init(ia);
  for (int64_t it = 0; it < p.iters; ++it) {
    // (coded: x is read from the codes; the expanded view only gives spmm_args the shape)
    SpmmArgs a = spmm_args(indptr, indices, weights,
                           codes && it == 0 ? codes_t.narrow(1, 0, 1).expand({p.n, p.dim}) : stored(cur), inv_deg);
    if (codes && it == 0) {
      a.x = nullptr;
      a.x_bf16 = false;
      a.x_codes = reinterpret_cast<const uint32_t*>(codes_t.data_ptr<int32_t>());
      a.code_words = code_words;
      a.code_stride = code_stride;
      a.code_row_magnitude = code_row_magnitude;
      a.code_magnitude = code_magnitude_of(p.sqrt_s, lscale.data_ptr<float>(), 0, p.bf16);  // (row 0's: all equal)
    }
    const bool last = it + 1 == p.iters;
    Tensor next = last ? Tensor() : iterate_buffer();  // the last iterate is only accumulated
    a.y = last ? nullptr : stored(next).data_ptr();
    a.y_bf16 = p.bf16;
    a.y_normalize = p.propagate;
    // An iterate made from a gathered iterate is streamed: plain stores would evict the iterate
    // being gathered from the L3 and read each line first. One made from the cache-resident codes is
    // stored normally and mostly stays in the L3 for the next SpMM's gathers (streaming it measured
    // ~20 ms slower at P5's size; streaming the others ~10-25 ms faster per SpMM).
    a.y_stream = cpu && !(codes && it == 0);
    const float w = p.weights[size_t(it)];
    if (two && it == k0) {  // term pending in `next`
      a.acc = nullptr;
    } else if (two && last) {  // out = the dead input of iteration k0; its pending term comes from cur
      out = spare;
      spare = Tensor();
      a.acc = out.data_ptr<float>();
      a.acc_src = stored(cur).data_ptr();
      a.acc_src_bf16 = p.bf16;
      a.acc_src_weight = p.weights[size_t(k0)];
      a.acc_src_normalize = p.normalize_terms && !p.propagate;  // "propagate" stored it normalized
      a.acc_weight = w;
      a.acc_normalize = p.normalize_terms;
    } else {
      a.acc = w != 0.f ? out.data_ptr<float>() : nullptr;
      a.acc_weight = w;
      a.acc_normalize = p.normalize_terms;
      a.acc_overwrite = w != 0.f && !out_written;
      out_written = out_written || w != 0.f;
    }
    spmm(a);
    if (codes && it == 0) codes_t = Tensor();
    if (!last) {
      spare = cur;
      cur = next;
    }
  }
  return out;
}

Tensor fastrp_cpu(const Tensor& indptr, const Tensor& indices, const OptTensor& weights, int64_t num_nodes, int64_t dim,
                  at::ArrayRef<double> iteration_weights, double self_weight, double beta, double s, int64_t seed,
                  const OptTensor& node_keys, c10::string_view normalize, const OptTensor& features,
                  int64_t feature_dim, std::optional<at::ScalarType> dtype) {
  // The entries (indices, weights) are checked by the degree pass below, which reads them anyway:
  // one pass over the graph instead of three (~10 ms at P5's size).
  const Plan p = check_fastrp(indptr, indices, weights, num_nodes, dim, iteration_weights, self_weight, beta, s, seed,
                              node_keys, std::string(normalize), features, feature_dim, dtype, false);
  const Tensor ip = indptr.contiguous(), ix = kernel_indices(indices);
  const OptTensor keys = contiguous_opt(node_keys), feats = contiguous_opt(features);
  OptTensor w = contiguous_opt(weights);
  const int64_t n = p.n;
  Tensor inv_deg = at::empty({n}, ix.options().dtype(at::kFloat));
  Tensor lscale = at::empty({n}, ix.options().dtype(at::kFloat));
  {
    const DegreeArgs da{ip.data_ptr<int64_t>(), column_ids(ix), w ? w->data_ptr<float>() : nullptr, n, p.beta,
                        inv_deg.data_ptr<float>(), lscale.data_ptr<float>()};
    const DegreeFn fn = pick_degree();
    std::atomic<bool> bad_entry{false}, non_unit{false};
    at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
      const DegreeFlags f = fn(da, b, e);
      if (f.bad_entry) bad_entry = true;
      if (f.non_unit) non_unit = true;
    });
    if (bad_entry) {  // the scans find and report the first offender
      check_csr(ip, ix, w, n, n, "fastrp", true);
      TORCH_INTERNAL_ASSERT(false, "fastrp: the degree pass saw an invalid entry that check_csr did not");
    }
    // Unit weights (an unweighted graph handed over as a scipy matrix or with a weight array) are
    // dropped: the degrees are counts (the same doubles), the kernels' w = 1 gives the same bits
    // (fma(1, x, acc)), and each SpMM reads 4 bytes less per non-zero.
    if (w && !non_unit) w = std::nullopt;
  }
  // Coded L R needs 0 * L = 0 (finite L): pow(deg, beta) can overflow for extreme beta. A constant L
  // lets all records share one magnitude.
  bool finite_l = true, uniform_l = true;
  {
    const float* lp = lscale.data_ptr<float>();
    for (int64_t r = 0; r < n && finite_l; ++r) {
      finite_l = std::isfinite(lp[r]);
      uniform_l = uniform_l && lp[r] == lp[0];
    }
  }
  return fastrp_pipeline(
      p, ip, ix, w, keys, feats, inv_deg, lscale, true, finite_l, uniform_l, [&](const InitArgs& ia) { init_cpu_run(ia, n); },
      [&](const SpmmArgs& a) { spmm_cpu_run(a, n); });
}

Tensor projection_impl(const Tensor& keys, int64_t dim, double s, int64_t seed, bool feature_rows,
                       bool cuda_backend);

Tensor fastrp_projection_cpu(const Tensor& keys, int64_t dim, double s, int64_t seed, bool feature_rows) {
  return projection_impl(keys, dim, s, seed, feature_rows, false);
}

// ---- CUDA ----------------------------------------------------------------------------------------

#ifdef EMBKERN_WITH_CUDA
cudaStream_t current_stream(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

Tensor fastrp_cuda(const Tensor& indptr, const Tensor& indices, const OptTensor& weights, int64_t num_nodes,
                   int64_t dim, at::ArrayRef<double> iteration_weights, double self_weight, double beta, double s,
                   int64_t seed, const OptTensor& node_keys, c10::string_view normalize, const OptTensor& features,
                   int64_t feature_dim, std::optional<at::ScalarType> dtype) {
  const c10::cuda::CUDAGuard guard(indices.device());
  const Plan p = check_fastrp(indptr, indices, weights, num_nodes, dim, iteration_weights, self_weight, beta, s, seed,
                              node_keys, std::string(normalize), features, feature_dim, dtype, true);
  const Tensor ip = indptr.contiguous(), ix = kernel_indices(indices);
  const OptTensor w = contiguous_opt(weights), keys = contiguous_opt(node_keys), feats = contiguous_opt(features);
  const int64_t n = p.n;
  const cudaStream_t stream = current_stream(ix);
  Tensor inv_deg = at::empty({n}, ix.options().dtype(at::kFloat));
  Tensor lscale = at::empty({n}, ix.options().dtype(at::kFloat));
  if (n > 0)
    cuda::degrees(ip.data_ptr<int64_t>(), w ? w->data_ptr<float>() : nullptr, n, p.beta, inv_deg.data_ptr<float>(),
                  lscale.data_ptr<float>(), stream);
  return fastrp_pipeline(
      p, ip, ix, w, keys, feats, inv_deg, lscale, false, true, false, [&](const InitArgs& ia) { cuda::init(ia, n, stream); },
      [&](const SpmmArgs& a) { cuda::spmm(a, n, stream); });
}

Tensor fastrp_projection_cuda(const Tensor& keys, int64_t dim, double s, int64_t seed, bool feature_rows) {
  const c10::cuda::CUDAGuard guard(keys.device());
  return projection_impl(keys, dim, s, seed, feature_rows, true);
}
#endif

void run_spmm(const SpmmArgs& a, int64_t rows, const Tensor& like) {
#ifdef EMBKERN_WITH_CUDA
  if (like.is_cuda()) {
    const c10::cuda::CUDAGuard guard(like.device());
    if (rows > 0) cuda::spmm(a, rows, current_stream(like));
    return;
  }
#endif
  (void)like;
  spmm_cpu_run(a, rows);
}

Tensor projection_impl(const Tensor& keys, int64_t dim, double s, int64_t seed, bool feature_rows, bool cuda_backend) {
  const char* op = "fastrp_projection";
  check_dtype(keys, op, "keys", at::kLong);
  check_rank(keys, op, "keys", 1);
  TORCH_CHECK_VALUE(dim > 0, op, ": dim must be > 0, got ", dim);
  check_s(s, op);
  const int64_t n = keys.numel();
  checked_mul(n, dim, op, "the output size len(keys) x dim");
  Tensor out = at::empty({n, dim}, keys.options().dtype(at::kFloat));
  if (n == 0) return out;
  const Tensor k = keys.contiguous();
  InitArgs ia{};
  ia.dim = dim;
  ia.rand_dim = dim;
  ia.seed_state = rp_seed_state(seed, feature_rows);
  ia.keys = k.data_ptr<int64_t>();
  ia.threshold = s_threshold(s);
  ia.sqrt_s = s_sqrt(s);
  ia.y = out.data_ptr();
#ifdef EMBKERN_WITH_CUDA
  if (cuda_backend) {
    cuda::init(ia, n, current_stream(k));
    return out;
  }
#endif
  (void)cuda_backend;
  init_cpu_run(ia, n);
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(embkern, m) {
  m.def("csr_spmm(Tensor indptr, Tensor indices, Tensor? weights, Tensor x, Tensor? row_scale=None, bool normalize=False) -> Tensor");
  m.def("csr_spmm_accumulate_(Tensor(a!) out, Tensor indptr, Tensor indices, Tensor? weights, Tensor x, "
        "Tensor? row_scale=None, float alpha=1.0, bool normalize=False) -> ()");
  m.def("fastrp(Tensor indptr, Tensor indices, Tensor? weights, int num_nodes, int dim, float[] iteration_weights, "
        "float self_weight=0.0, float beta=0.0, float s=3.0, int seed=0, Tensor? node_keys=None, "
        "str normalize=\"merge\", Tensor? features=None, int feature_dim=0, ScalarType? dtype=None) -> Tensor");
  m.def("fastrp_projection(Tensor keys, int dim, float s=3.0, int seed=0, bool feature_rows=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(embkern, CPU, m) {
  m.impl("csr_spmm", &csr_spmm_impl);
  m.impl("csr_spmm_accumulate_", &csr_spmm_accumulate_impl);
  m.impl("fastrp", &fastrp_cpu);
  m.impl("fastrp_projection", &fastrp_projection_cpu);
}

#ifdef EMBKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(embkern, CUDA, m) {
  m.impl("csr_spmm", &csr_spmm_impl);
  m.impl("csr_spmm_accumulate_", &csr_spmm_accumulate_impl);
  m.impl("fastrp", &fastrp_cuda);
  m.impl("fastrp_projection", &fastrp_projection_cuda);
}
#endif

}  // namespace embkern::fastrp
