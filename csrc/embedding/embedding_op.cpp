// embedding family ops (DESIGN 3.1): schemas, argument checks, CPU and CUDA registration, and the
// autograd of mux_embedding_bag and mux_embedding_bag_fused (see the end). Fake kernels:
// python/embkern/_ops.py.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <deque>
#include <list>
#include <mutex>
#include <string>
#include <vector>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "embedding/embedding_cuda.h"
#include "embedding/embedding_kernels.h"

#ifdef EMBKERN_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace embkern::emb {
namespace {

using at::Tensor;

// ---- reusable CPU buffers --------------------------------------------------------------------------

// Large CPU outputs and temporaries come from a small cache of freed blocks of the same byte size.
// A fresh multi-megabyte malloc is a new mmap, and its first touch page-faults every 4 KB page: at
// P1 the [4096, 2048] fp32 output alone measured 13-21 ms of faults against ~4 ms to rewrite the
// same bytes, more than the lookups themselves. A training loop asks for the same sizes every step,
// so the blocks are reused already mapped. Blocks below 1 MiB go to the ordinary allocator; at most
// EMBKERN_BUFFER_CACHE_MB (default 256; 0 turns the cache off) of freed blocks are kept, the
// least recently freed dropped first. Contents are never assumed: callers treat blocks as empty.
class BufferCache {
 public:
  static BufferCache& get() {
    static BufferCache* c = new BufferCache();  // leaked: tensors may outlive static destruction
    return *c;
  }
  size_t limit() const { return limit_; }
  void* take(size_t bytes) {
    {
      std::lock_guard<std::mutex> g(mu_);
      for (auto it = free_.begin(); it != free_.end(); ++it)
        if (it->second == bytes) {
          void* p = it->first;
          free_.erase(it);
          cached_ -= bytes;
          return p;
        }
    }
    void* p = nullptr;
    if (posix_memalign(&p, 64, bytes) != 0) throw std::bad_alloc();
    return p;
  }
  void give(void* p, size_t bytes) {
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> g(mu_);
      free_.emplace_front(p, bytes);
      cached_ += bytes;
      while (cached_ > limit_ && !free_.empty()) {
        drop.push_back(free_.back().first);
        cached_ -= free_.back().second;
        free_.pop_back();
      }
    }
    for (void* q : drop) std::free(q);
  }

 private:
  BufferCache() {
    const char* e = std::getenv("EMBKERN_BUFFER_CACHE_MB");
    limit_ = size_t(e ? std::max(0LL, std::atoll(e)) : 256LL) << 20;
  }
  std::mutex mu_;
  std::list<std::pair<void*, size_t>> free_;  // most recently freed first
  size_t cached_ = 0, limit_ = 0;
};

// at::empty on the CPU, served from BufferCache for blocks of 1 MiB and more.
Tensor cpu_empty(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  int64_t numel = 1;
  for (const int64_t s : sizes) numel *= s;
  const size_t bytes = size_t(numel) * at::elementSize(c10::typeMetaToScalarType(opts.dtype()));
  BufferCache& cache = BufferCache::get();
  if (bytes < (size_t(1) << 20) || cache.limit() == 0) return at::empty(sizes, opts);
  void* p = cache.take(bytes);
  return at::from_blob(p, sizes, [bytes](void* q) { BufferCache::get().give(q, bytes); }, opts.device(at::kCPU));
}

// ---- argument checks (shared by every backend) -------------------------------------------------

int parse_pooling(const std::string& s, const char* op) {
  if (s == "sum") return kPoolSum;
  if (s == "mean") return kPoolMean;
  if (s == "none") return kPoolNone;
  TORCH_CHECK_VALUE(false, op, ": pooling must be one of 'sum', 'mean', 'none', got '", s, "'");
}

int parse_combine(const std::string& s, const char* op) {
  if (s == "concat") return kCombineConcat;
  if (s == "sum") return kCombineSum;
  TORCH_CHECK_VALUE(false, op, ": combine must be 'concat' or 'sum', got '", s, "'");
}

WType wtype_of(const Tensor& w, const char* op) {
  switch (w.scalar_type()) {
    case at::kFloat: return WType::F32;
    case at::kBFloat16: return WType::BF16;
    case at::kHalf: return WType::F16;
    case at::kDouble: return WType::F64;
    default:
      TORCH_CHECK_TYPE(false, op, ": weight must have dtype torch.float32, torch.bfloat16, torch.float16 or torch.float64, got ",
                       dtype_name(w.scalar_type()));
  }
}

// The accumulation dtype: float64 for float64 weights, else float32.
at::ScalarType acc_dtype(WType t) { return t == WType::F64 ? at::kDouble : at::kFloat; }

void check_index_tensor(const Tensor& t, const char* op, const char* name) {
  check_rank(t, op, name, 1);
  check_dtype(t, op, name, at::kLong);
}

// Everything the kernels need, validated; host copies of the small probe tensors.
struct Problem {
  int pooling = kPoolSum, combine = kCombineConcat;
  WType wtype = WType::F32;
  int64_t M = 0, D = 0, N = 0, F = 0, B = 0, G = 0, pmax = 0;
  Tensor values, offsets, probe_offsets, row_base, row_size, keys;  // contiguous, on the weight's device
  std::vector<int64_t> h_probe_offsets;
  std::vector<int64_t> h_feature_bounds;  // offsets[f * B] for f = 0..F: where each feature's values start
  Tensor psw;  // contiguous, accumulation dtype, or undefined
  int64_t out_rows() const { return pooling == kPoolNone ? N : B; }
  int64_t out_cols() const {
    if (combine == kCombineSum) return D;
    return (pooling == kPoolNone ? pmax : G) * D;
  }
};

