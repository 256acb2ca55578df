// SSAE fused masked modulated 3x3 convolution (the injection layer), CUDA.
//
//   y = act(conv3x3(x * s(p), W_hat) + b + w_n * xi(p))      s(p) = rmsnorm(a + strength * m(p) * d(p))
//
// exactly as `ssae/models/injection.py:masked_modconv` computes it in region noise mode (NCHW, zero padding 1,
// stride 1), with the normalised style s(p) computed on the fly: the style map is never written to memory.
//
//   d:           one Cin vector per sample; 1 / rms(p) comes in closed form from three per-sample scalars
//                mean(a^2), mean(a d), mean(d^2) that every block reduces from a and d itself.
//   xi:          xi_mode 0: no noise term; 1: explicit map `noise` ((1 or B), 1, H, W), batch stride
//                xi_batch_stride; 2: generated with Philox4x32-10 + Box-Muller exactly as `ssae/philox.py`
//                specifies, value y * W_full + x of stream xi_stream (what the runtime feeds as `xi`, see
//                runtime/editor.py).
// (y0, x0, W_full) place the computed H x W window in the full image (the runtime edits crops), so generated
// noise does not depend on the crop.
//
// Launch ABI (mirrored, with grid/block sizes, by `kernels/cuda.py`; the TensorRT plugin launches the same PTX):
// parameters are the input pointers, then 15 int32 scalars, then the output pointer (the order TensorRT's AOT
// plugin launcher uses); block = 256 threads, grid = (ceil(W / 16) * ceil(H / 8), ceil(Cout / 64), B), no dynamic
// shared memory. Entry points (T = float for *_f32, __half for *_f16 and *_f16_simt):
//   ssae_masked_modconv_region_{f32,f16,f16_simt}(x, weight, bias, style, direction, mask, strength, noise,
//                                                 noise_weight, <int32 x 15>, y)
//   int32 scalars: batch, cin, cout, height, width, activate, xi_mode, xi_batch_stride, xi_seed_lo, xi_seed_hi,
//                  xi_stream, pixel_stream, win_y0, win_x0, full_width
//                  (pixel_stream is reserved and ignored: the parameter list stays the one the TensorRT plugin
//                  and the engines built with it launch)
//   ssae_philox_normals(seed_lo, seed_hi, stream, start (int64), count, out): out[i] = value start + i.
//
// Two inner paths share everything else (style, noise, tiles, epilogue):
//   TensorCorePath (FP16): implicit GEMM on tensor cores with WMMA 16x16x16 (fp32 accumulation);
//   SimtPath (FP32, and FP16 where tensor cores do not pay, e.g. Cin < 16): plain fp32 FMAs.
// Both handle any size: partial tiles and channel counts are zero-filled.
//
// Builds: nvcc (PTX/cubin, sm_75+) and the host: everything marked SSAE_HD runs on the host too (the CPU
// test compiles the Philox/Box-Muller helpers with nvcc, and the whole kernel with g++ and SSAE_HOST_EMULATION,
// in which the test harness provides the CUDA built-ins).
// Do not build with --use_fast_math: the noise must use IEEE float64 log/sqrt/sin/cos.

#if defined(__USE_FAST_MATH__)  // where the compiler announces --use_fast_math (not every nvcc does, so
                                // kernels/cuda.py never passes it and tests/test_kernel_build.py checks the flags)
#error "masked_modconv.cu must not be built with --use_fast_math (the noise needs IEEE float64 math)"
#endif
#if defined(__CUDACC__)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 750
#error "masked_modconv.cu needs sm_75 or newer (tensor-core WMMA FP16)"
#endif
#if !defined(SSAE_RNG_ONLY)
#include <mma.h>
#include <cuda_fp16.h>
#endif
#define SSAE_HD __host__ __device__ __forceinline__
#define SSAE_DEV __device__ __forceinline__
#elif !defined(SSAE_HOST_EMULATION)
#error "compile with nvcc (or define SSAE_HOST_EMULATION and provide the CUDA built-ins)"
#endif

