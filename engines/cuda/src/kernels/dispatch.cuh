#pragma once
// Runs the body with T bound to the element type of `dt`.
#define FQ_DISPATCH(dt, T, ...)              \
  do {                                       \
    if ((dt) == DType::F32) {                \
      using T = float;                       \
      __VA_ARGS__;                           \
    } else {                                 \
      using T = __nv_bfloat16;               \
      __VA_ARGS__;                           \
    }                                        \
  } while (0)