Problem check_problem(const char* op, const Tensor& weight, const Tensor& values, const Tensor& offsets,
                      const Tensor& probe_offsets, const Tensor& probe_row_base, const Tensor& probe_row_size,
                      const Tensor& probe_keys, const std::string& pooling, const std::string& combine,
                      const std::optional<Tensor>& per_sample_weights) {
  Problem p;
  p.pooling = parse_pooling(pooling, op);
  p.combine = parse_combine(combine, op);
  check_rank(weight, op, "weight", 2);
  p.wtype = wtype_of(weight, op);
  p.M = weight.size(0);
  p.D = weight.size(1);
  TORCH_CHECK_VALUE(p.D >= 1, op, ": weight must have at least 1 column, got shape ", weight.sizes());
  check_rank(values, op, "values", 1);
  TORCH_CHECK_TYPE(values.scalar_type() == at::kLong || values.scalar_type() == at::kInt, op,
                   ": values must have dtype torch.int64 or torch.int32, got ", dtype_name(values.scalar_type()));
  check_index_tensor(offsets, op, "offsets");
  check_index_tensor(probe_offsets, op, "probe_offsets");
  check_index_tensor(probe_row_base, op, "probe_row_base");
  check_index_tensor(probe_row_size, op, "probe_row_size");
  check_index_tensor(probe_keys, op, "probe_keys");
  for (const auto& [t, name] : {std::pair<const Tensor&, const char*>{values, "values"}, {offsets, "offsets"},
                                {probe_offsets, "probe_offsets"}, {probe_row_base, "probe_row_base"},
                                {probe_row_size, "probe_row_size"}, {probe_keys, "probe_keys"}})
    check_same_device(weight, "weight", t, name, op);

  p.N = values.size(0);
  TORCH_CHECK_VALUE(probe_offsets.size(0) >= 2, op,
                    ": probe_offsets must have F + 1 >= 2 entries (one feature at least), got ", probe_offsets.size(0));
  p.F = probe_offsets.size(0) - 1;
  p.G = probe_row_base.size(0);
  TORCH_CHECK_VALUE(probe_row_size.size(0) == p.G && probe_keys.size(0) == p.G, op,
                    ": probe_row_base, probe_row_size and probe_keys must have the same length G, got ", p.G, ", ",
                    probe_row_size.size(0), " and ", probe_keys.size(0));
  TORCH_CHECK_VALUE((offsets.size(0) - 1) % p.F == 0 && offsets.size(0) >= 1, op,
                    ": offsets must have F * B + 1 entries with F = ", p.F, " features, got ", offsets.size(0));
  p.B = (offsets.size(0) - 1) / p.F;

  // Probe layout: small, checked on the host. On CUDA everything the host checks comes back in one
  // transfer (one synchronization per call): the probe layout, the offsets at feature boundaries
  // (first and last included) and a flag for a decreasing step anywhere in offsets.
  const Tensor off = offsets.contiguous();
  Tensor h_po, h_base, h_size;
  bool offsets_decrease = false;
  if (off.is_cpu()) {
    h_po = probe_offsets.contiguous(), h_base = probe_row_base.contiguous(), h_size = probe_row_size.contiguous();
  } else {
    const Tensor bounds = p.B > 0 ? off.slice(0, 0, p.F * p.B + 1, p.B) : off.narrow(0, 0, 1).expand({p.F + 1});
    const Tensor decreasing = off.size(0) > 1 ? at::lt(off.slice(0, 1), off.slice(0, 0, -1)).any().to(at::kLong).reshape({1})
                                              : at::zeros({1}, off.options());
    const Tensor h = at::cat({probe_offsets, probe_row_base, probe_row_size, bounds, decreasing}).cpu();
    h_po = h.narrow(0, 0, p.F + 1);
    h_base = h.narrow(0, p.F + 1, p.G);
    h_size = h.narrow(0, p.F + 1 + p.G, p.G);
    const int64_t* tail = h.data_ptr<int64_t>() + p.F + 1 + 2 * p.G;
    p.h_feature_bounds.assign(tail, tail + p.F + 1);
    offsets_decrease = tail[p.F + 1] != 0;
  }
  p.h_probe_offsets.assign(h_po.data_ptr<int64_t>(), h_po.data_ptr<int64_t>() + p.F + 1);
  const auto& po = p.h_probe_offsets;
  TORCH_CHECK_VALUE(po[0] == 0, op, ": probe_offsets[0] must be 0, got ", po[0]);
  for (int64_t f = 0; f < p.F; ++f) {
    TORCH_CHECK_VALUE(po[f + 1] - po[f] >= 1, op, ": every feature needs at least 1 probe, but probe_offsets gives feature ",
                      f, " ", po[f + 1] - po[f], " (probe_offsets[", f, "] = ", po[f], ", probe_offsets[", f + 1,
                      "] = ", po[f + 1], ")");
    p.pmax = std::max(p.pmax, po[f + 1] - po[f]);
  }
  TORCH_CHECK_VALUE(po[p.F] == p.G, op, ": probe_offsets[-1] must equal the number of probes G = ", p.G, ", got ", po[p.F]);
  const int64_t *hb = h_base.data_ptr<int64_t>(), *hs = h_size.data_ptr<int64_t>();
  for (int64_t g = 0; g < p.G; ++g) {
    TORCH_CHECK_VALUE(hs[g] >= 1, op, ": probe_row_size[", g, "] must be >= 1, got ", hs[g]);
    TORCH_CHECK_INDEX(hb[g] >= 0 && hb[g] <= p.M && hs[g] <= p.M - hb[g], op, ": probe ", g, " covers rows [", hb[g],
                      ", ", hb[g], " + ", hs[g], ") but weight has ", p.M, " rows");
  }

  // offsets: 0, non-decreasing, ending at N.
  if (off.is_cpu()) {
    const int64_t* o = off.data_ptr<int64_t>();
    TORCH_CHECK_VALUE(o[0] == 0, op, ": offsets[0] must be 0, got ", o[0]);
    TORCH_CHECK_VALUE(o[p.F * p.B] == p.N, op, ": offsets[-1] must equal the number of values N = ", p.N, ", got ",
                      o[p.F * p.B]);
    for (int64_t j = 0; j < p.F * p.B; ++j)
      TORCH_CHECK_VALUE(o[j + 1] >= o[j], op, ": offsets must be non-decreasing, but offsets[", j, "] = ", o[j],
                        " > offsets[", j + 1, "] = ", o[j + 1]);
    p.h_feature_bounds.resize(size_t(p.F + 1));
    for (int64_t f = 0; f <= p.F; ++f) p.h_feature_bounds[size_t(f)] = o[f * p.B];
  } else {
    const int64_t first = p.h_feature_bounds.front(), last = p.h_feature_bounds.back();
    TORCH_CHECK_VALUE(first == 0, op, ": offsets[0] must be 0, got ", first);
    TORCH_CHECK_VALUE(last == p.N, op, ": offsets[-1] must equal the number of values N = ", p.N, ", got ", last);
    TORCH_CHECK_VALUE(!offsets_decrease, op, ": offsets must be non-decreasing");
  }

  if (per_sample_weights.has_value()) {
    const Tensor& psw = *per_sample_weights;
    TORCH_CHECK_VALUE(p.pooling == kPoolSum, op, ": per_sample_weights needs pooling='sum', got pooling='", pooling, "'");
    check_rank(psw, op, "per_sample_weights", 1);
    TORCH_CHECK_TYPE(at::isFloatingType(psw.scalar_type()), op,
                     ": per_sample_weights must be a floating point tensor, got ", dtype_name(psw.scalar_type()));
    TORCH_CHECK_VALUE(psw.size(0) == p.N, op, ": per_sample_weights must have one entry per value (", p.N, "), got ",
                      psw.size(0));
    check_same_device(weight, "weight", psw, "per_sample_weights", op);
    p.psw = psw.to(acc_dtype(p.wtype)).contiguous();
  }
  checked_mul(p.out_rows(), p.out_cols(), op, "the output size");
  p.values = values.contiguous();
  p.offsets = off;
  p.probe_offsets = probe_offsets.contiguous();
  p.row_base = probe_row_base.contiguous();
  p.row_size = probe_row_size.contiguous();
  p.keys = probe_keys.contiguous();
  return p;
}

MuxLayout layout_of(const Problem& p) {
  MuxLayout L;
  L.values = p.values.data_ptr();
  L.values_i32 = p.values.scalar_type() == at::kInt;
  L.n = p.N;
  L.offsets = p.offsets.data_ptr<int64_t>();
  L.num_features = p.F;
  L.batch = p.B;
  L.probe_offsets = p.probe_offsets.data_ptr<int64_t>();
  L.row_base = p.row_base.data_ptr<int64_t>();
  L.row_size = p.row_size.data_ptr<int64_t>();
  L.keys = reinterpret_cast<const uint64_t*>(p.keys.data_ptr<int64_t>());
  L.num_probes = p.G;
  return L;
}

ForwardArgs forward_args(const Problem& p, const Tensor& weight, const Tensor& out_acc) {
  ForwardArgs a;
  a.L = layout_of(p);
  a.weight = weight.data_ptr();
  a.wtype = p.wtype;
  a.dim = p.D;
  a.pooling = p.pooling;
  a.combine = p.combine;
  a.psw = p.psw.defined() ? p.psw.data_ptr() : nullptr;
  a.out = out_acc.data_ptr();
  a.out_cols = p.out_cols();
  return a;
}

void check_grad(const Tensor& grad, const Problem& p, const Tensor& weight, const char* op) {
  check_rank(grad, op, "grad", 2);
  TORCH_CHECK_VALUE(grad.size(0) == p.out_rows() && grad.size(1) == p.out_cols(), op, ": grad must have shape [",
                    p.out_rows(), ", ", p.out_cols(), "] (the forward output), got ", grad.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(grad.scalar_type()), op, ": grad must be a floating point tensor, got ",
                   dtype_name(grad.scalar_type()));
  check_same_device(weight, "weight", grad, "grad", op);
}

// ---- CPU -----------------------------------------------------------------------------------------

using FwdPooledFn = void (*)(EMBKERN_EMB_FWD_ARGS);
using FwdNoneFn = void (*)(EMBKERN_EMB_NONE_ARGS);
using BwdFn = void (*)(EMBKERN_EMB_BWD_ARGS);

struct CpuKernels {
  FwdPooledFn pooled;
  FwdNoneFn none;
  BwdFn backward;
};

CpuKernels pick_kernels() {
#ifdef EMBKERN_X86_KERNELS
  const CpuFeatures f = cpu_features_active();
  if (f.avx512) return {forward_pooled_avx512, forward_none_avx512, backward_segments_avx512};
  if (f.avx2) return {forward_pooled_avx2, forward_none_avx2, backward_segments_avx2};
#endif
  return {forward_pooled_scalar, forward_none_scalar, backward_segments_scalar};
}

int bit_width(uint64_t x) { return x == 0 ? 0 : 64 - __builtin_clzll(x); }

// The backward's pairs: feature f contributes (its values) x (its probes), laid out by (value,
// probe), which is also the order of code = i * G + g. Returns each feature's first pair [F + 1].
std::vector<int64_t> feature_pair_bases(const Problem& p, const char* op) {
  const auto& fb = p.h_feature_bounds;
  const auto& po = p.h_probe_offsets;
  std::vector<int64_t> base(size_t(p.F + 1), 0);
  for (int64_t f = 0; f < p.F; ++f)
    base[size_t(f + 1)] = base[size_t(f)] + checked_mul(fb[size_t(f + 1)] - fb[size_t(f)], po[size_t(f + 1)] - po[size_t(f)],
                                                      op, "the number of (value, probe) pairs");
  return base;
}

