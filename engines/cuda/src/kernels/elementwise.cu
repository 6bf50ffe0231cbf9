// Pointwise kernels: casts, activations, bias, scheduler step, embeddings, latent (un)packing, image output.
#include "../common.h"
#include "device_util.cuh"
#include "dispatch.cuh"
#include "kernels.h"

namespace fq {
namespace {


template <typename TI, typename TO>
__global__ void cast_kernel(const TI* in, TO* out, int64_t n) {
  GRID_LOOP(i, n) out[i] = fromf<TO>(tof(in[i]));
}

template <typename T>
__global__ void act_kernel(T* x, int rows, int cols, int ld, Act a) {
  int64_t n = int64_t(rows) * cols;
  GRID_LOOP(i, n) {
    int64_t r = i / cols, c = i % cols;
    T* p = x + r * ld + c;
    float v = tof(*p);
    if (a == Act::Silu) v = silu(v);
    else if (a == Act::GeluTanh) v = gelu_tanh(v);
    else v = v / (1.f + expf(-1.702f * v));  // quick_gelu: x * sigmoid(1.702 x)
    *p = fromf<T>(v);
  }
}

template <typename T>
__global__ void gated_gelu_kernel(const T* h, T* out, int rows, int F) {
  int64_t n = int64_t(rows) * F;
  GRID_LOOP(i, n) {
    int64_t r = i / F, f = i % F;
    out[i] = fromf<T>(gelu_tanh(tof(h[r * 2 * F + f])) * tof(h[r * 2 * F + F + f]));
  }
}

template <typename T>
__global__ void bias_kernel(T* y, const float* b, int rows, int cols, int ld) {
  int64_t n = int64_t(rows) * cols;
  GRID_LOOP(i, n) {
    int64_t r = i / cols, c = i % cols;
    y[r * ld + c] = fromf<T>(tof(y[r * ld + c]) + b[c]);
  }
}

template <typename T>
__global__ void bias_residual_kernel(T* y, const float* b, const T* r, int64_t n, int cols) {
  GRID_LOOP(i, n) {
    float v = tof(y[i]) + b[i % cols];
    if (r) v += tof(r[i]);
    y[i] = fromf<T>(v);
  }
}

__global__ void bias_residual_vec_kernel(__nv_bfloat16* y, const float* b, const __nv_bfloat16* r, uint32_t nvec,
                                         uint32_t vpr /* vectors per row */) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < nvec; i += gridDim.x * blockDim.x) {
    const uint32_t c0 = (i % vpr) * 8;
    uint4 yv = reinterpret_cast<uint4*>(y)[i], rv = r ? reinterpret_cast<const uint4*>(r)[i] : make_uint4(0, 0, 0, 0);
    __nv_bfloat16* ye = reinterpret_cast<__nv_bfloat16*>(&yv);
    const __nv_bfloat16* re = reinterpret_cast<const __nv_bfloat16*>(&rv);
#pragma unroll
    for (int e = 0; e < 8; e++) ye[e] = __float2bfloat16(tof(ye[e]) + b[c0 + e] + (r ? tof(re[e]) : 0.f));
    reinterpret_cast<uint4*>(y)[i] = yv;
  }
}

__global__ void sinus_kernel(const float* v, int B, float mult, int half, float* out) {
  int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= B * half) return;
  int b = i / half, k = i % half;
  // Same float32 steps as diffusers: exponent = -ln(10000) * k / half, freq = exp(exponent), arg = t * freq.
  float expo = -9.210340371976184f * float(k) / float(half);
  float a = (v[b] * mult) * expf(expo);
  out[b * 2 * half + k] = cosf(a);
  out[b * 2 * half + half + k] = sinf(a);
}

__global__ void euler_kernel(float* lat, const float* vel, int64_t n, float dt) {
  GRID_LOOP(i, n) lat[i] += dt * vel[i];
}

__global__ void embed_kernel(const float* table, const int* ids, const float* pos, int n, int seqlen, int dim,
                             float* out) {
  int64_t total = int64_t(n) * dim;
  GRID_LOOP(i, total) {
    int64_t r = i / dim, c = i % dim;
    float v = table[int64_t(ids[r]) * dim + c];
    if (pos) v += pos[(r % seqlen) * dim + c];
    out[i] = v;
  }
}

