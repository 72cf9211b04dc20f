/* Which devices this build runs on and what each one runs: the gpu_archs targets compiled in
 * (KVSERVE_CUDA_ARCHS from meson.build) against a device's compute capability, the probe of the
 * code the driver actually loads, the one attention-path decision (Hopper or portable) and the
 * start-up line naming them. Not here: streams, memory, kernels. */
#include "model/cuda/cuda_internal.h"

#include <stdlib.h>
#include <string.h>

#ifndef KVSERVE_CUDA_ARCHS
#error "KVSERVE_CUDA_ARCHS: the gpu_archs targets, set by meson.build"
#endif

/* True when the code of one gpu_archs target (KVSERVE_CUDA_ARCHS: "86", "90a", "ptx120") runs
 * on a device of compute capability major.minor: machine code for X.Y runs on X.Y' with Y' >= Y
 * (an "a" target on X.Y alone, an "f" one on X.Y' with Y' >= Y), PTX of X.Y is compiled by the
 * driver for any X'.Y' >= X.Y. */
static bool cuda_target_runs(const char *t, size_t len, int major, int minor) {
    bool ptx = len > 3 && strncmp(t, "ptx", 3) == 0;
    if (ptx) t += 3, len -= 3;
    int num = 0;
    size_t i = 0;
    while (i < len && t[i] >= '0' && t[i] <= '9') num = num * 10 + (t[i++] - '0');
    int cc = major * 10 + minor;
    if (ptx) return cc >= num;
    if (i < len && t[i] == 'a') return cc == num;
    return major == num / 10 && minor >= num % 10;
}

bool cuda_archs_run_on(const char *archs, int major, int minor) {
    const char *t = archs;
    while (*t) {
        size_t len = strcspn(t, ",");
        if (cuda_target_runs(t, len, major, minor)) return true;
        t += len + (t[len] == ',');
    }
    return false;
}

const char *cuda_backend_archs(void) {
    return KVSERVE_CUDA_ARCHS;
}

bool cuda_build_runs_on(int major, int minor) {
    return cuda_archs_run_on(KVSERVE_CUDA_ARCHS, major, minor);
}

void cuda_no_code_error(kv_error *err, int dev, const char *name, int major, int minor) {
    cuda_archs_no_code_error(err, KVSERVE_CUDA_ARCHS, dev, name, major, minor);
}

void cuda_archs_no_code_error(kv_error *err, const char *archs, int dev, const char *name,
                              int major, int minor) {
    char built[256] = "";
    size_t n = 0;
    for (const char *t = archs; *t && n < sizeof built - 32;) {
        size_t len = strcspn(t, ",");
        bool ptx = strncmp(t, "ptx", 3) == 0;
        n += (size_t)snprintf(built + n, sizeof built - n, "%s%s%.*s", n ? " " : "",
                              ptx ? "+PTX compute_" : "sm_", (int)(ptx ? len - 3 : len),
                              ptx ? t + 3 : t);
        t += len + (t[len] == ',');
    }
    char opt[128] = ""; /* the gpu_archs value this build had, for the hint */
    size_t an = 0;
    for (const char *t = archs; *t && an < sizeof opt - 16;) {
        size_t len = strcspn(t, ",");
        if (strncmp(t, "ptx", 3) != 0)
            an += (size_t)snprintf(opt + an, sizeof opt - an, "%s%.*s", an ? ";" : "", (int)len, t);
        t += len + (t[len] == ',');
    }
    char hint[256];
    if (major < 8)
        snprintf(hint, sizeof hint,
                 "the CUDA kernels need compute capability 8.0 or later "
                 "(bf16 tensor cores: A100, RTX 30xx and newer)");
    else
        snprintf(hint, sizeof hint, "add its target: meson configure -Dgpu_archs='%s;%d%d'", opt,
                 major, minor);
    kv_error_set(err,
                 "CUDA device %d (%s, compute capability %d.%d) has no code in this build "
                 "(built for %s): %s",
                 dev, name, major, minor, built, hint);
}