namespace ssae {

// =============================================================================================== noise (host+device)

/// Philox4x32 constants (Salmon et al. 2011), as in ssae/philox.py.
constexpr unsigned int kPhiloxM0 = 0xD2511F53u;
constexpr unsigned int kPhiloxM1 = 0xCD9E8D57u;
constexpr unsigned int kPhiloxW0 = 0x9E3779B9u;
constexpr unsigned int kPhiloxW1 = 0xBB67AE85u;
constexpr double kPi = 3.141592653589793;

/// Four 32-bit words: a Philox counter or its output.
struct Words4 {
    unsigned int w0, w1, w2, w3;
};

/// Four float32 normals: the values 4q .. 4q + 3 of a stream.
struct Normal4 {
    float n0, n1, n2, n3;
};

/// Philox4x32-10: 10 rounds on `ctr` with key (k0, k1), the key bumped by (W0, W1) between rounds.
SSAE_HD Words4 philox4x32_10(Words4 ctr, unsigned int k0, unsigned int k1) {
    for (int round = 0; round < 10; ++round) {
        const unsigned long long p0 = static_cast<unsigned long long>(kPhiloxM0) * ctr.w0;
        const unsigned long long p1 = static_cast<unsigned long long>(kPhiloxM1) * ctr.w2;
        const Words4 next = {static_cast<unsigned int>(p1 >> 32) ^ ctr.w1 ^ k0, static_cast<unsigned int>(p1),
                             static_cast<unsigned int>(p0 >> 32) ^ ctr.w3 ^ k1, static_cast<unsigned int>(p0)};
        ctr = next;
        k0 += kPhiloxW0;
        k1 += kPhiloxW1;
    }
    return ctr;
}

/// u = (w + 0.5) / 2^32 in float64: uniform on (0, 1), never 0 or 1 (exact in double).
SSAE_HD double uniform_open(unsigned int w) {
    return (static_cast<double>(w) + 0.5) * (1.0 / 4294967296.0);
}

/// Box-Muller on two words: r = sqrt(-2 ln u_a), t = 2 pi u_b in float64; (r cos t, r sin t) rounded to float32.
SSAE_HD void box_muller(unsigned int wa, unsigned int wb, float* cos_out, float* sin_out) {
    const double r = sqrt(-2.0 * log(uniform_open(wa)));
    const double theta = 2.0 * kPi * uniform_open(wb);
    *cos_out = static_cast<float>(r * cos(theta));
    *sin_out = static_cast<float>(r * sin(theta));
}

/// The Philox output words of block q of (seed, stream): key (seed_lo, seed_hi), counter (q, 0, stream, 0).
SSAE_HD Words4 philox_block_words(unsigned int seed_lo, unsigned int seed_hi, unsigned int stream, unsigned int q) {
    const Words4 ctr = {q, 0u, stream, 0u};
    return philox4x32_10(ctr, seed_lo, seed_hi);
}

/// The normals 4q .. 4q + 3 of (seed, stream): (w0, w1) -> 4q, 4q + 1 and (w2, w3) -> 4q + 2, 4q + 3.
SSAE_HD Normal4 philox_normal4(unsigned int seed_lo, unsigned int seed_hi, unsigned int stream, unsigned int q) {
    const Words4 w = philox_block_words(seed_lo, seed_hi, stream, q);
    Normal4 n;
    box_muller(w.w0, w.w1, &n.n0, &n.n1);
    box_muller(w.w2, w.w3, &n.n2, &n.n3);
    return n;
}

/// Element i (0..3) of a Normal4, without a local-memory array.
SSAE_HD float normal4_at(const Normal4& n, unsigned int i) {
    return i == 0 ? n.n0 : (i == 1 ? n.n1 : (i == 2 ? n.n2 : n.n3));
}

/// Value `index` of (seed, stream); the block number wraps to 32 bits as in philox.py.
SSAE_HD float philox_normal_at(unsigned int seed_lo, unsigned int seed_hi, unsigned int stream,
                               unsigned long long index) {
    const Normal4 n = philox_normal4(seed_lo, seed_hi, stream, static_cast<unsigned int>(index >> 2));
    return normal4_at(n, static_cast<unsigned int>(index & 3u));
}

}  // namespace ssae

