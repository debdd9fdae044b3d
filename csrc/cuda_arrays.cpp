// The compiled CUDA entry points on arrays (cuda_arrays.h): __cuda_array_interface__ in, the
// checks of each argument, then the operations of cuda_ops.h on raw pointers.
#include "cuda_arrays.h"

#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include "cuda_ops.h"
#include "device_guard.h"
#include "plan.h"

namespace py = pybind11;

namespace identirep {
namespace arrays {
namespace {

// A device array as its __cuda_array_interface__ describes it (versions 2 and 3).
struct Array {
  std::string name;
  bool present = false;  // false: the argument was None (optional ones only)
  uintptr_t ptr = 0;
  std::vector<int64_t> shape, strides;  // strides in elements
  std::string dtype;  // float16 bfloat16 float32 float64 int64 uint8 ..., or the typestr
  int64_t itemsize = 0;
  bool readonly = false;

  int64_t ndim() const { return static_cast<int64_t>(shape.size()); }
  // (Parse checks that the extents are >= 0 and, unless one is 0, that this product fits in
  // int64.)
  int64_t size() const {
    for (int64_t d : shape)
      if (d == 0) return 0;  // before any product: the other extents may be huge
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
  int64_t Rows() const { return shape[0]; }
  int64_t Cols() const { return shape[1]; }
  // (8, 1000) float64
  std::string Describe() const {
    std::string s = "(";
    for (size_t i = 0; i < shape.size(); ++i)
      s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + (shape.size() == 1 ? ",) " : ") ") + dtype;
  }
};

// A typestr as messages show it: at most 32 characters (one may be any length).
std::string Clip(const std::string& typestr) {
  return typestr.size() <= 32 ? typestr : typestr.substr(0, 29) + "...";
}

// numpy's typestr (byte order, kind, size) -> the dtype these operations know (bfloat16: its
// bits), or the typestr itself (clipped); *sized: whether it ends in a size (digits after its
// byte order and kind; big-endian ones count as having none).
std::string DtypeOf(const std::string& typestr, bool* sized) {
  *sized = false;
  if (typestr.size() < 3 || typestr[0] == '>') return Clip(typestr);
  const std::string k = typestr.substr(1);
  for (char ch : k.substr(1))
    if (ch < '0' || ch > '9') return Clip(typestr);
  *sized = true;
  if (k == "f2") return "float16";
  if (k == "f4") return "float32";
  if (k == "f8") return "float64";
  if (k == "u2" || k == "i2") return "bfloat16";
  if (k == "i8") return "int64";
  if (k == "u1") return "uint8";
  return Clip(typestr);
}

// The checks of one entry point: its name starts every message.
class Checks {
 public:
  explicit Checks(std::string fn) : fn_(std::move(fn)) {}
  const std::string& fn() const { return fn_; }

  [[noreturn]] void Fail(const std::string& why) const {
    throw std::invalid_argument(fn_ + ": " + why);
  }
  void Require(bool ok, const std::string& why) const {
    if (!ok) Fail(why);
  }