// How the backward's (row, code) pairs are encoded. Direct codes (unit scales: sum pooling without
// per-sample weights, or pooling none) name the gradient row, (grad row << gbits) | g; otherwise
// the value, (i << gbits) | g. When row bits + code bits fit in 64, each pair is one word (row <<
// code_bits | code) and the sort moves half the bytes; otherwise rows and codes are separate arrays.
struct PairEncoding {
  std::vector<int64_t> pair_base;  // [F + 1] each feature's first pair
  int64_t P = 0;                   // pairs
  int gbits = 0;                   // probe bits of a code
  bool direct = false;
  int row_bits = 0;
  bool packed = false;
  int rshift = 0;                  // packed: row << rshift | code
  uint64_t cmask = ~uint64_t(0);   // packed: key & cmask is the code
};

PairEncoding pair_encoding(const Problem& p, const char* op) {
  PairEncoding e;
  e.pair_base = feature_pair_bases(p, op);
  e.P = e.pair_base[size_t(p.F)];
  e.gbits = bit_width(uint64_t(std::max<int64_t>(p.G - 1, 0)));
  TORCH_CHECK_VALUE(p.N == 0 || bit_width(uint64_t(p.N - 1)) + e.gbits <= 64, op, ": ", p.N, " values x ", p.G,
                    " probes do not fit the 64-bit pair codes");
  e.direct = !p.psw.defined() && p.pooling != kPoolMean;
  e.row_bits = bit_width(uint64_t(p.M - 1));
  const int64_t code_rows = p.pooling == kPoolNone || !e.direct ? p.N : p.B;
  const int code_bits = code_rows == 0 ? e.gbits : bit_width(uint64_t(code_rows - 1)) + e.gbits;
  e.packed = e.row_bits + code_bits <= 64;
  e.rshift = e.packed ? code_bits : 0;
  e.cmask = e.packed ? (code_bits == 64 ? ~uint64_t(0) : (uint64_t(1) << code_bits) - 1) : ~uint64_t(0);
  return e;
}

// The kernels' result in the accumulation dtype; the caller converts to the weight dtype.
// pair_keys (pooled sum only, with the packed encoding `enc`): also write the backward's pair keys
// (ForwardArgs::pair_keys).
Tensor forward_acc_cpu(const Problem& p, const Tensor& weight, uint64_t* pair_keys = nullptr,
                       const PairEncoding* enc = nullptr) {
  const bool ragged = p.pooling == kPoolNone && p.combine == kCombineConcat;
  Tensor out = cpu_empty({p.out_rows(), p.out_cols()}, weight.options().dtype(acc_dtype(p.wtype)));
  if (ragged) out.zero_();
  if (out.numel() == 0) return out;
  const Tensor w = weight.contiguous();
  ForwardArgs a = forward_args(p, w, out);
  if (pair_keys) {
    a.pair_keys = pair_keys;
    a.pair_base = enc->pair_base.data();
    a.key_shift = enc->rshift;
    a.probe_bits = enc->gbits;
  }
  const CpuKernels k = pick_kernels();
  if (p.pooling != kPoolNone) {
    // Each batch row is computed by one task from its own bags: results do not depend on threads.
    at::parallel_for(0, p.B, 16, [&](int64_t b0, int64_t b1) { k.pooled(a, b0, b1); });
  } else {
    const int64_t* o = p.offsets.data_ptr<int64_t>();
    for (int64_t f = 0; f < p.F; ++f)
      at::parallel_for(o[f * p.B], o[(f + 1) * p.B], 256, [&](int64_t i0, int64_t i1) { k.none(a, f, i0, i1); });
  }
  return out;
}

// The accumulation-dtype result in the weight's dtype (as .to(), round to nearest even), the
// converted copy also from BufferCache.
Tensor in_weight_dtype(const Tensor& acc, const Tensor& weight) {
  if (acc.scalar_type() == weight.scalar_type()) return acc;
  Tensor out = cpu_empty(acc.sizes(), weight.options());
  out.copy_(acc);
  return out;
}

Tensor mux_embedding_bag_cpu(const Tensor& weight, const Tensor& values, const Tensor& offsets,
                             const Tensor& probe_offsets, const Tensor& probe_row_base, const Tensor& probe_row_size,
                             const Tensor& probe_keys, c10::string_view pooling, c10::string_view combine,
                             const std::optional<Tensor>& per_sample_weights, bool sparse) {
  (void)sparse;  // only selects the gradient layout (autograd)
  const Problem p = check_problem("mux_embedding_bag", weight, values, offsets, probe_offsets, probe_row_base,
                                  probe_row_size, probe_keys, std::string(pooling), std::string(combine),
                                  per_sample_weights);
  return in_weight_dtype(forward_acc_cpu(p, weight), weight);
}

// The column where probe g (of feature f) finds its slot in a row of the output gradient.
int64_t probe_grad_col(const Problem& p, int64_t f, int64_t g) {
  if (p.combine == kCombineSum) return 0;
  return p.pooling == kPoolNone ? (g - p.h_probe_offsets[size_t(f)]) * p.D : g * p.D;
}


// Packed pair keys that the fused op's forward wrote while hashing (ForwardArgs::pair_keys), kept for
// the backward of the same training step, which then skips hashing every (value, probe) pair again
// (~1 ms of a ~25 ms P1 step). Per thread (CPU autograd runs the backward on the thread that calls
// it), the last kMaxPairKeyMemos forwards (a model may have several embedding modules; each
// backward takes its own entry). An entry names the layout tensors it was made from by weak
// references and records their versions: a backward matches only the same tensors, unmodified. A
// weak reference keeps the TensorImpl's memory, so no other tensor can take its address, but not the
// tensor (nor its Python object: a strong one, released by thread-local destructors after Python
// has shut down, aborted the process at exit). The matching backward takes the keys (its sort
// permutes them). Only the fused op's autograd asks for keys, and only when grad is enabled:
// torch.compile and plain forwards never leave an entry. EMBKERN_REUSE_PAIR_KEYS=0 turns it off
// (tests compare both ways).
using WeakTensorImpl = c10::weak_intrusive_ptr<c10::TensorImpl, c10::UndefinedTensorImpl>;
struct PairKeyMemo {
  std::vector<WeakTensorImpl> layout;  // values, offsets, probe_offsets, row_base, row_size, keys
  std::vector<int64_t> versions;
  int64_t M = 0;
  Tensor keys;  // a buffer of ours (no Python object)
};
constexpr size_t kMaxPairKeyMemos = 4;
thread_local std::deque<PairKeyMemo> t_pair_key_memos;  // oldest first
thread_local bool t_want_pair_keys = false;  // set by the fused op's autograd around its forward

bool pair_key_reuse_enabled() {
  const char* e = std::getenv("EMBKERN_REUSE_PAIR_KEYS");
  return !(e && e[0] == '0');
}

std::vector<Tensor> layout_tensors(const Problem& p) {
  return {p.values, p.offsets, p.probe_offsets, p.row_base, p.row_size, p.keys};
}

void keep_pair_keys(const Problem& p, Tensor keys) {
  PairKeyMemo m;
  for (const Tensor& t : layout_tensors(p)) {
    m.layout.emplace_back(t.getIntrusivePtr());
    m.versions.push_back(t._version());
  }
  m.M = p.M;
  m.keys = std::move(keys);
  t_pair_key_memos.push_back(std::move(m));
  if (t_pair_key_memos.size() > kMaxPairKeyMemos) t_pair_key_memos.pop_front();
}

// This problem's kept keys (taken out of the memo), or an undefined tensor.
Tensor take_pair_keys(const Problem& p) {
  if (t_pair_key_memos.empty() || p.pooling != kPoolSum || p.psw.defined()) return Tensor();
  const std::vector<Tensor> now = layout_tensors(p);
  for (auto m = t_pair_key_memos.rbegin(); m != t_pair_key_memos.rend(); ++m) {
    bool same = m->M == p.M;
    for (size_t t = 0; same && t < now.size(); ++t)
      same = !m->layout[t].expired() && m->layout[t]._unsafe_get_target() == now[t].unsafeGetTensorImpl() &&
             now[t]._version() == m->versions[t];  // (the same impl: not an inference tensor, as stored)
    if (same) {
      Tensor keys = std::move(m->keys);
      t_pair_key_memos.erase(std::next(m).base());
      return keys;
    }
  }
  return Tensor();
}