#if !defined(SSAE_RNG_ONLY)
namespace ssae {

// =============================================================================================== tiling

constexpr int kThreads = 256;                          // 8 warps per block
constexpr int kTileH = 8, kTileW = 16;                 // output pixels per block: 8 rows x 16 columns
constexpr int kTileM = kTileH * kTileW;                // 128 (GEMM M)
constexpr int kTileN = 64;                             // output channels per block (GEMM N)
constexpr int kHaloH = kTileH + 2, kHaloW = kTileW + 2;
constexpr int kHaloPixels = kHaloH * kHaloW;           // 180 input pixels feed one tile (3x3, pad 1)
constexpr int kTaps = 9;
constexpr float kEps = 1e-8f;                          // reference.EPS
constexpr float kSqrt2 = 1.41421356237309515f;
constexpr float kLeakySlope = 0.2f;

/// xi_mode values (any other value: generated, as kXiGenerated = 2).
constexpr int kXiNone = 0, kXiExplicit = 1;

/// Rounds n up to a multiple of 128 bytes (shared-memory sub-buffers stay aligned).
constexpr int align128(int n) { return (n + 127) / 128 * 128; }

/// FP16 tensor-core path: shared memory holds the modulated input of 64 channels ("group") for the halo,
/// halo-pixel-major with 80 halves per pixel (the 16-half pad keeps every pixel row 32-byte aligned, as WMMA
/// needs, and spreads banks), and the weights of 16 channels ("chunk") x 9 taps x 64 output channels.
/// For tap (ky, kx) the A operand of 16 consecutive output pixels of a row is 16 consecutive halo pixels: a
/// row-major 16x16 matrix with ldm = 80. B is the weight chunk, col-major with ldm = 152.
struct TensorCorePath {
    static constexpr bool kTensorCores = true;
    static constexpr int kGroup = 64, kChunk = 16;
    static constexpr int kXmLd = kGroup + 16;                    // halves per halo pixel
    static constexpr int kWsLd = kTaps * kChunk + 8;             // halves per output channel
    static constexpr int kStageLd = kTileM + 4;                  // floats per output channel (epilogue)
    static constexpr int kXmBytes = align128(kHaloPixels * kXmLd * 2);
    static constexpr int kWsBytes = align128(kTileN * kWsLd * 2);
    static constexpr int kStageBytes = kTileN * kStageLd * 4;
    static constexpr int kMainBytes = kXmBytes + kWsBytes;
    static constexpr int kSmemBytes = kMainBytes > kStageBytes ? kMainBytes : kStageBytes;
    using Storage = __half;
    SSAE_HD static int xm_index(int pixel, int channel) { return pixel * kXmLd + channel; }
    SSAE_HD static int ws_index(int o, int c, int tap) { return o * kWsLd + tap * kChunk + c; }
};

/// FP32 path: fp32 shared memory, channel-major modulated input (32 channels, 180 halo pixels each) and a
/// weight chunk of 8 channels in the natural (o, c, tap) order; every thread computes 4 pixels x 8 channels.
struct SimtPath {
    static constexpr bool kTensorCores = false;
    static constexpr int kGroup = 32, kChunk = 8;
    static constexpr int kWsLd = kTaps * kChunk + 1;             // floats per output channel (+1: banks)
    static constexpr int kXmBytes = align128(kGroup * kHaloPixels * 4);
    static constexpr int kWsBytes = align128(kTileN * kWsLd * 4);
    static constexpr int kSmemBytes = kXmBytes + kWsBytes;
    using Storage = float;
    SSAE_HD static int xm_index(int pixel, int channel) { return channel * kHaloPixels + pixel; }
    SSAE_HD static int ws_index(int o, int c, int tap) { return o * kWsLd + c * kTaps + tap; }
};

static_assert(TensorCorePath::kSmemBytes + kTileM * 4 <= 48 * 1024, "static shared memory over 48 KiB");
static_assert(SimtPath::kSmemBytes + kTileM * 4 <= 48 * 1024, "static shared memory over 48 KiB");
static_assert(kThreads * 3 * 4 <= SimtPath::kSmemBytes, "reduction buffer must fit the shared buffer");
static_assert((3 * kHaloPixels + 2 * TensorCorePath::kGroup) * 4 <= TensorCorePath::kWsBytes &&
                  (3 * kHaloPixels + 2 * SimtPath::kGroup) * 4 <= SimtPath::kWsBytes,
              "the region tables must fit the weight buffer");
static_assert(kHaloPixels + TensorCorePath::kGroup <= kThreads, "one thread per halo pixel and group channel");
static_assert(kThreads % kTileM == 0, "the tensor-core epilogue gives every output pixel the same number of threads");

// =============================================================================================== types

/// fp32 value of a stored element.
SSAE_HD float to_float(float v) { return v; }
SSAE_HD float to_float(__half v) { return __half2float(v); }

/// Rounds an fp32 value to the storage type T (round to nearest even).
template <typename T> SSAE_HD T from_float(float v);
template <> SSAE_HD float from_float<float>(float v) { return v; }
template <> SSAE_HD __half from_float<__half>(float v) { return __float2half_rn(v); }

/// A stored element as type D (no conversion when the types agree; float -> half rounds to nearest even).
template <typename D, typename S> SSAE_HD D cast_to(S v) { return from_float<D>(to_float(v)); }
template <> SSAE_HD float cast_to<float, float>(float v) { return v; }
template <> SSAE_HD __half cast_to<__half, __half>(__half v) { return v; }

/// Everything one launch computes: the kernel parameters of the ABI, typed.
template <typename T>
struct Problem {
    const T* x;                        // (B, Cin, H, W)
    const T* weight;                   // (Cout, Cin, 3, 3) W_hat
    const T* bias;                     // (Cout,)
    const T* style;                    // (B, Cin) a
    const T* direction;                // (B, Cin) d
    const T* mask;                     // (B, 1, H, W)
    const T* strength;                 // (B,)
    const T* noise;                    // xi_mode 1: (B or 1, 1, H, W)
    const T* noise_weight;             // (1,) w_n
    T* y;                              // (B, Cout, H, W)
    int batch, cin, cout, height, width, activate, xi_mode, xi_batch_stride;
    unsigned int xi_seed_lo, xi_seed_hi, xi_stream;
    int win_y0, win_x0, full_width;
};

/// This block's tile: sample b, output rows oy0.., columns ox0.., output channels n0..
struct Tile {
    int b, oy0, ox0, n0;
};

/// Per-sample constants of the style: mean(a^2), mean(a d), mean(d^2) and the sample's edit strength.
struct SampleStyle {
    float aa, ad, dd, strength;
};

// =============================================================================================== device helpers

/// Tile of the current block from blockIdx: x = tile index (row-major over the tile grid), y = Cout tile, z = b.
template <typename T>
SSAE_DEV Tile block_tile(const Problem<T>& p) {
    const int tiles_x = (p.width + kTileW - 1) / kTileW;
    const int t = static_cast<int>(blockIdx.x);
    return Tile{static_cast<int>(blockIdx.z), (t / tiles_x) * kTileH, (t % tiles_x) * kTileW,
                static_cast<int>(blockIdx.y) * kTileN};
}

/// Block-wide reduction of the per-sample style scalars over Cin (all threads call it; `scratch` holds
/// 3 x kThreads floats). Ends with a barrier, so `scratch` may be reused right after.
template <typename T>
SSAE_DEV SampleStyle sample_style(const Problem<T>& p, int b, float* scratch) {
    const int tid = static_cast<int>(threadIdx.x);
    const T* a = p.style + static_cast<long long>(b) * p.cin;
    float saa = 0.f, sad = 0.f, sdd = 0.f;
    for (int c = tid; c < p.cin; c += kThreads) {
        const float av = to_float(a[c]);
        const float dv = to_float(p.direction[static_cast<long long>(b) * p.cin + c]);
        saa += av * av;
        sad += av * dv;
        sdd += dv * dv;
    }
    scratch[tid] = saa;
    scratch[kThreads + tid] = sad;
    scratch[2 * kThreads + tid] = sdd;
    __syncthreads();
    for (int half = kThreads / 2; half > 0; half /= 2) {
        if (tid < half) {
            scratch[tid] += scratch[tid + half];
            scratch[kThreads + tid] += scratch[kThreads + tid + half];
            scratch[2 * kThreads + tid] += scratch[2 * kThreads + tid + half];
        }
        __syncthreads();
    }
    const float inv_c = 1.f / static_cast<float>(p.cin);
    SampleStyle s{scratch[0] * inv_c, scratch[kThreads] * inv_c, scratch[2 * kThreads] * inv_c,
                  to_float(p.strength[b])};
    __syncthreads();
    return s;
}

/// 1 / rms(a + t d) in closed form, t = strength * mask(p).
SSAE_DEV float region_inv_rms(const SampleStyle& s, float t) {
    return rsqrtf(s.aa + 2.f * t * s.ad + t * t * s.dd + kEps);
}

/// The halo pixel h (0..179) of a tile in image coordinates, and whether it lies inside the image.
SSAE_HD bool halo_pixel(const Tile& tile, int h, int height, int width, int* gy, int* gx) {
    *gy = tile.oy0 - 1 + h / kHaloW;
    *gx = tile.ox0 - 1 + h % kHaloW;
    return *gy >= 0 && *gy < height && *gx >= 0 && *gx < width;
}

/// 16 bytes of consecutive elements (8 halves or 4 floats): one vector load or store.
template <typename T>
struct alignas(16) Vec16 {
    static constexpr int kN = 16 / static_cast<int>(sizeof(T));
    T v[kN];
};

/// Write the modulated input x * s of channels g0 .. g0 + kGroup for the whole halo into `xm`
/// (zero outside the image and past Cin: the conv's zero padding). All threads; ends without a barrier.
/// Two passes: first the per-pixel and per-channel factors of s(p) = r(p) a + t(p) r(p) d (r = 1 / rms) into
/// `tables` (the weight buffer, free until the group's first chunk is loaded), then one element per pixel and
/// channel as x * (a_c r_p + d_c tr_p): consecutive threads take consecutive halo pixels (coalesced reads of x);
/// on the tensor-core path each thread writes 8 channels of its pixel as one 16-byte store.
template <class Path, typename T>
SSAE_DEV void build_group_region(const Problem<T>& p, const Tile& tile, const SampleStyle& st, int g0,
                                 typename Path::Storage* xm, float* tables) {
    using Storage = typename Path::Storage;
    int* offset = reinterpret_cast<int*>(tables);              // pixel offset in an image plane, -1 outside
    float* r = tables + kHaloPixels;                           // 1 / rms(p)
    float* tr = tables + 2 * kHaloPixels;                      // t(p) / rms(p)
    float* ac = tables + 3 * kHaloPixels;                      // a_c of the group's channels (0 past Cin)
    float* dc = ac + Path::kGroup;                             // d_c
    const int tid = static_cast<int>(threadIdx.x);
    const long long hw = static_cast<long long>(p.height) * p.width;
    if (tid < kHaloPixels) {
        int gy, gx, off = -1;
        float rv = 0.f, trv = 0.f;
        if (halo_pixel(tile, tid, p.height, p.width, &gy, &gx)) {
            off = gy * p.width + gx;
            const float t = st.strength * to_float(p.mask[tile.b * hw + off]);
            rv = region_inv_rms(st, t);
            trv = t * rv;
        }
        offset[tid] = off;
        r[tid] = rv;
        tr[tid] = trv;
    } else if (tid < kHaloPixels + Path::kGroup) {
        const int cl = tid - kHaloPixels, c = g0 + cl;
        const long long sc = static_cast<long long>(tile.b) * p.cin + c;
        ac[cl] = c < p.cin ? to_float(p.style[sc]) : 0.f;
        dc[cl] = c < p.cin ? to_float(p.direction[sc]) : 0.f;
    }
    __syncthreads();
    const T* xb = p.x + static_cast<long long>(tile.b) * p.cin * hw;
    // x * s of halo pixel h, group channel cl (0 outside the image and past Cin)
    const auto modulated = [&](int h, int cl) -> Storage {
        const int c = g0 + cl, off = offset[h];
        float val = 0.f;
        if (off >= 0 && c < p.cin) {
            val = to_float(xb[static_cast<long long>(c) * hw + off]) * (ac[cl] * r[h] + dc[cl] * tr[h]);
        }
        return from_float<Storage>(val);
    };
    if constexpr (Path::kTensorCores) {
        constexpr int kVec = Vec16<Storage>::kN;
        for (int e = tid; e < kHaloPixels * (Path::kGroup / kVec); e += kThreads) {
            const int h = e % kHaloPixels, c8 = (e / kHaloPixels) * kVec;
            Vec16<Storage> v;
#pragma unroll
            for (int i = 0; i < kVec; ++i) v.v[i] = modulated(h, c8 + i);
            *reinterpret_cast<Vec16<Storage>*>(xm + Path::xm_index(h, c8)) = v;
        }
    } else {
        for (int e = tid; e < kHaloPixels * Path::kGroup; e += kThreads) {
            const int h = e % kHaloPixels, cl = e / kHaloPixels;
            xm[Path::xm_index(h, cl)] = modulated(h, cl);
        }
    }
}

/// Weights of input channels c0 .. c0 + kChunk for the tile's kTileN output channels into `ws`
/// (zero past Cin / Cout). One (output channel, input channel) pair per thread and turn: its 9 taps are
/// contiguous in memory, and consecutive threads take consecutive input channels, so the loads of a warp fall in
/// two short runs and the stores of one tap are consecutive in shared memory (no index division, no conflicts).
template <class Path, typename T>
SSAE_DEV void load_weight_chunk(const Problem<T>& p, const Tile& tile, int c0, typename Path::Storage* ws) {
    using Storage = typename Path::Storage;
    for (int e = static_cast<int>(threadIdx.x); e < kTileN * Path::kChunk; e += kThreads) {
        const int cl = e % Path::kChunk, ol = e / Path::kChunk, c = c0 + cl, o = tile.n0 + ol;
        if (o < p.cout && c < p.cin) {
            const T* src = p.weight + (static_cast<long long>(o) * p.cin + c) * kTaps;
#pragma unroll
            for (int tap = 0; tap < kTaps; ++tap) ws[Path::ws_index(ol, cl, tap)] = cast_to<Storage>(src[tap]);
        } else {
#pragma unroll
            for (int tap = 0; tap < kTaps; ++tap) ws[Path::ws_index(ol, cl, tap)] = from_float<Storage>(0.f);
        }
    }
}

/// w_n * xi(p) for each of the tile's output pixels into `term` (threads 0..127; caller synchronises).
template <typename T>
SSAE_DEV void stage_noise_term(const Problem<T>& p, const Tile& tile, float* term) {
    const int m = static_cast<int>(threadIdx.x);
    if (m >= kTileM) return;
    const int oy = tile.oy0 + m / kTileW, ox = tile.ox0 + m % kTileW;
    float v = 0.f;
    if (p.xi_mode != kXiNone && oy < p.height && ox < p.width) {
        float xi;
        if (p.xi_mode == kXiExplicit) {
            xi = to_float(p.noise[static_cast<long long>(tile.b) * p.xi_batch_stride +
                                  static_cast<long long>(oy) * p.width + ox]);
        } else {
            const unsigned long long idx = static_cast<unsigned long long>(p.win_y0 + oy) * p.full_width +
                                           static_cast<unsigned long long>(p.win_x0 + ox);
            xi = philox_normal_at(p.xi_seed_lo, p.xi_seed_hi, p.xi_stream, idx);
        }
        v = to_float(p.noise_weight[0]) * xi;
    }
    term[m] = v;
}

/// Output element: act(conv + w_n xi + b) with act(v) = leaky_relu(v, 0.2) * sqrt(2), or conv + w_n xi + b.
SSAE_HD float finish_output(float conv, float noise_term, float bias, int activate) {
    float v = conv + noise_term + bias;
    if (activate) v = (v < 0.f ? kLeakySlope * v : v) * kSqrt2;
    return v;
}

/// Stores output element (o, oy, ox) of sample b when inside the output.
template <typename T>
SSAE_DEV void store_output(const Problem<T>& p, int b, int o, int oy, int ox, float conv, float noise_term) {
    if (o >= p.cout || oy >= p.height || ox >= p.width) return;
    const float v = finish_output(conv, noise_term, to_float(p.bias[o]), p.activate);
    p.y[((static_cast<long long>(b) * p.cout + o) * p.height + oy) * p.width + ox] = from_float<T>(v);
}

// =============================================================================================== inner products

/// Tensor-core accumulators of one warp: 2 output rows (16 pixels each) x 2 x 16 output channels.
/// Warp w covers rows 2 (w % 4), 2 (w % 4) + 1 and channels 32 (w / 4) .. + 32 of the tile.
struct TcAccumulators {
    nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float> acc[2][2];
};

/// acc += the chunk's contribution: for each tap (ky, kx), A = modulated input of halo rows (row + ky) shifted
/// by kx (16 pixels x 16 channels of the chunk), B = the tap's 16 channels x 16 output channels.
SSAE_DEV void mma_chunk(TcAccumulators& t, const __half* xm, const __half* ws, int chunk_in_group) {
    namespace wmma = nvcuda::wmma;
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int row0 = 2 * (warp % 4), n_base = 32 * (warp / 4);
    const int c_off = chunk_in_group * TensorCorePath::kChunk;
#pragma unroll
    for (int tap = 0; tap < kTaps; ++tap) {
        const int ky = tap / 3, kx = tap % 3;
        wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> a[2];
        wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::col_major> b[2];
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int halo = (row0 + i + ky) * kHaloW + kx;
            wmma::load_matrix_sync(a[i], xm + TensorCorePath::xm_index(halo, c_off), TensorCorePath::kXmLd);
        }
#pragma unroll
        for (int j = 0; j < 2; ++j) {
            wmma::load_matrix_sync(b[j], ws + TensorCorePath::ws_index(n_base + 16 * j, 0, tap),
                                   TensorCorePath::kWsLd);
        }
#pragma unroll
        for (int i = 0; i < 2; ++i)
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::mma_sync(t.acc[i][j], a[i], b[j], t.acc[i][j]);
    }
}

