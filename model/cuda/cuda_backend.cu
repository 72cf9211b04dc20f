/* The CUDA backend's plumbing: device and pinned memory, the three streams, events, async copies,
 * the per-step metadata upload and weight/activation uploads; the ops table that ties in the
 * kernels of cuda_ops.cu, cuda_gemm.cu and cuda_attention.cu. Not here: any kernel math. */
#include "model/cuda/cuda_internal.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>

struct backend_event {
    cudaEvent_t ev;
    bool timing;
};

/* Largest piece one staging buffer carries; bigger uploads go through several in turn, so the
 * host copy into one buffer overlaps the device copy out of the one before (CUDA_N_STAGING). */
#define CUDA_STAGING_CHUNK ((size_t)32 << 20)

/* ------------------------------------------------------------------------------------------ */
/* staging and uploads                                                                         */

void cuda_upload_staged(cuda_impl *ci, cudaStream_t s, void *dst, const void *src, size_t bytes) {
    size_t done = 0;
    while (done < bytes) {
        size_t n = bytes - done < CUDA_STAGING_CHUNK ? bytes - done : CUDA_STAGING_CHUNK;
        cuda_staging *st = &ci->staging[ci->staging_next];
        ci->staging_next = (ci->staging_next + 1) % CUDA_N_STAGING;
        CUDA_CHECK(cudaEventSynchronize(st->done)); /* the last copy out of it has finished */
        if (st->cap < n) {
            size_t cap = (size_t)64 << 10;
            while (cap < n) cap *= 2;
            if (st->host) CUDA_CHECK(cudaFreeHost(st->host));
            CUDA_CHECK(cudaHostAlloc(&st->host, cap, cudaHostAllocDefault));
            st->cap = cap;
        }
        /* several threads: one reads a file mapping at a few GB/s, far below the link */
        kv_memcpy_parallel(st->host, (const char *)src + done, n, ci->copy_threads);
        CUDA_CHECK(cudaMemcpyAsync((char *)dst + done, st->host, n, cudaMemcpyHostToDevice, s));
        CUDA_CHECK(cudaEventRecord(st->done, s));
        done += n;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* memory                                                                                      */

static void cuda_destroy(backend *be);

static void *cuda_dev_alloc(backend *, size_t bytes) {
    void *p = NULL;
    CUDA_CHECK(cudaMalloc(&p, bytes ? bytes : 256));
    return p;
}

static void cuda_dev_free(backend *be, void *p) {
    if (!p) return;
    cuda_fp8_forget(cuda_impl_of(be), p);
    CUDA_CHECK(cudaFree(p));
}

static size_t cuda_dev_free_bytes(backend *) {
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    return free_b;
}

static void *cuda_host_alloc(backend *, size_t bytes) {
    void *p = NULL;
    if (cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of pinnable memory is the caller's to handle */
        return NULL;
    }
    return p;
}

static void cuda_host_free(backend *, void *p) {
    if (p) CUDA_CHECK(cudaFreeHost(p));
}

/* Synchronous copies ride the compute stream so they are ordered after queued kernels. */
static void cuda_to_dev(backend *be, void *dst, const void *src, size_t bytes) {
    cudaStream_t s = cuda_compute_stream(be);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
}

static void cuda_to_host(backend *be, void *dst, const void *src, size_t bytes) {
    cudaStream_t s = cuda_compute_stream(be);
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s));
    CUDA_CHECK(cudaStreamSynchronize(s));
}

/* f32 and f16 sources go up as they are and are converted on the device, one chunk at a time
 * through a temporary buffer. A bf16 upload returns once src is copied into staging: its device
 * copy is still running, in order on the compute stream, so the next upload's host copy overlaps
 * it (start-up reads the weights while copying them). */