// Stable LSD radix sort of keys (and their values, when vals is not null) by key bits
// [lo_bit, lo_bit + bits), 8 bits per pass (256 buckets: 11-bit digits measured slower, their
// scatter streams thrash the caches). The chunking does not depend on the thread count, and a
// stable sort has one result, so the output is the same for any number of threads.
void radix_sort(uint64_t*& keys, uint64_t*& vals, uint64_t* keys_tmp, uint64_t* vals_tmp, int64_t n, int lo_bit,
                int bits) {
  constexpr int kDigitBits = 8, kBuckets = 1 << kDigitBits;
  constexpr int64_t kChunk = 1 << 15;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> hist(size_t(chunks * kBuckets));
  for (int shift = lo_bit; shift < lo_bit + bits; shift += kDigitBits) {
    std::fill(hist.begin(), hist.end(), 0);
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        int64_t* h = &hist[size_t(c * kBuckets)];
        for (int64_t j = c * kChunk, e = std::min(n, (c + 1) * kChunk); j < e; ++j) ++h[(keys[j] >> shift) & (kBuckets - 1)];
      }
    });
    int64_t run = 0;
    for (int d = 0; d < kBuckets; ++d)
      for (int64_t c = 0; c < chunks; ++c) {
        const int64_t cnt = hist[size_t(c * kBuckets + d)];
        hist[size_t(c * kBuckets + d)] = run;
        run += cnt;
      }
    at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        int64_t* h = &hist[size_t(c * kBuckets)];
        for (int64_t j = c * kChunk, e = std::min(n, (c + 1) * kChunk); j < e; ++j) {
          const int64_t dst = h[(keys[j] >> shift) & (kBuckets - 1)]++;
          keys_tmp[dst] = keys[j];
          if (vals) vals_tmp[dst] = vals[j];
        }
      }
    });
    std::swap(keys, keys_tmp);
    if (vals) std::swap(vals, vals_tmp);
  }
}

// Stable sort of keys by key bits [lo_bit, lo_bit + bits) in two sweeps over memory: one scatter by
// the top digit (up to 8 bits, chunked as radix_sort), then each top bucket (about n / 256 keys,
// cache resident) is finished on its own by LSD passes of up to 8 bits. radix_sort sweeps the whole
// array twice per 8-bit digit. Bucket work is independent and the chunks are fixed, so the result
// is the one stable order for any thread count. The result is left in keys (pointers may swap).
void radix_sort_msd(uint64_t*& keys, uint64_t*& tmp, int64_t n, int lo_bit, int bits) {
  if (bits == 0 || n <= 1) return;
  constexpr int kDigitBits = 8;
  constexpr int64_t kChunk = 1 << 15;
  // Top buckets of 256 keys or more: each bucket pass also clears and scans its 2^digit counters,
  // which for 256 buckets of a small batch cost far more than the keys themselves.
  const int top_bits = std::clamp(bit_width(uint64_t(n)) - 9, 0, std::min(bits, kDigitBits));
  const int top_shift = top_bits > 0 ? lo_bit + bits - top_bits : 0;  // (one bucket: mask 0)
  const int64_t nb = int64_t(1) << top_bits, top_mask = nb - 1;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  std::vector<int64_t> hist(size_t(chunks * nb), 0), bucket_start(size_t(nb + 1), 0);
  uint64_t *src = keys, *dst = tmp;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* h = &hist[size_t(c * nb)];
      for (int64_t j = c * kChunk, e = std::min(n, (c + 1) * kChunk); j < e; ++j) ++h[(src[j] >> top_shift) & top_mask];
    }
  });
  int64_t run = 0;
  for (int64_t d = 0; d < nb; ++d) {
    bucket_start[size_t(d)] = run;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t cnt = hist[size_t(c * nb + d)];
      hist[size_t(c * nb + d)] = run;
      run += cnt;
    }
  }
  bucket_start[size_t(nb)] = n;
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t* h = &hist[size_t(c * nb)];
      for (int64_t j = c * kChunk, e = std::min(n, (c + 1) * kChunk); j < e; ++j)
        dst[h[(src[j] >> top_shift) & top_mask]++] = src[j];
    }
  });
  const int low_bits = bits - top_bits;
  const int passes = (low_bits + kDigitBits - 1) / kDigitBits;
  if (passes > 0) {
    const int pass_bits = (low_bits + passes - 1) / passes;
    at::parallel_for(0, nb, 4, [&](int64_t d0, int64_t d1) {
      int64_t cnt[1 << kDigitBits];
      for (int64_t d = d0; d < d1; ++d) {
        const int64_t s = bucket_start[size_t(d)], e = bucket_start[size_t(d + 1)];
        uint64_t *from = dst + s, *to = src + s;
        for (int q = 0; q < passes; ++q) {
          const int shift = lo_bit + q * pass_bits, db = std::min(pass_bits, low_bits - q * pass_bits);
          const uint64_t mask = (uint64_t(1) << db) - 1;
          std::fill(cnt, cnt + (int64_t(1) << db), 0);
          for (int64_t j = 0; j < e - s; ++j) ++cnt[(from[j] >> shift) & mask];
          int64_t r = 0;
          for (int64_t v = 0; v < (int64_t(1) << db); ++v) {
            const int64_t c = cnt[v];
            cnt[v] = r;
            r += c;
          }
          for (int64_t j = 0; j < e - s; ++j) to[cnt[(from[j] >> shift) & mask]++] = from[j];
          std::swap(from, to);
        }
      }
    });
  }
  // After the top scatter the keys sit in dst; each bucket pass moves them between dst and src.
  if (passes % 2 == 0) std::swap(keys, tmp);
}

enum class BackwardOut { Dense, Sparse, Sgd, RowwiseAdagrad };