/// SIMT accumulators of one thread: 4 output rows (of one column) x 8 output channels.
/// Thread tid covers column tid % 16, rows 4 ((tid / 16) % 2) .., channels 8 (tid / 32) .. of the tile.
struct SimtAccumulators {
    float acc[4][8];
};

/// acc += the chunk's contribution, fp32 FMAs; weights are read as warp-wide broadcasts.
SSAE_DEV void fma_chunk(SimtAccumulators& t, const float* xm, const float* ws, int chunk_in_group) {
    const int tid = static_cast<int>(threadIdx.x);
    const int col = tid % 16, row0 = 4 * ((tid / 16) % 2), o0 = 8 * (tid / 32);
    for (int cc = 0; cc < SimtPath::kChunk; ++cc) {
        const int cl = chunk_in_group * SimtPath::kChunk + cc;
#pragma unroll
        for (int kx = 0; kx < 3; ++kx) {
            float v[6];
#pragma unroll
            for (int r = 0; r < 6; ++r) v[r] = xm[SimtPath::xm_index((row0 + r) * kHaloW + col + kx, cl)];
#pragma unroll
            for (int ky = 0; ky < 3; ++ky) {
#pragma unroll
                for (int k = 0; k < 8; ++k) {
                    const float w = ws[SimtPath::ws_index(o0 + k, cc, ky * 3 + kx)];
#pragma unroll
                    for (int i = 0; i < 4; ++i) t.acc[i][k] += v[i + ky] * w;
                }
            }
        }
    }
}

