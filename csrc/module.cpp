// embkern._C: loading it registers every op (static TORCH_LIBRARY registrations in the op files);
// the Python-visible functions here are build and runtime information and the ISA override.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "common/cpu_features.h"

namespace py = pybind11;

#ifndef EMBKERN_VERSION
#define EMBKERN_VERSION "0.0.0"
#endif
#ifndef EMBKERN_TORCH_VERSION
#define EMBKERN_TORCH_VERSION "unknown"
#endif
#ifndef EMBKERN_CUDA_ARCHS
#define EMBKERN_CUDA_ARCHS ""
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "embkern compiled kernels";
  m.def("build_info", [] {
    py::dict d;
    d["version"] = EMBKERN_VERSION;
    d["torch_version"] = EMBKERN_TORCH_VERSION;
    d["compiled_isas"] = embkern::compiled_isa_names();
    d["active_isa"] = embkern::isa_name(embkern::active_isa());
    d["best_isa"] = embkern::isa_name(embkern::best_isa());
    d["cpu_features"] = embkern::feature_names(embkern::cpu_features_detected());
#ifdef EMBKERN_WITH_CUDA
    d["cuda"] = true;
#else
    d["cuda"] = false;
#endif
    std::vector<std::string> archs;
    std::string s = EMBKERN_CUDA_ARCHS;
    for (size_t b = 0; b < s.size();) {
      size_t e = s.find(';', b);
      if (e == std::string::npos) e = s.size();
      if (e > b) archs.push_back(s.substr(b, e - b));
      b = e + 1;
    }
    d["cuda_archs"] = archs;
    return d;
  });
  m.def(
      "set_isa",
      [](const std::string& isa, const std::vector<std::string>& disable) {
        try {
          embkern::set_active_isa(isa, disable);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
      },
      py::arg("isa"), py::arg("disable") = std::vector<std::string>{});
  m.def("get_isa", [] { return std::string(embkern::isa_name(embkern::active_isa())); });
  m.def("active_features", [] { return embkern::feature_names(embkern::cpu_features_active()); });
}
