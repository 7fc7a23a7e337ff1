// The module methods of anm_fast._C (csrc/python_entry.cpp): the fused op's direct entry.
#pragma once

#include <Python.h>

namespace anm_fast {
PyMethodDef* python_methods();
}  // namespace anm_fast