/// Zeroes the accumulators.
SSAE_DEV void clear(TcAccumulators& t) {
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) nvcuda::wmma::fill_fragment(t.acc[i][j], 0.f);
}
SSAE_DEV void clear(SimtAccumulators& t) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int k = 0; k < 8; ++k) t.acc[i][k] = 0.f;
}

/// Accumulate one weight chunk (dispatch on the path).
SSAE_DEV void accumulate(TcAccumulators& t, const __half* xm, const __half* ws, int chunk) {
    mma_chunk(t, xm, ws, chunk);
}
SSAE_DEV void accumulate(SimtAccumulators& t, const float* xm, const float* ws, int chunk) {
    fma_chunk(t, xm, ws, chunk);
}

/// Epilogue, tensor cores: fragments -> fp32 stage in shared memory (channel-major) -> coalesced stores.
/// Caller synchronised after the main loop; `stage` aliases the main buffers.
template <typename T>
SSAE_DEV void write_tile(const Problem<T>& p, const Tile& tile, TcAccumulators& t, float* stage,
                         const float* noise_term) {
    namespace wmma = nvcuda::wmma;
    const int warp = static_cast<int>(threadIdx.x) / 32;
    const int row0 = 2 * (warp % 4), n_base = 32 * (warp / 4);
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j)
            wmma::store_matrix_sync(stage + (n_base + 16 * j) * TensorCorePath::kStageLd + (row0 + i) * kTileW,
                                    t.acc[i][j], TensorCorePath::kStageLd, wmma::mem_col_major);
    __syncthreads();
    // thread -> one output pixel m and every (kThreads / kTileM)-th channel: the pixel's address is computed once,
    // and a warp stores 32 consecutive pixels of one channel
    const int tid = static_cast<int>(threadIdx.x), m = tid % kTileM;
    const int oy = tile.oy0 + m / kTileW, ox = tile.ox0 + m % kTileW;
    if (oy >= p.height || ox >= p.width) return;
    const long long hw = static_cast<long long>(p.height) * p.width;
    T* out = p.y + static_cast<long long>(tile.b) * p.cout * hw + static_cast<long long>(oy) * p.width + ox;
    const float nt = noise_term[m];
    for (int ol = tid / kTileM; ol < kTileN && tile.n0 + ol < p.cout; ol += kThreads / kTileM) {
        const int o = tile.n0 + ol;
        out[o * hw] = from_float<T>(finish_output(stage[ol * TensorCorePath::kStageLd + m], nt, to_float(p.bias[o]),
                                                  p.activate));
    }
}