// The shared backward: per-value slots and scales, (row, code) pairs, sort, segment reduce, apply.
// Returns {rows, values} for Sparse, {dense} for Dense, {} for the in-place optimizers.
std::vector<Tensor> backward_cpu(const char* op, BackwardOut kind, const Tensor& grad, const Tensor& weight,
                                 const Problem& p, double lr, double eps, const Tensor& momentum) {
  check_grad(grad, p, weight, op);
  const at::ScalarType acc = acc_dtype(p.wtype);
  const auto opts = weight.options();
  const int64_t N = p.N, G = p.G, D = p.D, B = p.B, F = p.F;
  const int64_t* o = p.offsets.data_ptr<int64_t>();
  const auto& po = p.h_probe_offsets;
  const PairEncoding enc = pair_encoding(p, op);
  const std::vector<int64_t>& pair_base = enc.pair_base;
  const int64_t P = enc.P;
  const int gbits = enc.gbits;
  Tensor dense, sparse_rows, sparse_vals;
  if (kind == BackwardOut::Dense) dense = at::zeros({p.M, D}, opts.dtype(acc));
  if (P == 0) {
    if (kind == BackwardOut::Dense) return {dense.to(weight.scalar_type())};
    if (kind == BackwardOut::Sparse) return {at::empty({0}, opts.dtype(at::kLong)), at::empty({0, D}, opts)};
    return {};
  }
  const Tensor g = grad.to(acc).contiguous();
  const MuxLayout L = layout_of(p);

  // Per value: the grad row it reads and its scale (1, its per-sample weight, or 1 / bag length).
  // With unit scales (sum pooling without per-sample weights, or pooling none) the pair code names
  // the grad row directly, (grad row << probe_bits) | g, and the reduce needs no per-value lookups.
  // The pairs keep their (value, probe) positions and the sort is stable, so each row is still
  // summed in (value, probe) order whatever the code holds.
  const bool direct = enc.direct;
  Tensor slot_row = cpu_empty({direct ? 0 : N}, opts.dtype(at::kLong)), scale = cpu_empty({direct ? 0 : N}, opts.dtype(acc));
  int64_t* sr = direct ? nullptr : slot_row.data_ptr<int64_t>();
  const int row_bits = enc.row_bits, rshift = enc.rshift;
  const bool packed = enc.packed;
  const uint64_t cmask = enc.cmask;
  // Keys the fused forward already wrote (PairKeyMemo) or hashed here.
  Tensor keys = take_pair_keys(p);
  const bool have_keys = keys.defined();
  if (!have_keys) keys = cpu_empty({P}, opts.dtype(at::kLong));
  Tensor codes = cpu_empty({packed ? 0 : P}, opts.dtype(at::kLong));
  uint64_t* kp = reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>());
  uint64_t* cp = packed ? nullptr : reinterpret_cast<uint64_t*>(codes.data_ptr<int64_t>());
  if (!have_keys) AT_DISPATCH_FLOATING_TYPES(acc, "mux_embedding_bag_backward", [&] {
    scalar_t* sc = direct ? nullptr : scale.data_ptr<scalar_t>();
    const scalar_t* psw = p.psw.defined() ? p.psw.data_ptr<scalar_t>() : nullptr;
    at::parallel_for(0, F * B, 64, [&](int64_t j0, int64_t j1) {
      for (int64_t j = j0; j < j1; ++j) {
        const int64_t f = j / B, b = j % B, s = o[j], e = o[j + 1];
        const scalar_t inv = e > s ? scalar_t(1) / scalar_t(e - s) : scalar_t(0);
        const int64_t P_f = po[f + 1] - po[f];
        for (int64_t i = s; i < e; ++i) {
          const int64_t slot = p.pooling == kPoolNone ? i : b;
          if (!direct) {
            sr[i] = slot;
            sc[i] = psw ? psw[i] : (p.pooling == kPoolMean ? inv : scalar_t(1));
          }
          const uint64_t pm = mix64(value_bits(L, i));
          const int64_t at0 = pair_base[size_t(f)] + (i - o[f * B]) * P_f;
          const uint64_t hi = uint64_t(direct ? slot : i) << gbits;
          for (int64_t q = 0; q < P_f; ++q) {
            const int64_t gg = po[f] + q;
            const uint64_t row = uint64_t(probe_row(pm, L.keys[gg], L.row_base[gg], L.row_size[gg]));
            const uint64_t code = hi | uint64_t(gg);
            if (packed) {
              kp[at0 + q] = (row << rshift) | code;
            } else {
              kp[at0 + q] = row;
              cp[at0 + q] = code;
            }
          }
        }
      }
    });
  });
  std::vector<int64_t> g_col(static_cast<size_t>(G));
  for (int64_t f = 0; f < F; ++f)
    for (int64_t gg = po[f]; gg < po[f + 1]; ++gg) g_col[size_t(gg)] = probe_grad_col(p, f, gg);

  // Sort pairs by row (stable: codes stay ascending inside a row).
  Tensor keys_tmp = cpu_empty({P}, opts.dtype(at::kLong)), codes_tmp = cpu_empty({packed ? 0 : P}, opts.dtype(at::kLong));
  uint64_t *ks = kp, *cs = cp;
  if (packed) {
    uint64_t* kt = reinterpret_cast<uint64_t*>(keys_tmp.data_ptr<int64_t>());
    radix_sort_msd(ks, kt, P, rshift, row_bits);
  } else {
    radix_sort(ks, cs, reinterpret_cast<uint64_t*>(keys_tmp.data_ptr<int64_t>()),
               reinterpret_cast<uint64_t*>(codes_tmp.data_ptr<int64_t>()), P, rshift, row_bits);
  }
  if (packed) cs = ks;

  const CpuKernels k = pick_kernels();
  // What every backward mode reads: the sorted pairs, the gradient and its scales.
  BackwardArgs base;
  base.rows = ks;
  base.codes = cs;
  base.row_shift = rshift;
  base.code_mask = cmask;
  base.probe_bits = gbits;
  base.dim = D;
  base.grad = g.data_ptr();
  base.grad_stride = g.size(1);
  base.g_col = g_col.data();
  base.slot_row = sr;
  base.scale = direct ? nullptr : scale.data_ptr();
  base.wtype = p.wtype;
  base.lr = lr;
  base.eps = eps;
  const bool in_place = kind == BackwardOut::Sgd || kind == BackwardOut::RowwiseAdagrad;
  if (in_place) {
    // The in-place optimizers need no unique-row list: each task walks a range of the sorted pairs
    // and owns the rows that start in it (the kernel finds the boundaries).
    TORCH_CHECK_VALUE(weight.is_contiguous(), op, ": weight must be contiguous to be updated in place");
    BackwardArgs a = base;
    a.num_pairs = P;
    a.weight = weight.data_ptr();
    a.mode = kind == BackwardOut::Sgd ? kSgd : kRowwiseAdagrad;
    if (kind == BackwardOut::RowwiseAdagrad) a.momentum = momentum.data_ptr();
    at::parallel_for(0, P, 64, [&](int64_t p0, int64_t p1) { k.backward(a, p0, p1); });
    return {};
  }

  // Unique rows: segment starts by a chunked count + scan (fixed chunks: thread-count independent).
  constexpr int64_t kChunk = 1 << 15;
  const int64_t chunks = (P + kChunk - 1) / kChunk;
  std::vector<int64_t> chunk_count(size_t(chunks + 1), 0);
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t cnt = 0;
      for (int64_t j = c * kChunk, e = std::min(P, (c + 1) * kChunk); j < e; ++j) cnt += (j == 0 || (ks[j] >> rshift) != (ks[j - 1] >> rshift));
      chunk_count[size_t(c + 1)] = cnt;
    }
  });
  for (int64_t c = 0; c < chunks; ++c) chunk_count[size_t(c + 1)] += chunk_count[size_t(c)];
  const int64_t U = chunk_count[size_t(chunks)];
  Tensor seg_start = cpu_empty({U + 1}, opts.dtype(at::kLong));
  int64_t* ss = seg_start.data_ptr<int64_t>();
  at::parallel_for(0, chunks, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      int64_t u = chunk_count[size_t(c)];
      for (int64_t j = c * kChunk, e = std::min(P, (c + 1) * kChunk); j < e; ++j)
        if (j == 0 || (ks[j] >> rshift) != (ks[j - 1] >> rshift)) ss[u++] = j;
    }
  });
  ss[U] = P;

  BackwardArgs a = base;
  a.seg_start = ss;
  if (kind == BackwardOut::Sparse) {
    sparse_vals = cpu_empty({U, D}, opts.dtype(acc));
    a.mode = kWriteRow;
    a.out = sparse_vals.data_ptr();
  } else if (kind == BackwardOut::Dense) {
    a.mode = kWriteRow;
    a.out = dense.data_ptr();
    a.out_by_row = true;
  }
  // Unique rows are disjoint, so tasks never touch the same row; each row is summed in pair order.
  at::parallel_for(0, U, 32, [&](int64_t u0, int64_t u1) { k.backward(a, u0, u1); });

  if (kind == BackwardOut::Sparse) {
    sparse_rows = cpu_empty({U}, opts.dtype(at::kLong));
    int64_t* rp = sparse_rows.data_ptr<int64_t>();
    at::parallel_for(0, U, 4096, [&](int64_t u0, int64_t u1) {
      for (int64_t u = u0; u < u1; ++u) rp[u] = int64_t(ks[ss[u]] >> rshift);
    });
    return {sparse_rows, sparse_vals.to(weight.scalar_type())};
  }
  if (kind == BackwardOut::Dense) return {dense.to(weight.scalar_type())};
  return {};
}

void check_lr_eps(double lr, double eps, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(lr), op, ": lr must be finite, got ", lr);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps >= 0, op, ": eps must be finite and >= 0, got ", eps);
}

void check_momentum(const Tensor& momentum, const Tensor& weight, WType wt, const char* op) {
  check_rank(momentum, op, "momentum", 1);
  check_dtype(momentum, op, "momentum", acc_dtype(wt));
  TORCH_CHECK_VALUE(momentum.size(0) == weight.size(0), op, ": momentum must have one entry per weight row (",
                    weight.size(0), "), got ", momentum.size(0));
  check_same_device(weight, "weight", momentum, "momentum", op);
  TORCH_CHECK_VALUE(momentum.is_contiguous(), op, ": momentum must be contiguous");
}

#define EMBKERN_EMB_LAYOUT_PARAMS                                                                          \
  const Tensor &values, const Tensor &offsets, const Tensor &probe_offsets, const Tensor &probe_row_base, \
      const Tensor &probe_row_size, const Tensor &probe_keys, c10::string_view pooling, c10::string_view combine, \
      const std::optional<Tensor>&per_sample_weights
#define EMBKERN_EMB_LAYOUT_ARGS                                                                                 \
  values, offsets, probe_offsets, probe_row_base, probe_row_size, probe_keys, std::string(pooling), std::string(combine), \
      per_sample_weights

Tensor backward_dense_cpu(const Tensor& grad, const Tensor& weight, EMBKERN_EMB_LAYOUT_PARAMS) {
  const char* op = "mux_embedding_bag_backward";
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  return backward_cpu(op, BackwardOut::Dense, grad, weight, p, 0, 0, Tensor())[0];
}

std::tuple<Tensor, Tensor> backward_sparse_cpu(const Tensor& grad, const Tensor& weight, EMBKERN_EMB_LAYOUT_PARAMS) {
  const char* op = "mux_embedding_bag_backward_sparse";
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  auto r = backward_cpu(op, BackwardOut::Sparse, grad, weight, p, 0, 0, Tensor());
  return {r[0], r[1]};
}

void sgd_cpu(const Tensor& weight, const Tensor& grad, EMBKERN_EMB_LAYOUT_PARAMS, double lr) {
  const char* op = "mux_embedding_bag_sgd_";
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  check_lr_eps(lr, 0.0, op);
  backward_cpu(op, BackwardOut::Sgd, grad, weight, p, lr, 0, Tensor());
}

void rowwise_adagrad_cpu(const Tensor& weight, const Tensor& momentum, const Tensor& grad, EMBKERN_EMB_LAYOUT_PARAMS,
                         double lr, double eps) {
  const char* op = "mux_embedding_bag_rowwise_adagrad_";
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  check_lr_eps(lr, eps, op);
  check_momentum(momentum, weight, p.wtype, op);
  backward_cpu(op, BackwardOut::RowwiseAdagrad, grad, weight, p, lr, eps, momentum);
}