  // The array of argument `name`, or (optional) an absent one for None.
  Array Parse(py::handle obj, const char* name, bool optional = false) const {
    Array a;
    a.name = name;
    if (obj.is_none()) {
      Require(optional, std::string(name) + " is required, got None");
      return a;
    }
    py::object cai;
    try {
      cai = obj.attr("__cuda_array_interface__");
    } catch (py::error_already_set& e) {
      Fail(std::string(name) + " must be a GPU array with __cuda_array_interface__ (a CuPy "
           "array, a torch CUDA tensor; bfloat16 as its int16 or uint16 bits), got " +
           std::string(py::str(py::type::handle_of(obj).attr("__name__"))) + " (" +
           e.what() + ")");
    }
    std::string typestr;
    std::vector<int64_t> bytes;  // its strides as given, in bytes
    bool strided = false;        // false: none given (C-contiguous)
    try {
      const py::dict d = cai.cast<py::dict>();
      for (py::handle x : d["shape"].cast<py::tuple>()) a.shape.push_back(x.cast<int64_t>());
      typestr = d["typestr"].cast<std::string>();
      const py::tuple data = d["data"].cast<py::tuple>();
      a.ptr = data[0].cast<uintptr_t>();
      a.readonly = data[1].cast<bool>();
      if (d.contains("mask") && !d["mask"].is_none())
        Fail(std::string(name) + " is a masked array");
      strided = d.contains("strides") && !d["strides"].is_none();
      if (strided)
        for (py::handle x : d["strides"].cast<py::tuple>()) bytes.push_back(x.cast<int64_t>());
    } catch (py::cast_error& e) {
      Fail(std::string(name) + ": its __cuda_array_interface__ is malformed (" + e.what() + ")");
    } catch (py::error_already_set& e) {  // a key missing
      Fail(std::string(name) + ": its __cuda_array_interface__ is malformed (" + e.what() + ")");
    }
    // The item size first (1 to 16 bytes), then the extents (>= 0): every size and stride
    // below is computed from them, each product checked before it is formed (`a > max / b`),
    // so that none overflows.
    bool sized = false;
    a.dtype = DtypeOf(typestr, &sized);
    Require(sized, std::string(name) + " has dtype " + a.dtype +
                       ", not one of fixed-size numbers");
    try {
      a.itemsize = std::stoll(typestr.substr(2));  // digits only (DtypeOf)
    } catch (std::exception&) {  // out of range
      Fail(std::string(name) + " has typestr '" + Clip(typestr) +
           "', whose item size does not fit in int64 (it must be 1 to 16 bytes)");
    }
    Require(a.itemsize >= 1 && a.itemsize <= 16,
            std::string(name) + " has typestr '" + Clip(typestr) + "', an item size of " +
                std::to_string(a.itemsize) + " bytes (it must be 1 to 16 bytes)");
    constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
    bool empty = false;
    for (int64_t e : a.shape) {
      Require(e >= 0, std::string(name) + " has a negative extent (" + std::to_string(e) +
                          ") in its shape " + a.Describe());
      empty = empty || e == 0;
    }
    // Unless it is empty, its bytes fit in int64 (then so does each of its C-order strides,
    // none more than its bytes).
    int64_t total = a.itemsize;
    for (size_t i = 0; !empty && i < a.shape.size(); ++i) {
      Require(total <= kMax / a.shape[i], std::string(name) + " has more bytes than int64 holds");
      total *= a.shape[i];
    }
    if (strided) {
      Require(bytes.size() == a.shape.size(),
              std::string(name) + ": its __cuda_array_interface__ is malformed");
    } else {  // C-contiguous: an empty array's strides may still not fit
      bytes.assign(a.shape.size(), a.itemsize);
      for (size_t i = a.shape.size(); i-- > 1;) {
        Require(a.shape[i] == 0 || bytes[i] <= kMax / a.shape[i],
                std::string(name) + ": a C-order stride of its shape " + a.Describe() +
                    " does not fit in int64");
        bytes[i - 1] = bytes[i] * a.shape[i];
      }
    }
    for (int64_t b : bytes) {
      Require(b % a.itemsize == 0, std::string(name) + " has a stride of " + std::to_string(b) +
                                       " bytes, not a multiple of its " +
                                       std::to_string(a.itemsize) + "-byte elements");
      a.strides.push_back(b / a.itemsize);
    }
    a.present = true;
    // Unless it is empty, the bytes its strides span fit in int64: the operations index it
    // with int64 offsets.
    int64_t span = 0;  // from the first element to the farthest
    for (size_t i = 0; !empty && i < a.shape.size(); ++i) {
      const int64_t e = a.shape[i], st = a.strides[i];
      if (e == 1) continue;
      const int64_t step = st < 0 ? (st == std::numeric_limits<int64_t>::min() ? kMax : -st) : st;
      Require(step <= kMax / a.itemsize / (e - 1) &&
                  step * a.itemsize * (e - 1) <= kMax - span,
              std::string(name) + "'s strides span more bytes than int64 holds");
      span += step * a.itemsize * (e - 1);
    }
    Require(a.ptr != 0 || a.size() == 0, std::string(name) + " has a null data pointer");
    Require(a.ptr % static_cast<uintptr_t>(a.itemsize) == 0,
            std::string(name) + "'s data is not aligned to its " + std::to_string(a.itemsize) +
                "-byte elements");
    return a;
  }