template <typename T>
__global__ void latents_to_vae_kernel(const float* packed, int B, int h, int w, float scaling, float shift,
                                      T* z) {
  int64_t n = int64_t(B) * h * w * 16;
  GRID_LOOP(i, n) {
    // z is NHWC [B, h, w, 16]; packed token (r, c) = (y/2, x/2), feature ch*4 + (y%2)*2 + x%2.
    int ch = int(i % 16);
    int64_t pix = i / 16;
    int x = int(pix % w), y = int((pix / w) % h), b = int(pix / (int64_t(w) * h));
    int64_t tok = int64_t(y / 2) * (w / 2) + x / 2;
    float v = packed[(int64_t(b) * (h / 2) * (w / 2) + tok) * 64 + ch * 4 + (y % 2) * 2 + (x % 2)];
    z[i] = fromf<T>(v / scaling + shift);
  }
}

template <typename T>
__global__ void image_out_kernel(const T* x, int cs, int B, int H, int W, float* chw, uint8_t* rgb) {
  int64_t n = int64_t(B) * H * W * 3;
  GRID_LOOP(i, n) {
    int c = int(i % 3);
    int64_t pix = i / 3;
    int64_t b = pix / (int64_t(H) * W), hw = pix % (int64_t(H) * W);
    float v = fminf(fmaxf(tof(x[pix * cs + c]) * 0.5f + 0.5f, 0.f), 1.f);
    if (chw) chw[(b * 3 + c) * H * W + hw] = v;
    if (rgb) rgb[i] = uint8_t(rintf(v * 255.f));
  }
}

template <typename T>
__global__ void image_in_kernel(const float* chw, int B, int H, int W, int cs, T* x) {
  int64_t n = int64_t(B) * H * W * cs;
  GRID_LOOP(i, n) {
    int c = int(i % cs);
    int64_t pix = i / cs;
    int64_t b = pix / (int64_t(H) * W), hw = pix % (int64_t(H) * W);
    x[i] = fromf<T>(c < 3 ? chw[(b * 3 + c) * H * W + hw] : 0.f);
  }
}

template <typename T>
__global__ void moments_kernel(const T* m, int B, int hw, int C, float* mean, float* logvar) {
  int64_t n = int64_t(B) * hw * C;
  GRID_LOOP(i, n) {
    // i indexes NCHW [B, C, hw]; m is NHWC [B, hw, 2C].
    int64_t b = i / (int64_t(C) * hw), p = i % hw;
    int c = int((i / hw) % C);
    const T* px = m + (b * hw + p) * 2 * C;
    mean[i] = tof(px[c]);
    logvar[i] = fminf(fmaxf(tof(px[C + c]), -30.f), 20.f);
  }
}

__global__ void sample_packed_kernel(const float* mean, const float* logvar, const float* eps, int B, int h, int w,
                                     float scaling, float shift, float* packed) {
  int64_t n = int64_t(B) * h * w * 16;
  GRID_LOOP(i, n) {
    // i indexes NCHW [B, 16, h, w]; token (y/2, x/2), feature c*4 + (y%2)*2 + x%2. Every operation rounded to fp32
    // in torch's order (no contraction): ((mean + exp(0.5 logvar) * eps) - shift) * scaling.
    int x = int(i % w), y = int((i / w) % h), c = int((i / (int64_t(w) * h)) % 16);
    int64_t b = i / (int64_t(16) * h * w);
    float z = mean[i];
    if (eps) z = __fadd_rn(z, __fmul_rn(expf(__fmul_rn(0.5f, logvar[i])), eps[i]));
    z = __fmul_rn(__fsub_rn(z, shift), scaling);
    int64_t tok = int64_t(y / 2) * (w / 2) + x / 2;
    packed[(b * (h / 2) * (w / 2) + tok) * 64 + c * 4 + (y % 2) * 2 + (x % 2)] = z;
  }
}

}  // namespace

void cast(const void* in, DType it, void* out, DType ot, int64_t n, cudaStream_t st) {
  FQ_DISPATCH(it, TI, FQ_DISPATCH(ot, TO, cast_kernel<TI, TO><<<grid_for(n), kThreads, 0, st>>>(
                                              static_cast<const TI*>(in), static_cast<TO*>(out), n)));
  LAUNCH_CHECK();
}

void activation(void* x, DType dt, int rows, int cols, int ld, Act a, cudaStream_t st) {
  FQ_DISPATCH(dt, T,
              act_kernel<T><<<grid_for(int64_t(rows) * cols), kThreads, 0, st>>>(static_cast<T*>(x), rows, cols,
                                                                                 ld, a));
  LAUNCH_CHECK();
}

