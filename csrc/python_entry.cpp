// A direct Python entry to the fused anm_mask op, for the Python API's hot CPU path.
//
// Why: after a call that streamed the batch through the caches, every line of code on the way
// into and out of an op runs cold, and torch.ops' generic route (a Python frame, matching 11
// arguments against the schema, boxing them, unboxing the 11 results) costs tens of microseconds
// then - a sizeable part of a CPU call at CIFAR shapes. This entry unpacks the arguments itself
// and calls the op through the dispatcher's typed (unboxed) interface, so everything the
// dispatcher does still happens: device dispatch, the profiler's record, dispatch modes,
// anm_fast's CPU kernel or any other registered one. Argument errors raise the same exceptions
// as torch.ops (c10 errors translated by torch's HANDLE_TH_ERRORS).
#include "python_entry.h"

#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/core/GradMode.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

namespace anm_fast {
namespace {

using Out11 = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                         at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
using AnmMaskSig = Out11(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                         const at::Tensor&, const at::Tensor&, const at::Tensor&, double,
                         c10::ArrayRef<double>, const at::Tensor&, double, bool);

// Sets a Python TypeError and unwinds to HANDLE_TH_ERRORS, which returns it to Python.
[[noreturn]] void type_error(const char* format, const char* a, const char* b = "") {
  PyErr_Format(PyExc_TypeError, format, a, b);
  throw python_error();
}

const at::Tensor& tensor_arg(PyObject* obj, const char* name) {
  if (!THPVariable_Check(obj))
    type_error("anm_mask: %s must be a Tensor, got %s", name, Py_TYPE(obj)->tp_name);
  return THPVariable_Unpack(obj);
}

double float_arg(PyObject* obj, const char* name) {
  const double v = PyFloat_AsDouble(obj);
  if (v == -1.0 && PyErr_Occurred()) {
    PyErr_Clear();
    type_error("anm_mask: %s must be a float, got %s", name, Py_TYPE(obj)->tp_name);
  }
  return v;
}

std::vector<double> float_list_arg(PyObject* obj, const char* name) {
  if (!PyList_Check(obj) && !PyTuple_Check(obj))
    type_error("anm_mask: %s must be a list of floats, got %s", name, Py_TYPE(obj)->tp_name);
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(obj);
  PyObject** items = PySequence_Fast_ITEMS(obj);
  std::vector<double> values(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) values[i] = float_arg(items[i], name);
  return values;
}

bool bool_arg(PyObject* obj, const char* name) {
  if (!PyBool_Check(obj))
    type_error("anm_mask: %s must be a bool, got %s", name, Py_TYPE(obj)->tp_name);
  return obj == Py_True;
}

PyObject* anm_mask_entry(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs != 11)
    type_error("anm_mask takes 11 arguments (the op's schema), got %s",
               std::to_string(nargs).c_str());
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("anm_fast::anm_mask", "")
                             .typed<AnmMaskSig>();
  const at::Tensor& x = tensor_arg(args[0], "x");
  const at::Tensor& fmap = tensor_arg(args[1], "fmap");
  const at::Tensor& targets = tensor_arg(args[2], "targets");
  const at::Tensor& quality = tensor_arg(args[3], "quality");
  const at::Tensor& sample_ids = tensor_arg(args[4], "sample_ids");
  const at::Tensor& seed = tensor_arg(args[5], "seed");
  const double band = float_arg(args[6], "band");
  const std::vector<double> box_params = float_list_arg(args[7], "box_params");
  const at::Tensor& fill_value = tensor_arg(args[8], "fill_value");
  const double label_gain = float_arg(args[9], "label_gain");
  const bool check_values = bool_arg(args[10], "check_values");
  Out11 out;
  {
    // Without a gradient to track, the call skips the op's autograd kernel (registered in Python,
    // anm_fast/_ops.py), which would cost a round trip through Python on every call.
    const bool track = at::GradMode::is_enabled() && (x.requires_grad() || targets.requires_grad());
    std::optional<at::AutoDispatchBelowADInplaceOrView> below_autograd;
    if (!track) below_autograd.emplace();
    pybind11::gil_scoped_release no_gil;  // as torch's own bindings do around an op
    out = op.call(x, fmap, targets, quality, sample_ids, seed, band, box_params, fill_value,
                  label_gain, check_values);
  }
  PyObject* result = PyTuple_New(11);
  if (result == nullptr) return nullptr;
  PyTuple_SET_ITEM(result, 0, THPVariable_Wrap(std::move(std::get<0>(out))));
  PyTuple_SET_ITEM(result, 1, THPVariable_Wrap(std::move(std::get<1>(out))));
  PyTuple_SET_ITEM(result, 2, THPVariable_Wrap(std::move(std::get<2>(out))));
  PyTuple_SET_ITEM(result, 3, THPVariable_Wrap(std::move(std::get<3>(out))));
  PyTuple_SET_ITEM(result, 4, THPVariable_Wrap(std::move(std::get<4>(out))));
  PyTuple_SET_ITEM(result, 5, THPVariable_Wrap(std::move(std::get<5>(out))));
  PyTuple_SET_ITEM(result, 6, THPVariable_Wrap(std::move(std::get<6>(out))));
  PyTuple_SET_ITEM(result, 7, THPVariable_Wrap(std::move(std::get<7>(out))));
  PyTuple_SET_ITEM(result, 8, THPVariable_Wrap(std::move(std::get<8>(out))));
  PyTuple_SET_ITEM(result, 9, THPVariable_Wrap(std::move(std::get<9>(out))));
  PyTuple_SET_ITEM(result, 10, THPVariable_Wrap(std::move(std::get<10>(out))));
  return result;
  END_HANDLE_TH_ERRORS
}

PyMethodDef kMethods[] = {
    {"anm_mask", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(anm_mask_entry)),
     METH_FASTCALL,
     "anm_mask(x, fmap, targets, quality, sample_ids, seed, band, box_params, fill_value, "
     "label_gain, check_values): torch.ops.anm_fast.anm_mask through the typed dispatcher (see "
     "csrc/python_entry.cpp)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* python_methods() { return kMethods; }

}  // namespace anm_fast
