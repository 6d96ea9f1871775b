// Every torch / standard header the CPU kernels use, included by the ISA variants
// (kernels_avx2.cpp, kernels_avx512.cpp) *before* their target pragma, so that only the
// at::vec code (in its own inline namespace at::vec::<ISA>, like ATen's own kernels) and
// this project's kernels (namespace tdsa_fast::cpu::<ISA>) are compiled for that ISA.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/NumericUtils.h>
#include <ATen/OpMathType.h>
#include <ATen/native/Math.h>
#include <ATen/native/cpu/zmath.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <c10/util/Load.h>
#include <c10/util/MathConstants.h>
#include <c10/util/TypeCast.h>
#include <c10/util/complex.h>
#include <c10/util/copysign.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <ostream>
#include <type_traits>
#include <vector>