bool cuda_backend_usable(kv_error *why) {
    int major = 0, minor = 0;
    if (cuda_backend_device_count() <= 0) {
        kv_error_set(why, "no CUDA device found (driver missing or no GPU visible)");
        return false;
    }
    if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0) != cudaSuccess ||
        cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, 0) != cudaSuccess) {
        kv_error_set(why, "CUDA device 0: %s", cudaGetErrorString(cudaGetLastError()));
        return false;
    }
    if (cuda_build_runs_on(major, minor)) return true;
    char name[256] = "?";
    cudaDeviceProp prop;
    if (cudaGetDeviceProperties(&prop, 0) == cudaSuccess)
        snprintf(name, sizeof name, "%s", prop.name);
    (void)cudaGetLastError();
    cuda_no_code_error(why, 0, name, major, minor);
    return false;
}

/* Reports the machine code the device runs: __CUDA_ARCH__, and whether it is the sm_90a target
 * (the one with the wgmma kernels). */
__global__ void cuda_probe_kernel(int *out) {
#ifdef __CUDA_ARCH__
    out[0] = __CUDA_ARCH__;
#ifdef __CUDA_ARCH_FEAT_SM90_ALL
    out[1] = 1;
#else
    out[1] = 0;
#endif
#endif
}

/* Runs the probe: false with err set when no code of this build loads on the device (the
 * driver's answer, checked as well as cuda_build_runs_on's). */
bool cuda_probe(cuda_impl *ci, const cudaDeviceProp *prop, kv_error *err) {
    cudaFuncAttributes fa;
    if (cudaFuncGetAttributes(&fa, cuda_probe_kernel) != cudaSuccess) {
        (void)cudaGetLastError();
        cuda_no_code_error(err, ci->device, prop->name, prop->major, prop->minor);
        return false;
    }
    int *d = NULL, h[2] = {0, 0};
    CUDA_CHECK(cudaMalloc(&d, sizeof h));
    cuda_probe_kernel<<<1, 1>>>(d);
    CUDA_LAUNCH_CHECK();
    CUDA_CHECK(cudaMemcpy(h, d, sizeof h, cudaMemcpyDeviceToHost));
    CUDA_CHECK(cudaFree(d));
    ci->code_arch = h[0] / 10;
    ci->hopper_built = h[1] == 1;
    return true;
}

/* The one dispatch point: the Hopper kernels where the device runs sm_90a code, unless
 * KVSERVE_CUDA_PORTABLE=1 (read once, here) forces the portable ones. */
cuda_attn_path cuda_pick_attn_path(const cuda_impl *ci) {
    const char *v = getenv("KVSERVE_CUDA_PORTABLE");
    bool force_portable = v && strcmp(v, "1") == 0;
    return ci->hopper_built && !force_portable ? CUDA_ATTN_HOPPER : CUDA_ATTN_PORTABLE;
}

static const char *cuda_attn_path_name(cuda_attn_path p) {
    return p == CUDA_ATTN_HOPPER ? "hopper (wgmma)" : "portable (mma.sync)";
}

void cuda_describe(backend *be) {
    cuda_impl *ci = cuda_impl_of(be);
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, ci->device));
    snprintf(ci->desc, sizeof ci->desc,
             "cuda: %.96s sm_%d%d (%d SMs, code sm_%d%s), attention path: %s", prop.name,
             ci->cc_major, ci->cc_minor, ci->n_sms, ci->code_arch, ci->hopper_built ? "a" : "",
             cuda_attn_path_name(ci->attn_path));
    be->desc = ci->desc;
}

bool cuda_backend_set_attn_path(backend *be, bool portable) {
    cuda_impl *ci = cuda_impl_of(be);
    if (!portable && !ci->hopper_built) return false;
    cuda_graph_buffers_moved(ci); /* a recording keeps the kernels it was made with */
    ci->attn_path = portable ? CUDA_ATTN_PORTABLE : CUDA_ATTN_HOPPER;
    cuda_describe(be);
    return true;
}

bool cuda_backend_attn_portable(const backend *be) {
    return ((const cuda_impl *)be->impl)->attn_path == CUDA_ATTN_PORTABLE;
}