static void weight_upload_into(backend *be, __nv_bfloat16 *dst, const void *src, kv_dtype src_dtype,
                               size_t n) {
    cuda_impl *ci = cuda_impl_of(be);
    cudaStream_t s = cuda_compute_stream(be);
    if (src_dtype == KV_DTYPE_BF16) {
        cuda_upload_staged(ci, s, dst, src, n * 2);
        return;
    }
    size_t esz = kv_dtype_size(src_dtype);
    size_t chunk = CUDA_STAGING_CHUNK / 4; /* elements */
    void *tmp = cuda_dev_alloc(be, (n < chunk ? n : chunk) * esz);
    for (size_t i = 0; i < n; i += chunk) {
        size_t m = n - i < chunk ? n - i : chunk;
        cuda_upload_staged(ci, s, tmp, (const char *)src + i * esz, m * esz);
        if (src_dtype == KV_DTYPE_F32)
            cuda_convert_f32_to_bf16(s, dst + i, (const float *)tmp, m);
        else
            cuda_convert_f16_to_bf16(s, dst + i, (const __half *)tmp, m);
    }
    CUDA_CHECK(cudaStreamSynchronize(s));
    cuda_dev_free(be, tmp);
}

static void *cuda_weight_upload(backend *be, const void *src, kv_dtype src_dtype, size_t n) {
    __nv_bfloat16 *dst = (__nv_bfloat16 *)cuda_dev_alloc(be, n * 2);
    weight_upload_into(be, dst, src, src_dtype, n);
    return dst;
}

/* Each part goes straight from its source into its rows of the tensor: no stacking copy on the
 * host. */
static void *cuda_weight_upload_parts(backend *be, int n_parts, const void *const *srcs,
                                      const size_t *counts, kv_dtype src_dtype) {
    size_t n = 0;
    for (int i = 0; i < n_parts; i++) n += counts[i];
    __nv_bfloat16 *dst = (__nv_bfloat16 *)cuda_dev_alloc(be, n * 2);
    size_t at = 0;
    for (int i = 0; i < n_parts; i++) {
        weight_upload_into(be, dst + at, srcs[i], src_dtype, counts[i]);
        at += counts[i];
    }
    return dst;
}

static void *cuda_act_upload_f32(backend *be, const float *src, size_t n) {
    return cuda_weight_upload(be, src, KV_DTYPE_F32, n);
}

/* Downloads to pageable memory of more than 2 parts of this size are split: part i is copied
 * device -> pinned with its own event, and thread i copies it on (pinned -> pageable) as soon as
 * that event fires, so the host copies (~8-10 GB/s per thread) overlap each other and the
 * device-to-host copies of the later parts. */
#define CUDA_DOWNLOAD_PART ((size_t)4 << 20)

typedef struct download_part {
    char *dst;
    const char *src;
    size_t n;
    cudaEvent_t ready;
    int device;
} download_part;

static void *download_part_run(void *arg) {
    download_part *p = (download_part *)arg;
    CUDA_CHECK(cudaSetDevice(p->device));
    CUDA_CHECK(cudaEventSynchronize(p->ready));
    memcpy(p->dst, p->src, p->n);
    return NULL;
}

/* Converts to f32 on the device, then copies straight into dst when it is pinned (host_alloc),
 * else through a pinned buffer in parts, see CUDA_DOWNLOAD_PART. */