Tensor psw_backward_cpu(const Tensor& grad, const Tensor& weight, EMBKERN_EMB_LAYOUT_PARAMS) {
  const char* op = "mux_embedding_bag_psw_backward";
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  TORCH_CHECK_VALUE(p.pooling == kPoolSum, op, ": per-sample weights need pooling='sum'");
  check_grad(grad, p, weight, op);
  const at::ScalarType acc = acc_dtype(p.wtype);
  Tensor out = at::zeros({p.N}, weight.options().dtype(acc));
  if (p.N == 0) return out;
  const Tensor g = grad.to(acc).contiguous(), w = weight.contiguous();
  const ForwardArgs a = forward_args(p, w, out);
  const int64_t* o = p.offsets.data_ptr<int64_t>();
  for (int64_t f = 0; f < p.F; ++f)
    at::parallel_for(o[f * p.B], o[(f + 1) * p.B], 256, [&](int64_t i0, int64_t i1) {
      psw_grad_scalar(a, g.data_ptr(), g.size(1), f, i0, i1, out.data_ptr());
    });
  return out;
}

// The forward of the fused-optimizer path (its autograd applies the optimizer in place).
Tensor fused_forward_cpu(const Tensor& weight, const Tensor& momentum, EMBKERN_EMB_LAYOUT_PARAMS,
                         c10::string_view optimizer, double lr, double eps) {
  const char* op = "mux_embedding_bag_fused";
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  TORCH_CHECK_VALUE(optimizer == "sgd" || optimizer == "rowwise_adagrad", op,
                    ": optimizer must be 'sgd' or 'rowwise_adagrad', got '", std::string(optimizer), "'");
  check_lr_eps(lr, eps, op);
  if (optimizer == "rowwise_adagrad") check_momentum(momentum, weight, p.wtype, op);
  // A training step's forward (the autograd kernel asked): also write the pair keys its backward
  // sorts (PairKeyMemo). Sum pooling without per-sample weights, packed keys, tracked versions.
  if (t_want_pair_keys && p.pooling == kPoolSum && !p.psw.defined() && pair_key_reuse_enabled()) {
    const PairEncoding enc = pair_encoding(p, op);
    bool trackable = enc.packed && enc.P > 0;
    for (const Tensor& t : layout_tensors(p)) trackable = trackable && !t.is_inference();
    if (trackable) {
      Tensor keys = cpu_empty({enc.P}, weight.options().dtype(at::kLong));
      Tensor out = forward_acc_cpu(p, weight, reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()), &enc);
      keep_pair_keys(p, std::move(keys));
      return in_weight_dtype(out, weight);
    }
  }
  return in_weight_dtype(forward_acc_cpu(p, weight), weight);
}

// ---- CUDA ----------------------------------------------------------------------------------------

#ifdef EMBKERN_WITH_CUDA
cudaStream_t current_stream(const Tensor& t) { return c10::cuda::getCurrentCUDAStream(t.device().index()).stream(); }

Tensor forward_acc_cuda(const Problem& p, const Tensor& weight) {
  // pooled concat writes every element; the other forms add into (or skip) parts of a zeroed output
  const bool writes_all = p.pooling != kPoolNone && p.combine == kCombineConcat;
  const auto opts = weight.options().dtype(acc_dtype(p.wtype));
  Tensor out = writes_all ? at::empty({p.out_rows(), p.out_cols()}, opts) : at::zeros({p.out_rows(), p.out_cols()}, opts);
  if (out.numel() == 0) return out;
  const Tensor w = weight.contiguous();
  const ForwardArgs a = forward_args(p, w, out);
  if (p.pooling != kPoolNone)
    cuda::forward_pooled(a, current_stream(weight));
  else
    cuda::forward_none(a, current_stream(weight));
  return out;
}

Tensor mux_embedding_bag_cuda(const Tensor& weight, const Tensor& values, const Tensor& offsets,
                              const Tensor& probe_offsets, const Tensor& probe_row_base, const Tensor& probe_row_size,
                              const Tensor& probe_keys, c10::string_view pooling, c10::string_view combine,
                              const std::optional<Tensor>& per_sample_weights, bool sparse) {
  (void)sparse;
  const c10::cuda::CUDAGuard guard(weight.device());
  const Problem p = check_problem("mux_embedding_bag", weight, values, offsets, probe_offsets, probe_row_base,
                                  probe_row_size, probe_keys, std::string(pooling), std::string(combine),
                                  per_sample_weights);
  return forward_acc_cuda(p, weight).to(weight.scalar_type());
}

std::vector<Tensor> backward_cuda(const char* op, BackwardOut kind, const Tensor& grad, const Tensor& weight,
                                  const Problem& p, double lr, double eps, const Tensor& momentum) {
  check_grad(grad, p, weight, op);
  const at::ScalarType acc = acc_dtype(p.wtype);
  const auto opts = weight.options();
  const int64_t N = p.N, G = p.G, D = p.D, F = p.F;
  const auto& po = p.h_probe_offsets;
  // (the feature bounds behind the pair bases came back with check_problem's one transfer)
  const PairEncoding enc = pair_encoding(p, op);
  const std::vector<int64_t>& pair_base = enc.pair_base;
  const int64_t P = enc.P;
  const int gbits = enc.gbits;
  Tensor dense;
  if (kind == BackwardOut::Dense) dense = at::zeros({p.M, D}, opts.dtype(acc));
  if (P == 0) {
    if (kind == BackwardOut::Dense) return {dense.to(weight.scalar_type())};
    if (kind == BackwardOut::Sparse) return {at::empty({0}, opts.dtype(at::kLong)), at::empty({0, D}, opts)};
    return {};
  }
  const Tensor g = grad.to(acc).contiguous();
  // pair_base [F + 1] and each probe's gradient column g_col [G], uploaded in one non-blocking copy
  // from pinned memory (a pageable upload would wait for the stream)
  Tensor h_upload = at::empty({F + 1 + G}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
  int64_t* hu = h_upload.data_ptr<int64_t>();
  std::copy(pair_base.begin(), pair_base.end(), hu);
  for (int64_t f = 0; f < F; ++f)
    for (int64_t gg = po[f]; gg < po[f + 1]; ++gg) hu[F + 1 + gg] = probe_grad_col(p, f, gg);
  const Tensor upload = h_upload.to(opts.dtype(at::kLong), /*non_blocking=*/true);
  const Tensor d_pair_base = upload.narrow(0, 0, F + 1), d_gcol = upload.narrow(0, F + 1, G);
  Tensor slot_row = at::empty({N}, opts.dtype(at::kLong)), scale = at::empty({N}, opts.dtype(acc));
  Tensor keys = at::empty({2, P}, opts.dtype(at::kLong)), codes = at::empty({2, P}, opts.dtype(at::kLong));
  const int bits = enc.row_bits;
  const size_t tmp_bytes = cuda::sort_segments_temp_bytes(P, bits);
  Tensor tmp = at::empty({int64_t(std::max<size_t>(tmp_bytes, 1))}, opts.dtype(at::kByte));
  Tensor unique_rows = at::empty({P}, opts.dtype(at::kLong)), seg_start = at::empty({P + 1}, opts.dtype(at::kLong));
  Tensor num_runs = at::empty({1}, opts.dtype(at::kLong));
  const cudaStream_t stream = current_stream(weight);
  const MuxLayout L = layout_of(p);
  cuda::prepare_pairs(L, p.pooling, gbits, acc == at::kDouble, p.psw.defined() ? p.psw.data_ptr() : nullptr,
                      d_pair_base.data_ptr<int64_t>(), slot_row.data_ptr<int64_t>(), scale.data_ptr(),
                      reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()),
                      reinterpret_cast<uint64_t*>(codes.data_ptr<int64_t>()), stream);
  // The in-place optimizers never need U on the host: their launches cover P slots and stop at the
  // device's count (one synchronization less per step). The gradient outputs are sized by U.
  const bool in_place = kind == BackwardOut::Sgd || kind == BackwardOut::RowwiseAdagrad;
  TORCH_CHECK_VALUE(!in_place || weight.is_contiguous(), op, ": weight must be contiguous to be updated in place");
  const int64_t U = cuda::sort_segments(reinterpret_cast<uint64_t*>(keys.data_ptr<int64_t>()),
                                        reinterpret_cast<uint64_t*>(codes.data_ptr<int64_t>()), P, bits, tmp.data_ptr(),
                                        tmp_bytes, unique_rows.data_ptr<int64_t>(), seg_start.data_ptr<int64_t>(),
                                        num_runs.data_ptr<int64_t>(), /*read_count=*/!in_place, stream);
  const int64_t* num_unique = in_place ? num_runs.data_ptr<int64_t>() : nullptr;  // else U is exact
  // keys / codes row 1 now hold the sorted pairs.
  BackwardArgs a;
  a.rows = reinterpret_cast<const uint64_t*>(keys.data_ptr<int64_t>()) + P;
  a.codes = reinterpret_cast<const uint64_t*>(codes.data_ptr<int64_t>()) + P;
  a.seg_start = seg_start.data_ptr<int64_t>();
  a.probe_bits = gbits;
  a.dim = D;
  a.grad = g.data_ptr();
  a.grad_stride = g.size(1);
  a.g_col = d_gcol.data_ptr<int64_t>();
  a.slot_row = slot_row.data_ptr<int64_t>();
  a.scale = scale.data_ptr();
  a.wtype = p.wtype;
  a.lr = lr;
  a.eps = eps;
  if (kind == BackwardOut::Sgd) {  // summed and applied in one kernel
    a.weight = weight.data_ptr();
    a.mode = kSgd;
    cuda::reduce_segments_sgd(a, U, num_unique, stream);
    return {};
  }
  Tensor gsum = at::empty({U, D}, opts.dtype(acc));
  a.out = gsum.data_ptr();
  cuda::reduce_segments(a, U, num_unique, stream);
  if (kind == BackwardOut::Sparse) return {unique_rows.slice(0, 0, U).clone(), gsum.to(weight.scalar_type())};
  if (kind == BackwardOut::Dense) {
    dense.index_copy_(0, unique_rows.slice(0, 0, U), gsum);
    return {dense.to(weight.scalar_type())};
  }
  a.weight = weight.data_ptr();
  a.mode = kRowwiseAdagrad;
  a.momentum = momentum.data_ptr();
  cuda::apply_rows(a, unique_rows.data_ptr<int64_t>(), gsum.data_ptr(), U, num_unique, stream);
  return {};
}