  // a is (rows, cols) of dtype, its rows contiguous (unit column stride); -1: any extent.
  void Matrix(const Array& a, const std::string& dtype, int64_t rows, int64_t cols) const {
    Require(a.ndim() == 2 && a.dtype == dtype && (rows < 0 || a.Rows() == rows) &&
                (cols < 0 || a.Cols() == cols),
            a.name + " must be a " + Shape(rows, cols) + " " + dtype + " array, got " +
                a.Describe());
    Require(a.Cols() <= 1 || a.strides[1] == 1,
            a.name + " needs contiguous rows (its column stride is " +
                std::to_string(a.strides[1]) + " elements)");
    Require(a.Rows() <= 1 || a.strides[0] >= a.Cols() || a.strides[0] <= -a.Cols(),
            "the rows of " + a.name + " overlap (its row stride is " +
                std::to_string(a.strides[0]) + " elements for " + std::to_string(a.Cols()) +
                " columns)");
  }
  // a is C-contiguous (rows, cols) of dtype.
  void Contiguous(const Array& a, const std::string& dtype, int64_t rows, int64_t cols) const {
    Matrix(a, dtype, rows, cols);
    Require(a.Rows() <= 1 || a.strides[0] == a.Cols(),
            a.name + " must be C-contiguous (its row stride is " + std::to_string(a.strides[0]) +
                " elements for " + std::to_string(a.Cols()) + " columns)");
  }
  // a is a contiguous 1-d array of dtype with n elements (at_least: n or more).
  void Vector(const Array& a, const std::string& dtype, int64_t n, bool at_least = false) const {
    Require(a.ndim() == 1 && a.dtype == dtype && (at_least ? a.shape[0] >= n : a.shape[0] == n),
            a.name + " must be a 1-d " + dtype + " array of " +
                (at_least ? "at least " : "") + std::to_string(n) + " elements, got " +
                a.Describe());
    Require(a.shape[0] <= 1 || a.strides[0] == 1, a.name + " must be contiguous");
  }
  void Writable(const Array& a) const { Require(!a.readonly, a.name + " is read-only"); }

  // The device all these (present, non-empty) arrays live on: each pointer's memory type and
  // device (cudaPointerGetAttributes); -1 when none holds data.
  int Device(const std::vector<const Array*>& arrays) const {
    int device = -1;
    const Array* first = nullptr;
    for (const Array* a : arrays) {
      if (!a->present || a->size() == 0) continue;
      cudaPointerAttributes attr{};
      const cudaError_t e = cudaPointerGetAttributes(&attr, reinterpret_cast<void*>(a->ptr));
      if (e != cudaSuccess) {
        cudaGetLastError();  // not sticky: clear it
        throw std::runtime_error(fn_ + ": cannot tell the device of " + a->name +
                                 " (cudaPointerGetAttributes: " + cudaGetErrorString(e) + ")");
      }
      Require(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged,
              a->name + " is not in GPU memory (" +
                  (attr.type == cudaMemoryTypeHost ? "page-locked host memory"
                                                   : "host memory") +
                  "): move it to the GPU");
      if (first == nullptr) {
        device = attr.device;
        first = a;
      }
      Require(attr.device == device, a->name + " is on GPU " + std::to_string(attr.device) +
                                          " but " + first->name + " on GPU " +
                                          std::to_string(device) +
                                          ": all arrays must be on one GPU");
    }
    return device;
  }