static void cuda_act_download_f32(backend *be, float *dst, const void *src, size_t n) {
    cuda_impl *ci = cuda_impl_of(be);
    cuda_download *dl = &ci->download;
    cudaStream_t s = cuda_compute_stream(be);
    if (n == 0) return;
    KV_CHECK(!ci->capturing);
    if (dl->dev_cap < n) {
        if (dl->dev) CUDA_CHECK(cudaFree(dl->dev));
        dl->dev_cap = n;
        CUDA_CHECK(cudaMalloc(&dl->dev, n * sizeof(float)));
    }
    cuda_convert_bf16_to_f32(s, dl->dev, (const __nv_bfloat16 *)src, n);

    cudaPointerAttributes attr;
    CUDA_CHECK(cudaPointerGetAttributes(&attr, dst)); /* plain malloc: cudaMemoryTypeUnregistered */
    if (attr.type == cudaMemoryTypeHost) {
        CUDA_CHECK(cudaMemcpyAsync(dst, dl->dev, n * sizeof(float), cudaMemcpyDeviceToHost, s));
        CUDA_CHECK(cudaStreamSynchronize(s));
        return;
    }
    if (dl->host_cap < n) {
        if (dl->host) CUDA_CHECK(cudaFreeHost(dl->host));
        dl->host_cap = n;
        CUDA_CHECK(cudaHostAlloc(&dl->host, n * sizeof(float), cudaHostAllocDefault));
    }
    size_t bytes = n * sizeof(float);
    int k = (int)(bytes / CUDA_DOWNLOAD_PART);
    if (k > CUDA_DOWNLOAD_PARTS) k = CUDA_DOWNLOAD_PARTS;
    if (k < 2) {
        CUDA_CHECK(cudaMemcpyAsync(dl->host, dl->dev, bytes, cudaMemcpyDeviceToHost, s));
        CUDA_CHECK(cudaStreamSynchronize(s));
        memcpy(dst, dl->host, bytes);
        return;
    }
    download_part parts[CUDA_DOWNLOAD_PARTS];
    pthread_t tid[CUDA_DOWNLOAD_PARTS];
    bool started[CUDA_DOWNLOAD_PARTS] = {false};
    size_t per = ((bytes + (size_t)k - 1) / (size_t)k + 63) / 64 * 64;
    for (int i = 0; i < k; i++) {
        size_t off = (size_t)i * per,
               len = off >= bytes ? 0 : (bytes - off < per ? bytes - off : per);
        parts[i] = (download_part){(char *)dst + off, (const char *)dl->host + off, len,
                                   dl->part_ready[i], ci->device};
        if (len)
            CUDA_CHECK(cudaMemcpyAsync((char *)dl->host + off, (const char *)dl->dev + off, len,
                                       cudaMemcpyDeviceToHost, s));
        CUDA_CHECK(cudaEventRecord(dl->part_ready[i], s));
    }
    /* the caller takes part 0 and any part whose thread did not start */
    for (int i = 1; i < k; i++)
        started[i] = pthread_create(&tid[i], NULL, download_part_run, &parts[i]) == 0;
    for (int i = 0; i < k; i++)
        if (!started[i]) download_part_run(&parts[i]);
    for (int i = 1; i < k; i++)
        if (started[i]) pthread_join(tid[i], NULL);
}

/* ------------------------------------------------------------------------------------------ */
/* async copies and events                                                                     */

/* n > 1 copies go as one cudaMemcpyBatchAsync (one call into the driver, which may spread them
 * over the copy engines) unless KVSERVE_CUDA_MEMCPY_BATCH=0 chose one cudaMemcpyAsync each. The
 * batch as a whole is in stream order, so events recorded or waited on around it mean what they
 * did; srcAccessOrder Stream keeps the source reads in stream order too (the store stream reads
 * device blocks only after waiting on a compute event). Copies within a batch run in no set
 * order: the entries never overlap (distinct blocks and host slots). */
static void cuda_copy_async(backend *be, backend_stream s, int n, void *const *dsts,
                            const void *const *srcs, const size_t *sizes) {
    cuda_impl *ci = cuda_impl_of(be);
    cudaStream_t st = ci->streams[s];
/* the call as CUDA 13 declares it; 12.8-12.9 had an extra failIdx argument, older none at all */
#if CUDART_VERSION >= 13000
    if (n > 1 && ci->memcpy_batch) {
        cudaMemcpyAttributes attr = {};
        attr.srcAccessOrder = cudaMemcpySrcAccessOrderStream;
        attr.flags = cudaMemcpyFlagPreferOverlapWithCompute; /* a hint: copy engines, not SMs */
        size_t attr_first = 0;                               /* attr covers copies 0..n-1 */
        CUDA_CHECK(cudaMemcpyBatchAsync(dsts, srcs, sizes, (size_t)n, &attr, &attr_first, 1, st));
        return;
    }
#endif
    for (int i = 0; i < n; i++)
        CUDA_CHECK(cudaMemcpyAsync(dsts[i], srcs[i], sizes[i], cudaMemcpyDefault, st));
}

static void cuda_copy_2d_async(backend *be, backend_stream s, void *dst, size_t dpitch,
                               const void *src, size_t spitch, size_t width, size_t height) {
    CUDA_CHECK(cudaMemcpy2DAsync(dst, dpitch, src, spitch, width, height, cudaMemcpyDefault,
                                 cuda_impl_of(be)->streams[s]));
}

static backend_event *cuda_event_record(backend *be, backend_stream s) {
    cuda_impl *ci = cuda_impl_of(be);
    backend_event *e = (backend_event *)kv_malloc(sizeof *e);
    e->timing = ci->event_timing;
    CUDA_CHECK(
        cudaEventCreateWithFlags(&e->ev, e->timing ? cudaEventDefault : cudaEventDisableTiming));
    CUDA_CHECK(cudaEventRecord(e->ev, ci->streams[s]));
    return e;
}

