// Argument checks for the op layer. Every message names the op, the argument, what was expected
// and what was given; the macro picks the Python exception class (ValueError, TypeError, ...).
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cstdint>
#include <limits>
#include <string>

namespace embkern {

// torch's Python spelling ("torch.uint8"), which is what users wrote.
inline std::string dtype_name(at::ScalarType t) {
  switch (t) {
    case at::kByte: return "torch.uint8";
    case at::kChar: return "torch.int8";
    case at::kShort: return "torch.int16";
    case at::kInt: return "torch.int32";
    case at::kLong: return "torch.int64";
    case at::kHalf: return "torch.float16";
    case at::kBFloat16: return "torch.bfloat16";
    case at::kFloat: return "torch.float32";
    case at::kDouble: return "torch.float64";
    case at::kBool: return "torch.bool";
    default: return std::string("torch.") + c10::toString(t);
  }
}

inline void check_dtype(const at::Tensor& t, const char* op, const char* name, at::ScalarType want) {
  TORCH_CHECK_TYPE(t.scalar_type() == want, op, ": ", name, " must have dtype ", dtype_name(want), ", got ",
                   dtype_name(t.scalar_type()));
}

inline void check_rank(const at::Tensor& t, const char* op, const char* name, int64_t rank) {
  TORCH_CHECK_VALUE(t.dim() == rank, op, ": ", name, " must be a ", rank, "-D tensor, got ", t.dim(),
                    "-D with shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const char* a_name, const at::Tensor& b, const char* b_name,
                              const char* op) {
  TORCH_CHECK_VALUE(a.device() == b.device(), op, ": ", a_name, " and ", b_name,
                    " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_device(const at::Tensor& t, const char* op, const char* name, c10::DeviceType want) {
  TORCH_CHECK_VALUE(t.device().type() == want, op, ": ", name, " must be on ", c10::DeviceTypeName(want),
                    ", got ", t.device());
}

// a * b for sizes, raising instead of wrapping.
inline int64_t checked_mul(int64_t a, int64_t b, const char* op, const char* what) {
  int64_t r;
  TORCH_CHECK_VALUE(!__builtin_mul_overflow(a, b, &r), op, ": ", what, " overflows int64 (", a, " x ", b, ")");
  return r;
}

}  // namespace embkern