Tensor backward_dense_cuda(const Tensor& grad, const Tensor& weight, EMBKERN_EMB_LAYOUT_PARAMS) {
  const char* op = "mux_embedding_bag_backward";
  const c10::cuda::CUDAGuard guard(weight.device());
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  return backward_cuda(op, BackwardOut::Dense, grad, weight, p, 0, 0, Tensor())[0];
}

std::tuple<Tensor, Tensor> backward_sparse_cuda(const Tensor& grad, const Tensor& weight, EMBKERN_EMB_LAYOUT_PARAMS) {
  const char* op = "mux_embedding_bag_backward_sparse";
  const c10::cuda::CUDAGuard guard(weight.device());
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  auto r = backward_cuda(op, BackwardOut::Sparse, grad, weight, p, 0, 0, Tensor());
  return {r[0], r[1]};
}

void sgd_cuda(const Tensor& weight, const Tensor& grad, EMBKERN_EMB_LAYOUT_PARAMS, double lr) {
  const char* op = "mux_embedding_bag_sgd_";
  const c10::cuda::CUDAGuard guard(weight.device());
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  check_lr_eps(lr, 0.0, op);
  backward_cuda(op, BackwardOut::Sgd, grad, weight, p, lr, 0, Tensor());
}

void rowwise_adagrad_cuda(const Tensor& weight, const Tensor& momentum, const Tensor& grad, EMBKERN_EMB_LAYOUT_PARAMS,
                          double lr, double eps) {
  const char* op = "mux_embedding_bag_rowwise_adagrad_";
  const c10::cuda::CUDAGuard guard(weight.device());
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  check_lr_eps(lr, eps, op);
  check_momentum(momentum, weight, p.wtype, op);
  backward_cuda(op, BackwardOut::RowwiseAdagrad, grad, weight, p, lr, eps, momentum);
}

// The per-sample-weight gradient is a small, rare path: computed by the CPU kernel on copies.
Tensor psw_backward_cuda(const Tensor& grad, const Tensor& weight, EMBKERN_EMB_LAYOUT_PARAMS) {
  const auto cpu = [](const std::optional<Tensor>& t) -> std::optional<Tensor> {
    return t.has_value() ? std::optional<Tensor>(t->cpu()) : std::nullopt;
  };
  check_same_device(weight, "weight", grad, "grad", "mux_embedding_bag_psw_backward");
  return psw_backward_cpu(grad.cpu(), weight.cpu(), values.cpu(), offsets.cpu(), probe_offsets.cpu(),
                          probe_row_base.cpu(), probe_row_size.cpu(), probe_keys.cpu(), pooling, combine,
                          cpu(per_sample_weights))
      .to(weight.device());
}

Tensor fused_forward_cuda(const Tensor& weight, const Tensor& momentum, EMBKERN_EMB_LAYOUT_PARAMS,
                          c10::string_view optimizer, double lr, double eps) {
  const char* op = "mux_embedding_bag_fused";
  const c10::cuda::CUDAGuard guard(weight.device());
  const Problem p = check_problem(op, weight, EMBKERN_EMB_LAYOUT_ARGS);
  TORCH_CHECK_VALUE(optimizer == "sgd" || optimizer == "rowwise_adagrad", op,
                    ": optimizer must be 'sgd' or 'rowwise_adagrad', got '", std::string(optimizer), "'");
  check_lr_eps(lr, eps, op);
  if (optimizer == "rowwise_adagrad") check_momentum(momentum, weight, p.wtype, op);
  return forward_acc_cuda(p, weight).to(weight.scalar_type());
}
#endif

}  // namespace

#define EMBKERN_EMB_LAYOUT_SCHEMA                                                                        \
  "Tensor values, Tensor offsets, Tensor probe_offsets, Tensor probe_row_base, Tensor probe_row_size, " \
  "Tensor probe_keys, str pooling, str combine, Tensor? per_sample_weights"

TORCH_LIBRARY_FRAGMENT(embkern, m) {
  m.def(
      "mux_embedding_bag(Tensor weight, Tensor values, Tensor offsets, Tensor probe_offsets, Tensor probe_row_base, "
      "Tensor probe_row_size, Tensor probe_keys, str pooling=\"sum\", str combine=\"concat\", "
      "Tensor? per_sample_weights=None, bool sparse=False) -> Tensor");
  m.def("mux_embedding_bag_backward(Tensor grad, Tensor weight, " EMBKERN_EMB_LAYOUT_SCHEMA ") -> Tensor");
  m.def("mux_embedding_bag_backward_sparse(Tensor grad, Tensor weight, " EMBKERN_EMB_LAYOUT_SCHEMA
        ") -> (Tensor, Tensor)");
  m.def("mux_embedding_bag_psw_backward(Tensor grad, Tensor weight, " EMBKERN_EMB_LAYOUT_SCHEMA ") -> Tensor");
  m.def("mux_embedding_bag_sgd_(Tensor(a!) weight, Tensor grad, " EMBKERN_EMB_LAYOUT_SCHEMA ", float lr) -> ()");
  m.def("mux_embedding_bag_rowwise_adagrad_(Tensor(a!) weight, Tensor(b!) momentum, Tensor grad, " EMBKERN_EMB_LAYOUT_SCHEMA
        ", float lr, float eps=1e-8) -> ()");
  m.def("mux_embedding_bag_fused(Tensor weight, Tensor momentum, " EMBKERN_EMB_LAYOUT_SCHEMA
        ", str optimizer, float lr, float eps=1e-8) -> Tensor");
}

TORCH_LIBRARY_IMPL(embkern, CPU, m) {
  m.impl("mux_embedding_bag", &mux_embedding_bag_cpu);
  m.impl("mux_embedding_bag_backward", &backward_dense_cpu);
  m.impl("mux_embedding_bag_backward_sparse", &backward_sparse_cpu);
  m.impl("mux_embedding_bag_psw_backward", &psw_backward_cpu);
  m.impl("mux_embedding_bag_sgd_", &sgd_cpu);
  m.impl("mux_embedding_bag_rowwise_adagrad_", &rowwise_adagrad_cpu);
  m.impl("mux_embedding_bag_fused", &fused_forward_cpu);
}

#ifdef EMBKERN_WITH_CUDA
TORCH_LIBRARY_IMPL(embkern, CUDA, m) {
  m.impl("mux_embedding_bag", &mux_embedding_bag_cuda);
  m.impl("mux_embedding_bag_backward", &backward_dense_cuda);
  m.impl("mux_embedding_bag_backward_sparse", &backward_sparse_cuda);
  m.impl("mux_embedding_bag_psw_backward", &psw_backward_cuda);
  m.impl("mux_embedding_bag_sgd_", &sgd_cuda);
  m.impl("mux_embedding_bag_rowwise_adagrad_", &rowwise_adagrad_cuda);
  m.impl("mux_embedding_bag_fused", &fused_forward_cuda);
}
#endif