static bool cuda_event_done(backend *, backend_event *e) {
    cudaError_t r = cudaEventQuery(e->ev);
    if (r == cudaErrorNotReady) return false;
    CUDA_CHECK(r);
    return true;
}

static void cuda_event_wait(backend *be, backend_stream s, backend_event *e) {
    CUDA_CHECK(cudaStreamWaitEvent(cuda_impl_of(be)->streams[s], e->ev, 0));
}

static void cuda_event_sync(backend *, backend_event *e) {
    CUDA_CHECK(cudaEventSynchronize(e->ev));
}

static void cuda_event_free(backend *, backend_event *e) {
    if (!e) return;
    CUDA_CHECK(cudaEventDestroy(e->ev));
    free(e);
}

static double cuda_event_elapsed(backend *, backend_event *start, backend_event *end) {
    KV_CHECK(start->timing && end->timing); /* cuda_backend_set_event_timing(be, true) first */
    float ms = 0;
    CUDA_CHECK(cudaEventElapsedTime(&ms, start->ev, end->ev));
    return ms * 1e-3;
}

static void cuda_sync(backend *be) {
    cuda_impl *ci = cuda_impl_of(be);
    for (int i = 0; i < BACKEND_NUM_STREAMS; i++) CUDA_CHECK(cudaStreamSynchronize(ci->streams[i]));
}

/* ------------------------------------------------------------------------------------------ */
/* per-step metadata                                                                           */

/* One int32 upload per step: tokens, positions, token_seq, seq_start, seq_len, out_rows,
 * block_table, in that order. */
static void cuda_step_begin(backend *be, const backend_batch *b) {
    cuda_impl *ci = cuda_impl_of(be);
    cuda_step *st = &ci->step;
    /* the invariants cpu_step_begin checks: the kernels index with these values unchecked */
    KV_CHECK(b->n_tokens >= 0 && b->n_seqs >= 0 && b->n_out >= 0 && b->n_out <= b->n_tokens);
    KV_CHECK(b->max_blocks >= 0);
    KV_CHECK(b->seq_start[0] == 0 && b->seq_start[b->n_seqs] == b->n_tokens);
    /* token_seq below writes [seq_start[s], seq_start[s + 1]): in bounds once these hold */
    for (int s = 0; s < b->n_seqs; s++) {
        int first = b->seq_start[s], end = b->seq_start[s + 1];
        KV_CHECK(first <= end && end <= b->n_tokens && end - first <= b->seq_len[s]);
        for (int t = first; t < end; t++) /* attention: new tokens at consecutive positions */
            KV_CHECK(b->positions[t] == b->seq_len[s] - (end - t));
    }
    for (int r = 0; r < b->n_out; r++)
        KV_CHECK(b->out_rows[r] >= 0 && b->out_rows[r] < b->n_tokens);
    size_t nt = (size_t)b->n_tokens, ns = (size_t)b->n_seqs;
    size_t n_bt = ns * (size_t)b->max_blocks;
    size_t total = 3 * nt + (ns + 1) + ns + (size_t)b->n_out + n_bt;

    KV_CHECK(!ci->capturing);
    if (st->d_meta_cap < total) {
        cuda_graph_buffers_moved(ci);
        if (st->d_meta)
            CUDA_CHECK(cudaFree(st->d_meta)); /* synchronizes: no kernel still reads it */
        st->d_meta_cap = total + total / 2 + 1024;
        CUDA_CHECK(cudaMalloc(&st->d_meta, st->d_meta_cap * 4));
    }
    if (st->h_cap < ns + 1) {
        st->h_cap = 2 * (ns + 1);
        st->h_seq_start = (int32_t *)kv_realloc(st->h_seq_start, st->h_cap * 4);
        st->h_seq_len = (int32_t *)kv_realloc(st->h_seq_len, st->h_cap * 4);
    }
    memcpy(st->h_seq_start, b->seq_start, (ns + 1) * 4);
    memcpy(st->h_seq_len, b->seq_len, ns * 4);

    /* token_seq is derived here so kernels need no search */
    int32_t *meta = (int32_t *)kv_malloc(total * 4 + 4);
    int32_t *p = meta;
    memcpy(p, b->tokens, nt * 4), p += nt;
    memcpy(p, b->positions, nt * 4), p += nt;
    for (size_t s = 0; s < ns; s++)
        for (int t = b->seq_start[s]; t < b->seq_start[s + 1]; t++) p[t] = (int32_t)s;
    p += nt;
    memcpy(p, b->seq_start, (ns + 1) * 4), p += ns + 1;
    memcpy(p, b->seq_len, ns * 4), p += ns;
    memcpy(p, b->out_rows, (size_t)b->n_out * 4), p += b->n_out;
    memcpy(p, b->block_table, n_bt * 4);
    cuda_upload_staged(ci, ci->streams[BACKEND_STREAM_COMPUTE], st->d_meta, meta, total * 4);
    free(meta);

    int32_t *d = st->d_meta;
    st->tokens = d, d += nt;
    st->positions = d, d += nt;
    st->token_seq = d, d += nt;
    st->seq_start = d, d += ns + 1;
    st->seq_len = d, d += ns;
    st->out_rows = d, d += b->n_out;
    st->block_table = d;
    st->n_tokens = b->n_tokens;
    st->n_seqs = b->n_seqs;
    st->max_blocks = b->max_blocks;
    st->n_out = b->n_out;
    st->pure_decode = b->n_seqs == b->n_tokens;
    for (int i = 0; st->pure_decode && i < b->n_seqs; i++) st->pure_decode = b->seq_start[i] == i;
    ci->plan.group = 0; /* attention tiles are rebuilt for this step */
}