 private:
  static std::string Shape(int64_t rows, int64_t cols) {
    const auto e = [](int64_t x, const char* any) { return x < 0 ? any : std::to_string(x); };
    return "(" + e(rows, "rows") + ", " + e(cols, "cols") + ")";
  }
  std::string fn_;
};

// Row stride of a 2-d array in elements (its own for one row: any value serves).
int64_t Ld(const Array& a) { return a.strides[0]; }

bool IsFloat(const std::string& dtype) { return dtype == "float32" || dtype == "float64"; }

#ifdef IDENTIREP_WITH_CUBLAS
// A pass operand: 2-d, of a float kind the pass takes.
CudaOperand Operand(const Checks& c, const Array& a) {
  c.Require(a.ndim() == 2, a.name + " must be a 2-d array, got " + a.Describe());
  c.Require(a.dtype == "float16" || a.dtype == "bfloat16" || IsFloat(a.dtype),
            a.name + " has dtype " + a.dtype + "; the pass takes float16, bfloat16 (as its "
            "uint16 or int16 bits), float32 or float64");
  return {a.ptr, a.Rows(), a.Cols(), a.strides[0], a.strides[1], a.dtype};
}
#endif

}  // namespace

void lse_kl_update_cuda(py::handle l1_, py::handle l2_, py::handle state_, py::handle args_,
                        int64_t col0, py::handle row_moments_, py::handle col_moments_,
                        int64_t row0, py::handle col_work_, py::handle row_work_,
                        uintptr_t stream) {
  const Checks c("lse_kl_update_cuda");
  const Array l1 = c.Parse(l1_, "l1"), l2 = c.Parse(l2_, "l2"), st = c.Parse(state_, "state"),
              ag = c.Parse(args_, "args"), rm = c.Parse(row_moments_, "row_moments", true),
              cm = c.Parse(col_moments_, "col_moments", true),
              cw = c.Parse(col_work_, "col_work", true), rw = c.Parse(row_work_, "row_work", true);
  c.Require(l1.ndim() == 2 && IsFloat(l1.dtype),
            "l1 must be a 2-d float32 or float64 array, got " + l1.Describe());
  c.Matrix(l1, l1.dtype, -1, -1);
  c.Matrix(l2, l1.dtype, l1.Rows(), l1.Cols());
  const int64_t n = l1.Rows(), v = l1.Cols();
  c.Matrix(st, "float64", 8, n);
  c.Matrix(ag, "int64", 2, n);
  // labels col0 .. col0+v-1 and inputs row0 .. row0+n-1 representable (args get col0 + j),
  // compared as `a > max - b`, without a sum that can overflow
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  c.Require(col0 >= 0 && row0 >= 0, "col0 and row0 must be >= 0, got " + std::to_string(col0) +
                                        " and " + std::to_string(row0));
  c.Require(col0 <= kMax - v && row0 <= kMax - n,
            "col0 + v and row0 + n must fit in int64, got col0 = " + std::to_string(col0) +
                ", row0 = " + std::to_string(row0) + " for an " + std::to_string(n) + " x " +
                std::to_string(v) + " tile");
  c.Writable(st);
  c.Writable(ag);
  if (rm.present) {
    c.Matrix(rm, "float64", 5, n);
    c.Writable(rm);
  }
  if (cm.present) {
    c.Matrix(cm, "float64", 5, -1);
    c.Writable(cm);
    c.Require(col0 <= cm.Cols() - v, "col_moments has " + std::to_string(cm.Cols()) +
                                         " labels, fewer than col0 + v = " +
                                         std::to_string(col0 + v));
    c.Require(cw.present, "col_moments needs col_work (lse_kl_cuda_col_work_elems(v) float64, "
                          "or the second of lse_kl_cuda_fused_work_elems(n, v) with row_work)");
  }
  // the scratch sizes only when scratch is given (they may not fit in int64 otherwise)
  if (cw.present) {
    c.Vector(cw, "float64",
             rw.present ? lse_kl_cuda_fused_work_elems(n, v).second
                        : lse_kl_cuda_col_work_elems(v),
             true);
    c.Writable(cw);
  }
  if (rw.present) {
    c.Vector(rw, "float64", lse_kl_cuda_fused_work_elems(n, v).first, true);
    c.Writable(rw);
  }
  if (n == 0 || v == 0) return;
  const int device = c.Device({&l1, &l2, &st, &ag, &rm, &cm, &cw, &rw});
  py::gil_scoped_release release;
  DeviceGuard guard(device, c.fn());
  identirep::lse_kl_update_cuda(l1.ptr, l2.ptr, n, v, Ld(l1), Ld(l2), col0, st.ptr, Ld(st),
                                ag.ptr, Ld(ag), l1.dtype, stream, rm.ptr,
                                rm.present ? Ld(rm) : 0, cm.ptr, cm.present ? Ld(cm) : 0, row0,
                                cw.ptr, rw.ptr);
}

void pivot_criteria_cuda(py::handle X1_, py::handle X2_, py::handle n1_, py::handle n2_,
                         py::handle A1_, py::handle A2_, py::handle B12_, py::handle pivots_,
                         double tol, const std::string& mode, py::handle crit_,
                         uintptr_t stream) {
  const Checks c("pivot_criteria_cuda");
  const Array X1 = c.Parse(X1_, "X1"), X2 = c.Parse(X2_, "X2"), piv = c.Parse(pivots_, "pivots"),
              crit = c.Parse(crit_, "crit");
  c.Require(X1.ndim() == 2 && IsFloat(X1.dtype),
            "X1 must be a 2-d float32 or float64 array, got " + X1.Describe());
  c.Matrix(X1, X1.dtype, -1, -1);
  c.Matrix(X2, X1.dtype, X1.Rows(), X1.Cols());
  const int64_t B = X1.Rows(), V = X1.Cols();
  std::vector<Array> vecs;
  const char* names[5] = {"n1", "n2", "A1", "A2", "B12"};
  const py::handle handles[5] = {n1_, n2_, A1_, A2_, B12_};
  for (int i = 0; i < 5; ++i) {
    vecs.push_back(c.Parse(handles[i], names[i]));
    c.Vector(vecs.back(), "float64", V);
  }
  c.Vector(piv, "int64", B);
  c.Vector(crit, "float64", B);
  c.Writable(crit);
  c.Require(mode == "max" || mode == "mean", "mode must be 'max' or 'mean', got '" + mode + "'");
  if (B == 0) return;
  const int device =
      c.Device({&X1, &X2, &vecs[0], &vecs[1], &vecs[2], &vecs[3], &vecs[4], &piv, &crit});
  py::gil_scoped_release release;
  DeviceGuard guard(device, c.fn());
  identirep::pivot_criteria_cuda(X1.ptr, X2.ptr, Ld(X1), Ld(X2), vecs[0].ptr, vecs[1].ptr,
                                 vecs[2].ptr, vecs[3].ptr, vecs[4].ptr, piv.ptr, B, V, tol, mode,
                                 crit.ptr, stream, X1.dtype);
}

#ifdef IDENTIREP_WITH_CUBLAS
void lse_kl_pass_cuda(py::handle f1_, py::handle g1_, py::handle f2_, py::handle g2_,
                      py::handle state_, py::handle args_, py::handle row_moments_,
                      py::handle col_moments_, py::handle workspace_, int64_t c_begin,
                      int64_t c_end, int64_t tile_rows, int64_t tile_cols, bool overlap,
                      bool fused, int gemm, bool wgmma, uintptr_t stream) {
  const Checks c("lse_kl_pass_cuda");
  const Array f1 = c.Parse(f1_, "f1"), g1 = c.Parse(g1_, "g1"), f2 = c.Parse(f2_, "f2"),
              g2 = c.Parse(g2_, "g2"), st = c.Parse(state_, "state"), ag = c.Parse(args_, "args"),
              rm = c.Parse(row_moments_, "row_moments"), cm = c.Parse(col_moments_, "col_moments"),
              ws = c.Parse(workspace_, "workspace");
  const CudaOperand a = Operand(c, f1), b = Operand(c, g1), d = Operand(c, f2),
                    e = Operand(c, g2);
  const int64_t n = f1.Rows(), v = g1.Rows();
  const bool f64 = a.kind == "float64" && b.kind == "float64" && d.kind == "float64" &&
                   e.kind == "float64";
  c.Contiguous(st, "float64", 8, n);
  c.Contiguous(ag, "int64", 2, n);
  c.Contiguous(rm, "float64", 5, n);
  c.Contiguous(cm, "float64", 5, v);
  c.Vector(ws, "uint8", 1, true);
  for (const Array* out : {&st, &ag, &rm, &cm, &ws}) c.Writable(*out);
  // the label range before any device is asked about the arrays (the driver checks it too)
  c.Require(0 <= c_begin && c_begin <= c_end && c_end <= v, "need 0 <= c_begin <= c_end <= V");
  // an empty label range: every check of the pass below, and no device touched
  const int device = c_begin == c_end ? 0 : c.Device({&f1, &g1, &f2, &g2, &st, &ag, &rm, &cm, &ws});
  py::gil_scoped_release release;
  identirep::lse_kl_pass_cuda(a, b, d, e, c_begin, c_end, tile_rows, tile_cols, st.ptr, ag.ptr,
                              rm.ptr, cm.ptr, ws.ptr, ws.size(), f64 ? "float64" : "float32",
                              overlap, fused, gemm, stream, device, wgmma);
}

void lse_kl_gemm_mainloop_cuda(py::handle f1_, py::handle g1_, py::handle f2_, py::handle g2_,
                               int gemm, bool wgmma, uintptr_t stream) {
  const Checks c("lse_kl_gemm_mainloop_cuda");
  const Array f1 = c.Parse(f1_, "f1"), g1 = c.Parse(g1_, "g1"), f2 = c.Parse(f2_, "f2"),
              g2 = c.Parse(g2_, "g2");
  const CudaOperand a = Operand(c, f1), b = Operand(c, g1), d = Operand(c, f2),
                    e = Operand(c, g2);
  lse_kl_gemm_operands(a, b, d, e, gemm, wgmma);  // the checks that need no device
  const int device = c.Device({&f1, &g1, &f2, &g2});
  py::gil_scoped_release release;
  identirep::lse_kl_gemm_mainloop_pass(a, b, d, e, gemm, wgmma, stream, device < 0 ? 0 : device);
}
#endif

}  // namespace arrays
}  // namespace identirep