// ---- autograd ------------------------------------------------------------------------------------
// Registered here rather than with torch.library.register_autograd (as the other families do): these
// ops run once per training step, and that Python path cost ~100 us a step on this CPU (56 us of it
// in torch's fill_defaults, quadratic in the 14 schema arguments) and ~250 us on the H200's host,
// more than the whole GPU backward. The forward and backward call the ops through the dispatcher,
// below autograd, so the fake kernels serve torch.compile as before.
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptTensor = std::optional<Tensor>;

template <class Sig>
c10::TypedOperatorHandle<Sig> embkern_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Sig>();
}

#define EMBKERN_EMB_LAYOUT_TYPES                                                                     \
  const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, c10::string_view, \
      c10::string_view, const OptTensor&

// The saved layout: values, offsets, the four probe tensors, pooling, combine, per_sample_weights.
struct SavedLayout {
  Tensor values, offsets, po, base, size, keys;
  std::string pooling, combine;
  OptTensor psw;
};

void save_layout(AutogradContext* ctx, std::vector<Tensor> head, const Tensor& values, const Tensor& offsets,
                 const Tensor& po, const Tensor& base, const Tensor& size, const Tensor& keys,
                 c10::string_view pooling, c10::string_view combine, const OptTensor& psw) {
  head.insert(head.end(), {values, offsets, po, base, size, keys, psw.value_or(Tensor())});
  ctx->save_for_backward(head);
  ctx->saved_data["pooling"] = std::string(pooling);
  ctx->saved_data["combine"] = std::string(combine);
}

// Unpacks what save_layout stored after `head_count` leading tensors (returned in head).
SavedLayout load_layout(AutogradContext* ctx, size_t head_count, std::vector<Tensor>& head) {
  const variable_list saved = ctx->get_saved_variables();
  head.assign(saved.begin(), saved.begin() + head_count);
  const auto* t = saved.data() + head_count;
  SavedLayout l{t[0], t[1], t[2], t[3], t[4], t[5], ctx->saved_data["pooling"].toStringRef(),
                ctx->saved_data["combine"].toStringRef(), std::nullopt};
  if (t[6].defined()) l.psw = t[6];
  return l;
}

struct MuxEmbeddingBagFunction : public torch::autograd::Function<MuxEmbeddingBagFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& weight, const Tensor& values, const Tensor& offsets,
                        const Tensor& po, const Tensor& base, const Tensor& size, const Tensor& keys,
                        c10::string_view pooling, c10::string_view combine, const OptTensor& psw, bool sparse) {
    static const auto op = embkern_op<Tensor(const Tensor&, EMBKERN_EMB_LAYOUT_TYPES, bool)>("embkern::mux_embedding_bag");
    Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(weight, values, offsets, po, base, size, keys, pooling, combine, psw, sparse);
    }
    save_layout(ctx, {weight}, values, offsets, po, base, size, keys, pooling, combine, psw);
    ctx->saved_data["sparse"] = sparse;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto dense_op =
        embkern_op<Tensor(const Tensor&, const Tensor&, EMBKERN_EMB_LAYOUT_TYPES)>("embkern::mux_embedding_bag_backward");
    static const auto sparse_op = embkern_op<std::tuple<Tensor, Tensor>(const Tensor&, const Tensor&, EMBKERN_EMB_LAYOUT_TYPES)>(
        "embkern::mux_embedding_bag_backward_sparse");
    static const auto psw_op = embkern_op<Tensor(const Tensor&, const Tensor&, EMBKERN_EMB_LAYOUT_TYPES)>(
        "embkern::mux_embedding_bag_psw_backward");
    std::vector<Tensor> head;
    const SavedLayout l = load_layout(ctx, 1, head);
    const Tensor& weight = head[0];
    const Tensor grad = grads[0].contiguous();
    Tensor g_weight, g_psw;
    if (ctx->needs_input_grad(0)) {
      if (ctx->saved_data["sparse"].toBool()) {
        auto [rows, vals] =
            sparse_op.call(grad, weight, l.values, l.offsets, l.po, l.base, l.size, l.keys, l.pooling, l.combine, l.psw);
        // Sorted unique rows: coalesced by construction.
        g_weight = at::_sparse_coo_tensor_unsafe(rows.unsqueeze(0), vals, weight.sizes(), vals.options(), true);
      } else {
        g_weight = dense_op.call(grad, weight, l.values, l.offsets, l.po, l.base, l.size, l.keys, l.pooling, l.combine, l.psw);
      }
    }
    // Edges exist for tensor arguments only: weight and the six layout tensors, then psw when given.
    if (l.psw && ctx->needs_input_grad(7))
      g_psw = psw_op.call(grad, weight, l.values, l.offsets, l.po, l.base, l.size, l.keys, l.pooling, l.combine, l.psw)
                  .to(l.psw->scalar_type());
    variable_list out(11);
    out[0] = g_weight;
    out[9] = g_psw;
    return out;
  }
};

// The forward whose backward applies the optimizer in place on the saved weight (and momentum) and
// returns no gradient.
struct MuxFusedFunction : public torch::autograd::Function<MuxFusedFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& weight, const Tensor& momentum, const Tensor& values,
                        const Tensor& offsets, const Tensor& po, const Tensor& base, const Tensor& size,
                        const Tensor& keys, c10::string_view pooling, c10::string_view combine, const OptTensor& psw,
                        c10::string_view optimizer, double lr, double eps) {
    static const auto op = embkern_op<Tensor(const Tensor&, const Tensor&, EMBKERN_EMB_LAYOUT_TYPES, c10::string_view,
                                             double, double)>("embkern::mux_embedding_bag_fused");
    Tensor out;
    {
      at::AutoDispatchBelowADInplaceOrView guard;
      out = op.call(weight, momentum, values, offsets, po, base, size, keys, pooling, combine, psw, optimizer, lr, eps);
    }
    save_layout(ctx, {weight, momentum}, values, offsets, po, base, size, keys, pooling, combine, psw);
    ctx->saved_data["optimizer"] = std::string(optimizer);
    ctx->saved_data["lr"] = lr;
    ctx->saved_data["eps"] = eps;
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto sgd_op =
        embkern_op<void(const Tensor&, const Tensor&, EMBKERN_EMB_LAYOUT_TYPES, double)>("embkern::mux_embedding_bag_sgd_");
    static const auto adagrad_op =
        embkern_op<void(const Tensor&, const Tensor&, const Tensor&, EMBKERN_EMB_LAYOUT_TYPES, double, double)>(
            "embkern::mux_embedding_bag_rowwise_adagrad_");
    std::vector<Tensor> head;
    const SavedLayout l = load_layout(ctx, 2, head);
    const Tensor grad = grads[0].contiguous();
    const double lr = ctx->saved_data["lr"].toDouble();
    if (ctx->saved_data["optimizer"].toStringRef() == "sgd")
      sgd_op.call(head[0], grad, l.values, l.offsets, l.po, l.base, l.size, l.keys, l.pooling, l.combine, l.psw, lr);
    else
      adagrad_op.call(head[0], head[1], grad, l.values, l.offsets, l.po, l.base, l.size, l.keys, l.pooling, l.combine,
                      l.psw, lr, ctx->saved_data["eps"].toDouble());
    return variable_list(14);
  }
};

Tensor mux_embedding_bag_autograd(const Tensor& weight, const Tensor& values, const Tensor& offsets, const Tensor& po,
                                  const Tensor& base, const Tensor& size, const Tensor& keys, c10::string_view pooling,
                                  c10::string_view combine, const OptTensor& psw, bool sparse) {
  return MuxEmbeddingBagFunction::apply(weight, values, offsets, po, base, size, keys, pooling, combine, psw, sparse);
}

Tensor mux_embedding_bag_fused_autograd(const Tensor& weight, const Tensor& momentum, const Tensor& values,
                                        const Tensor& offsets, const Tensor& po, const Tensor& base, const Tensor& size,
                                        const Tensor& keys, c10::string_view pooling, c10::string_view combine,
                                        const OptTensor& psw, c10::string_view optimizer, double lr, double eps) {
  // A backward will follow: the CPU forward may keep its pair keys for it (PairKeyMemo).
  struct WantKeys {
    bool saved = t_want_pair_keys;
    explicit WantKeys(bool want) { t_want_pair_keys = want; }
    ~WantKeys() { t_want_pair_keys = saved; }
  } want_keys(at::GradMode::is_enabled() && weight.requires_grad());
  return MuxFusedFunction::apply(weight, momentum, values, offsets, po, base, size, keys, pooling, combine, psw,
                                 optimizer, lr, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(embkern, Autograd, m) {
  m.impl("mux_embedding_bag", &mux_embedding_bag_autograd);
  m.impl("mux_embedding_bag_fused", &mux_embedding_bag_fused_autograd);
}

}  // namespace embkern::emb