/* ------------------------------------------------------------------------------------------ */
/* recorded steps (CUDA graphs)                                                                */

/* A recorded step: the shape it was recorded for and the buffer generation it points into. */
struct backend_graph {
    cudaGraphExec_t exec;
    int n_tokens, n_seqs, n_out, max_blocks;
    unsigned gen;
};

void cuda_graph_buffers_moved(cuda_impl *ci) {
    KV_CHECK(!ci->capturing); /* a recording would keep the old address */
    ci->graph_gen++;
}

/* Recordings are of pure decode steps only (cuda_graph_begin), so a step fits when it is one
 * too and has the recorded shape. */
static bool graph_fits(const cuda_impl *ci, const backend_graph *g) {
    const cuda_step *st = &ci->step;
    return g->gen == ci->graph_gen && st->pure_decode && g->n_tokens == st->n_tokens &&
           g->n_seqs == st->n_seqs && g->n_out == st->n_out && g->max_blocks == st->max_blocks;
}

/* Records pure decode steps only: their attention grid comes from the step's shape alone
 * (cuda_attention.cu), while any other step's attention tiles are built on the host from its
 * lengths (attn_plan_build, which refuses to run while recording). */
static bool cuda_graph_begin(backend *be) {
    cuda_impl *ci = cuda_impl_of(be);
    if (!ci->graphs_enabled || !ci->step.pure_decode) return false;
    KV_CHECK(!ci->capturing);
    /* thread-local: another thread's unrelated CUDA calls (offload copies) stay legal */
    CUDA_CHECK(cudaStreamBeginCapture(cuda_compute_stream(be), cudaStreamCaptureModeThreadLocal));
    ci->capturing = true;
    return true;
}

static backend_graph *cuda_graph_end(backend *be) {
    cuda_impl *ci = cuda_impl_of(be);
    KV_CHECK(ci->capturing);
    cudaStream_t s = cuda_compute_stream(be);
    cudaGraph_t graph;
    CUDA_CHECK(cudaStreamEndCapture(s, &graph));
    ci->capturing = false;
    backend_graph *g = (backend_graph *)kv_calloc(1, sizeof *g);
    CUDA_CHECK(cudaGraphInstantiate(&g->exec, graph, 0));
    CUDA_CHECK(cudaGraphDestroy(graph));
    const cuda_step *st = &ci->step;
    g->n_tokens = st->n_tokens, g->n_seqs = st->n_seqs, g->n_out = st->n_out;
    g->max_blocks = st->max_blocks, g->gen = ci->graph_gen;
    CUDA_CHECK(cudaGraphLaunch(g->exec, s));
    return g;
}

static bool cuda_graph_launch(backend *be, backend_graph *g) {
    cuda_impl *ci = cuda_impl_of(be);
    KV_CHECK(!ci->capturing);
    if (!graph_fits(ci, g)) return false;
    CUDA_CHECK(cudaGraphLaunch(g->exec, cuda_compute_stream(be)));
    return true;
}