void gated_gelu(const void* h, void* out, DType dt, int rows, int F, cudaStream_t st) {
  FQ_DISPATCH(dt, T,
              gated_gelu_kernel<T><<<grid_for(int64_t(rows) * F), kThreads, 0, st>>>(
                  static_cast<const T*>(h), static_cast<T*>(out), rows, F));
  LAUNCH_CHECK();
}

void add_bias(void* y, DType dt, const float* bias, int rows, int cols, int ld, cudaStream_t st) {
  FQ_DISPATCH(dt, T,
              bias_kernel<T><<<grid_for(int64_t(rows) * cols), kThreads, 0, st>>>(static_cast<T*>(y), bias, rows,
                                                                                  cols, ld));
  LAUNCH_CHECK();
}

void add_bias_residual(void* y, DType dt, const float* bias, const void* resid, int64_t rows, int cols,
                       cudaStream_t st) {
  const int64_t n = rows * cols;
  // 16-byte vectors with 32-bit indexing when they fit (every VAE shape), else one element a thread.
  if (dt == DType::BF16 && cols % 8 == 0 && n / 8 < (int64_t(1) << 31)) {
    bias_residual_vec_kernel<<<grid_for(n / 8), kThreads, 0, st>>>(
        static_cast<__nv_bfloat16*>(y), bias, static_cast<const __nv_bfloat16*>(resid), uint32_t(n / 8),
        uint32_t(cols / 8));
  } else {
    FQ_DISPATCH(dt, T,
                bias_residual_kernel<T><<<grid_for(n), kThreads, 0, st>>>(static_cast<T*>(y), bias,
                                                                          static_cast<const T*>(resid), n, cols));
  }
  LAUNCH_CHECK();
}

void timestep_sinus(const float* v, int B, float mult, int dim, float* out, cudaStream_t st) {
  int half = dim / 2;
  sinus_kernel<<<ceil_div(B * half, 128), 128, 0, st>>>(v, B, mult, half, out);
  LAUNCH_CHECK();
}

void euler_step(float* lat, const float* vel, int64_t n, float dt, cudaStream_t st) {
  euler_kernel<<<grid_for(n), kThreads, 0, st>>>(lat, vel, n, dt);
  LAUNCH_CHECK();
}

void embed_rows(const float* table, const int* ids, const float* pos, int n, int seqlen, int dim, float* out,
                cudaStream_t st) {
  embed_kernel<<<grid_for(int64_t(n) * dim), kThreads, 0, st>>>(table, ids, pos, n, seqlen, dim, out);
  LAUNCH_CHECK();
}

void latents_to_vae(const float* packed, int B, int h, int w, float scaling, float shift, void* z, DType dt,
                    cudaStream_t st) {
  FQ_DISPATCH(dt, T,
              latents_to_vae_kernel<T><<<grid_for(int64_t(B) * h * w * 16), kThreads, 0, st>>>(
                  packed, B, h, w, scaling, shift, static_cast<T*>(z)));
  LAUNCH_CHECK();
}

void image_out(const void* x, DType dt, int cs, int B, int H, int W, float* chw, uint8_t* rgb, cudaStream_t st) {
  FQ_DISPATCH(dt, T,
              image_out_kernel<T><<<grid_for(int64_t(B) * H * W * 3), kThreads, 0, st>>>(static_cast<const T*>(x),
                                                                                         cs, B, H, W, chw, rgb));
  LAUNCH_CHECK();
}

}  // namespace fq

namespace fq {

void image_in(const float* chw, int B, int H, int W, int cs, void* x, DType dt, cudaStream_t st) {
  FQ_DISPATCH(dt, T,
              image_in_kernel<T><<<grid_for(int64_t(B) * H * W * cs), kThreads, 0, st>>>(chw, B, H, W, cs,
                                                                                         static_cast<T*>(x)));
  LAUNCH_CHECK();
}

void vae_moments(const void* m, DType dt, int B, int h, int w, int C, float* mean, float* logvar, cudaStream_t st) {
  FQ_DISPATCH(dt, T,
              moments_kernel<T><<<grid_for(int64_t(B) * h * w * C), kThreads, 0, st>>>(static_cast<const T*>(m), B,
                                                                                        h * w, C, mean, logvar));
  LAUNCH_CHECK();
}

void sample_latents_packed(const float* mean, const float* logvar, const float* eps, int B, int h, int w,
                           float scaling, float shift, float* packed, cudaStream_t st) {
  sample_packed_kernel<<<grid_for(int64_t(B) * h * w * 16), kThreads, 0, st>>>(mean, logvar, eps, B, h, w, scaling,
                                                                               shift, packed);
  LAUNCH_CHECK();
}

}  // namespace fq