/// Epilogue, SIMT: every thread stores its 4 x 8 outputs.
template <typename T>
SSAE_DEV void write_tile(const Problem<T>& p, const Tile& tile, SimtAccumulators& t, float* /*stage*/,
                         const float* noise_term) {
    const int tid = static_cast<int>(threadIdx.x);
    const int col = tid % 16, row0 = 4 * ((tid / 16) % 2), o0 = 8 * (tid / 32);
    for (int i = 0; i < 4; ++i) {
        const int m = (row0 + i) * kTileW + col;
        for (int k = 0; k < 8; ++k)
            store_output(p, tile.b, tile.n0 + o0 + k, tile.oy0 + row0 + i, tile.ox0 + col, t.acc[i][k],
                         noise_term[m]);
    }
}

// =============================================================================================== the kernel body

/// Select<cond, A, B>::type: A if cond else B (std::conditional without a standard-library header).
template <bool kCond, class A, class B> struct Select { using type = A; };
template <class A, class B> struct Select<false, A, B> { using type = B; };

/// One block: a kTileH x kTileW x kTileN output tile of one sample.
/// Loop: for each group of input channels, build the modulated halo input in shared memory (style computed on
/// the fly), then for each chunk of it load the weights and accumulate (tensor cores or FMAs); then add
/// bias and noise, activate, store.
template <typename T, class Path>
SSAE_DEV void masked_modconv_block(const Problem<T>& p) {
    using Storage = typename Path::Storage;
    using Acc = typename Select<Path::kTensorCores, TcAccumulators, SimtAccumulators>::type;
    alignas(128) __shared__ unsigned char smem[Path::kSmemBytes];
    __shared__ float noise_term[kTileM];
    Storage* xm = reinterpret_cast<Storage*>(smem);
    Storage* ws = reinterpret_cast<Storage*>(smem + Path::kXmBytes);

    const Tile tile = block_tile(p);
    const SampleStyle st = sample_style<T>(p, tile.b, reinterpret_cast<float*>(smem));

    Acc acc;
    clear(acc);
    for (int g0 = 0; g0 < p.cin; g0 += Path::kGroup) {
        __syncthreads();  // the previous group's inner products are done with xm
        build_group_region<Path>(p, tile, st, g0, xm, reinterpret_cast<float*>(ws));
        for (int chunk = 0; chunk < Path::kGroup / Path::kChunk && g0 + chunk * Path::kChunk < p.cin; ++chunk) {
            __syncthreads();  // the previous chunk is done with ws
            load_weight_chunk<Path>(p, tile, g0 + chunk * Path::kChunk, ws);
            __syncthreads();  // xm and ws are complete
            accumulate(acc, xm, ws, chunk);
        }
    }
    __syncthreads();  // the stage of the epilogue aliases xm / ws
    stage_noise_term(p, tile, noise_term);
    __syncthreads();
    write_tile(p, tile, acc, reinterpret_cast<float*>(smem), noise_term);
}