static void cuda_graph_free(backend *, backend_graph *g) {
    if (!g) return;
    CUDA_CHECK(cudaGraphExecDestroy(g->exec));
    free(g);
}

/* ------------------------------------------------------------------------------------------ */
/* create / destroy                                                                            */

static const backend_ops cuda_ops = {
    .destroy = cuda_destroy,
    .dev_alloc = cuda_dev_alloc,
    .dev_free = cuda_dev_free,
    .dev_free_bytes = cuda_dev_free_bytes,
    .host_alloc = cuda_host_alloc,
    .host_free = cuda_host_free,
    .to_dev = cuda_to_dev,
    .to_host = cuda_to_host,
    .weight_upload = cuda_weight_upload,
    .weight_upload_fp8 = cuda_weight_upload_fp8,
    .weight_upload_parts = cuda_weight_upload_parts,
    .act_upload_f32 = cuda_act_upload_f32,
    .act_download_f32 = cuda_act_download_f32,
    .copy_async = cuda_copy_async,
    .copy_2d_async = cuda_copy_2d_async,
    .event_record = cuda_event_record,
    .event_done = cuda_event_done,
    .event_wait = cuda_event_wait,
    .event_sync = cuda_event_sync,
    .event_free = cuda_event_free,
    .event_elapsed = cuda_event_elapsed,
    .sync = cuda_sync,
    .step_begin = cuda_step_begin,
    .embed = cuda_op_embed,
    .rmsnorm = cuda_op_rmsnorm,
    .add_rmsnorm = cuda_op_add_rmsnorm,
    .add = cuda_op_add,
    .matmul = cuda_op_matmul,
    .rope = cuda_op_rope,
    .head_rmsnorm = cuda_op_head_rmsnorm,
    .swiglu = cuda_op_swiglu,
    .geglu = cuda_op_geglu,
    .scale = cuda_op_scale,
    .softcap = cuda_op_softcap,
    .kv_write = cuda_op_kv_write,
    .attention = cuda_op_attention,
    .gather_rows = cuda_op_gather_rows,
    .graph_begin = cuda_graph_begin,
    .graph_end = cuda_graph_end,
    .graph_launch = cuda_graph_launch,
    .graph_free = cuda_graph_free,
};

/* Switches for measuring (tests/bench/NOTES-cuda.md, README "Development"), read once here at
 * create into cuda_impl:
 *   KVSERVE_CUDA_GRAPHS=0  record no decode steps (graph_begin returns false)
 *   KVSERVE_CUDA_PDL=0     launch kernels without programmatic dependent launch
 *   KVSERVE_CUDA_GEMV=N    the GEMV kernel for matmuls of n <= N rows (0: cuBLASLt for every n)
 *   KVSERVE_CUDA_MEMCPY_BATCH=0  copy_async issues one cudaMemcpyAsync per copy, not one
 *                          cudaMemcpyBatchAsync for them all
 *   KVSERVE_CUDA_PORTABLE=1  the portable (sm_80+) attention kernels even where the Hopper ones
 *                          run (cuda_pick_attn_path); anything else: the device's own path
 * "0" turns a boolean switch off; unset or anything else leaves it on. */
static bool env_switch(const char *name) {
    const char *v = getenv(name);
    return !(v && strcmp(v, "0") == 0);
}

/* KVSERVE_CUDA_GEMV as a row count; false when set to anything but an integer >= 0. */
static bool env_gemv_max_n(int *out) {
    const char *v = getenv("KVSERVE_CUDA_GEMV");
    *out = CUDA_GEMV_DEFAULT_MAX_N;
    if (!v) return true;
    char *end;
    errno = 0;
    long n = strtol(v, &end, 10);
    if (end == v || *end != '\0' || errno != 0 || n < 0 || n > INT_MAX) return false;
    *out = (int)n;
    return true;
}