/// The typed problem from the ABI's parameters (pixel_stream: reserved, ignored).
template <typename T>
SSAE_DEV Problem<T> make_problem(const T* x, const T* weight, const T* bias, const T* style, const T* direction,
                                 const T* mask, const T* strength, const T* noise, const T* noise_weight, int batch,
                                 int cin, int cout, int height, int width, int activate, int xi_mode,
                                 int xi_batch_stride, int xi_seed_lo, int xi_seed_hi, int xi_stream,
                                 int /*pixel_stream*/, int win_y0, int win_x0, int full_width, T* y) {
    return Problem<T>{x, weight, bias, style, direction, mask, strength, noise, noise_weight, y, batch, cin, cout,
                      height, width, activate, xi_mode, xi_batch_stride, static_cast<unsigned int>(xi_seed_lo),
                      static_cast<unsigned int>(xi_seed_hi), static_cast<unsigned int>(xi_stream), win_y0, win_x0,
                      full_width};
}

}  // namespace ssae

// =============================================================================================== entry points

// The 15 int32 scalars of the ABI, in order, and their forwarding.
#define SSAE_MMC_SCALARS                                                                                         \
    int batch, int cin, int cout, int height, int width, int activate, int xi_mode, int xi_batch_stride,         \
        int xi_seed_lo, int xi_seed_hi, int xi_stream, int pixel_stream, int win_y0, int win_x0, int full_width