int cuda_backend_device_count(void) {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

backend *cuda_backend_create(kv_error *err) {
    if (cuda_backend_device_count() <= 0) {
        kv_error_set(err, "no CUDA device found (driver missing or no GPU visible)");
        return NULL;
    }
    int gemv_max_n;
    if (!env_gemv_max_n(&gemv_max_n)) {
        kv_error_set(err, "KVSERVE_CUDA_GEMV='%s': expected a row count (an integer >= 0)",
                     getenv("KVSERVE_CUDA_GEMV"));
        return NULL;
    }
    cuda_impl *ci = (cuda_impl *)kv_calloc(1, sizeof *ci);
    ci->device = 0;
    CUDA_CHECK(cudaSetDevice(ci->device));
    cudaDeviceProp prop;
    CUDA_CHECK(cudaGetDeviceProperties(&prop, ci->device));
    if (!cuda_build_runs_on(prop.major, prop.minor)) {
        cuda_no_code_error(err, ci->device, prop.name, prop.major, prop.minor);
        free(ci);
        return NULL;
    }
    if (!cuda_probe(ci, &prop, err)) {
        free(ci);
        return NULL;
    }
    ci->cc_major = prop.major;
    ci->cc_minor = prop.minor;
    ci->attn_path = cuda_pick_attn_path(ci);
    ci->n_sms = prop.multiProcessorCount;
    ci->smem_optin = prop.sharedMemPerBlockOptin;
    for (int i = 0; i < BACKEND_NUM_STREAMS; i++)
        CUDA_CHECK(cudaStreamCreateWithFlags(&ci->streams[i], cudaStreamNonBlocking));
    for (int i = 0; i < CUDA_N_STAGING; i++) {
        CUDA_CHECK(cudaEventCreateWithFlags(&ci->staging[i].done, cudaEventDisableTiming));
        CUDA_CHECK(cudaEventRecord(ci->staging[i].done, ci->streams[BACKEND_STREAM_COMPUTE]));
    }
    for (int i = 0; i < CUDA_DOWNLOAD_PARTS; i++)
        CUDA_CHECK(cudaEventCreateWithFlags(&ci->download.part_ready[i], cudaEventDisableTiming));
    cuda_gemm_init(ci);
    ci->graphs_enabled = env_switch("KVSERVE_CUDA_GRAPHS");
    ci->pdl = env_switch("KVSERVE_CUDA_PDL") && prop.major >= 9; /* sm_90: griddepcontrol */
    ci->memcpy_batch = env_switch("KVSERVE_CUDA_MEMCPY_BATCH");
    ci->gemv_max_n = gemv_max_n;
    ci->copy_threads = kv_copy_threads();

    backend *be = (backend *)kv_calloc(1, sizeof *be);
    be->ops = &cuda_ops;
    be->name = "cuda";
    be->act_dtype = KV_DTYPE_BF16;
    be->weight_dtype = KV_DTYPE_BF16;
    be->kv_dtype = KV_DTYPE_BF16;
    be->impl = ci;
    cuda_describe(be);
    return be;
}

void cuda_backend_set_event_timing(backend *be, bool on) {
    cuda_impl_of(be)->event_timing = on;
}

static void cuda_destroy(backend *be) {
    cuda_impl *ci = cuda_impl_of(be);
    CUDA_CHECK(cudaDeviceSynchronize());
    cuda_gemm_free(ci);
    cuda_fp8_free(ci);
    for (int i = 0; i < CUDA_N_STAGING; i++) {
        if (ci->staging[i].host) CUDA_CHECK(cudaFreeHost(ci->staging[i].host));
        CUDA_CHECK(cudaEventDestroy(ci->staging[i].done));
    }
    if (ci->step.d_meta) CUDA_CHECK(cudaFree(ci->step.d_meta));
    if (ci->plan.d_tiles) CUDA_CHECK(cudaFree(ci->plan.d_tiles));
    if (ci->attn_scratch) CUDA_CHECK(cudaFree(ci->attn_scratch));
    if (ci->download.dev) CUDA_CHECK(cudaFree(ci->download.dev));
    if (ci->download.host) CUDA_CHECK(cudaFreeHost(ci->download.host));
    for (int i = 0; i < CUDA_DOWNLOAD_PARTS; i++)
        CUDA_CHECK(cudaEventDestroy(ci->download.part_ready[i]));
    free(ci->step.h_seq_start);
    free(ci->step.h_seq_len);
    for (int i = 0; i < BACKEND_NUM_STREAMS; i++) CUDA_CHECK(cudaStreamDestroy(ci->streams[i]));
    free(ci);
    free(be);
}