#define SSAE_MMC_SCALAR_ARGS                                                                                     \
    batch, cin, cout, height, width, activate, xi_mode, xi_batch_stride, xi_seed_lo, xi_seed_hi, xi_stream,      \
        pixel_stream, win_y0, win_x0, full_width

// Inputs as the ONNX node ssae::MaskedModConv orders them. Compiled for SSAE_REGION_MIN_BLOCKS
// resident blocks per SM (3: at most 80 registers on sm_90, where 83 let only 2 fit and the kernel is latency-bound;
// no spills at 80, see -Xptxas -v; 0: no minimum, the compiler's choice). benchmarks/bench_kernel_gpu.py times
// other values side by side (-DSSAE_REGION_MIN_BLOCKS=N).
#ifndef SSAE_REGION_MIN_BLOCKS
#define SSAE_REGION_MIN_BLOCKS 3
#endif
#define SSAE_MMC_REGION_ENTRY(NAME, T, PATH)                                                                     \
    extern "C" __global__ void __launch_bounds__(ssae::kThreads, SSAE_REGION_MIN_BLOCKS) NAME(                   \
        const T* __restrict__ x, const T* __restrict__ weight, const T* __restrict__ bias,                       \
        const T* __restrict__ style, const T* __restrict__ direction, const T* __restrict__ mask,                 \
        const T* __restrict__ strength, const T* __restrict__ noise, const T* __restrict__ noise_weight,         \
        SSAE_MMC_SCALARS, T* __restrict__ y) {                                                                   \
        ssae::masked_modconv_block<T, PATH>(ssae::make_problem<T>(                                               \
            x, weight, bias, style, direction, mask, strength, noise, noise_weight, SSAE_MMC_SCALAR_ARGS, y));   \
    }

SSAE_MMC_REGION_ENTRY(ssae_masked_modconv_region_f32, float, ssae::SimtPath)
SSAE_MMC_REGION_ENTRY(ssae_masked_modconv_region_f16, __half, ssae::TensorCorePath)
SSAE_MMC_REGION_ENTRY(ssae_masked_modconv_region_f16_simt, __half, ssae::SimtPath)

/// out[i] = value start + i of (seed, stream), i < count: the generator of ssae/philox.py on the device (the
/// check that the in-kernel xi noise equals the host's).
/// Grid: ceil(count / 256) blocks of 256 threads.
extern "C" __global__ void __launch_bounds__(ssae::kThreads) ssae_philox_normals(
    int seed_lo, int seed_hi, int stream, long long start, int count, float* __restrict__ out) {
    const long long i = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
    if (i < count) {
        out[i] = ssae::philox_normal_at(static_cast<unsigned int>(seed_lo), static_cast<unsigned int>(seed_hi),
                                        static_cast<unsigned int>(stream), static_cast<unsigned long long>(start + i));
    }
}

#endif  // !SSAE_RNG_ONLY
