/* Shared basics: dtype names, error formatting, checked allocation, whole-file reads, half-float
 * conversion, a parallel memcpy. */
#include "model/common.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

size_t kv_dtype_size(kv_dtype dt) {
    switch (dt) {
    case KV_DTYPE_F32:
        return 4;
    case KV_DTYPE_F16:
        return 2;
    case KV_DTYPE_BF16:
        return 2;
    case KV_DTYPE_F8_E4M3:
        return 1;
    }
    KV_CHECK(!"unknown dtype");
}

const char *kv_dtype_name(kv_dtype dt) {
    switch (dt) {
    case KV_DTYPE_F32:
        return "F32";
    case KV_DTYPE_F16:
        return "F16";
    case KV_DTYPE_BF16:
        return "BF16";
    case KV_DTYPE_F8_E4M3:
        return "F8_E4M3";
    }
    return "?";
}

const char *kv_finish_name(kv_finish f) {
    switch (f) {
    case KV_FINISH_STOP:
        return "stop";
    case KV_FINISH_LENGTH:
        return "length";
    case KV_FINISH_ABORT:
        return "abort";
    case KV_FINISH_NONE:
    case KV_FINISH_COUNT:
        break;
    }
    return NULL;
}

bool kv_dtype_parse(const char *s, kv_dtype *out) {
    static const struct {
        const char *name;
        kv_dtype dt;
    } names[] = {{"F32", KV_DTYPE_F32},         {"float32", KV_DTYPE_F32},
                 {"F16", KV_DTYPE_F16},         {"float16", KV_DTYPE_F16},
                 {"BF16", KV_DTYPE_BF16},       {"bfloat16", KV_DTYPE_BF16},
                 {"F8_E4M3", KV_DTYPE_F8_E4M3}, {"float8_e4m3fn", KV_DTYPE_F8_E4M3}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(s, names[i].name) == 0) {
            *out = names[i].dt;
            return true;
        }
    }
    return false;
}

int kv_error_set(kv_error *err, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
    }
    return -1;
}

void kv_die(const char *file, int line, const char *what) {
    fprintf(stderr, "kvserve: fatal: %s:%d: %s\n", file, line, what);
    fflush(stderr);
    abort();
}

void *kv_malloc(size_t n) {
    void *p = malloc(n ? n : 1);
    KV_CHECK(p != NULL);
    return p;
}

void *kv_calloc(size_t n, size_t size) {
    void *p = calloc(n ? n : 1, size ? size : 1);
    KV_CHECK(p != NULL);
    return p;
}

void *kv_realloc(void *p, size_t n) {
    void *q = realloc(p, n ? n : 1);
    KV_CHECK(q != NULL);
    return q;
}

char *kv_strdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = kv_malloc(n);
    memcpy(d, s, n);
    return d;
}

char *kv_read_file(const char *path, size_t max_bytes, size_t *len, kv_error *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        int e = errno;
        kv_error_set(err, "%s: cannot open: %s", path, strerror(e));
        errno = e;
        return NULL;
    }
    size_t n = 0, cap = 0;
    char *buf = NULL;
    int e = 0;
    for (;;) {
        if (n == cap) {
            if (n > max_bytes) break;
            cap = cap ? cap * 2 : 4096;
            buf = kv_realloc(buf, cap + 1);
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0) break;
    }
    if (ferror(f)) {
        e = errno ? errno : EIO;
        kv_error_set(err, "%s: read error: %s", path, strerror(e));
    } else if (n > max_bytes) {
        e = EFBIG;
        kv_error_set(err, "%s: larger than %zu bytes", path, max_bytes);
    }
    fclose(f);
    if (e) {
        free(buf);
        errno = e;
        return NULL;
    }
    if (!buf) buf = kv_malloc(1);
    buf[n] = '\0';
    *len = n;
    return buf;
}

float kv_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &u, 4);
    return f;
}

uint16_t kv_f32_to_f16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000;
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) return (uint16_t)(sign | 0x7e00);  /* NaN */
    if (absu >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* overflow to inf */
    if (absu < 0x38800000u) {                                  /* subnormal or zero */
        float af;
        memcpy(&af, &absu, 4);
        /* 2^-24 is the f16 subnormal step; rint rounds to nearest even */
        uint32_t m = (uint32_t)__builtin_rintf(af * 16777216.0f);
        return (uint16_t)(sign | m);
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u) - ((127 - 15) << 23);
    return (uint16_t)(sign | (r >> 13));
}

float kv_e4m3_to_f32(uint8_t x) {
    uint32_t sign = (uint32_t)(x & 0x80) << 24, exp = (x >> 3) & 15, man = x & 7;
    float v;
    if (exp == 15 && man == 7) {
        v = __builtin_nanf("");
    } else if (exp == 0) {
        v = (float)man * 0.001953125f; /* subnormal: man * 2^-9 */
    } else {
        uint32_t u = ((exp - 7 + 127) << 23) | (man << 20); /* (1 + man / 8) * 2^(exp - 7) */
        memcpy(&v, &u, 4);
    }
    return sign ? -v : v;
}

uint8_t kv_f32_to_e4m3(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    uint8_t sign = (uint8_t)((u >> 24) & 0x80);
    u &= 0x7fffffffu;
    if (u > 0x7f800000u) return 0x7f;         /* NaN */
    if (u >= 0x43e00000u) return sign | 0x7e; /* >= 448 (inf too): saturate */
    if (u >= 0x3c800000u) {                   /* >= 2^-6: normal */
        u += 0x7ffffu + ((u >> 20) & 1u);     /* round to nearest even at 3 mantissa bits */
        uint32_t exp = (u >> 23) - 127 + 7, man = (u >> 20) & 7; /* rounding kept it < 464 */
        return sign | (uint8_t)(exp << 3) | (uint8_t)man;
    }
    float a;
    memcpy(&a, &u, 4);
    /* subnormal steps of 2^-9 (8 steps = 0x08, the smallest normal); rintf rounds to even */
    return sign | (uint8_t)rintf(a * 512.0f);
}

void kv_convert_to_f32(float *dst, const void *src, kv_dtype dtype, size_t n) {
    const uint16_t *h = src;
    switch (dtype) {
    case KV_DTYPE_F32:
        memcpy(dst, src, n * 4);
        break;
    case KV_DTYPE_F16:
        for (size_t i = 0; i < n; i++) dst[i] = kv_f16_to_f32(h[i]);
        break;
    case KV_DTYPE_BF16:
        for (size_t i = 0; i < n; i++) dst[i] = kv_bf16_to_f32(h[i]);
        break;
    case KV_DTYPE_F8_E4M3:
        for (size_t i = 0; i < n; i++) dst[i] = kv_e4m3_to_f32(((const uint8_t *)src)[i]);
        break;
    }
}

double kv_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#define KV_PARALLEL_MAX_THREADS 32
#define KV_MEMCPY_MIN_PIECE     ((size_t)4 << 20)

typedef struct parallel_piece {
    void (*fn)(size_t lo, size_t hi, void *ctx);
    void *ctx;
    size_t lo, hi;
} parallel_piece;

static void *parallel_piece_run(void *arg) {
    parallel_piece *p = arg;
    if (p->lo < p->hi) p->fn(p->lo, p->hi, p->ctx);
    return NULL;
}

void kv_parallel_for(size_t n, size_t min_piece, size_t align, int n_threads,
                     void (*fn)(size_t lo, size_t hi, void *ctx), void *ctx) {
    size_t k = min_piece ? n / min_piece : n;
    if (n_threads > KV_PARALLEL_MAX_THREADS) n_threads = KV_PARALLEL_MAX_THREADS;
    if (k > (size_t)(n_threads > 1 ? n_threads : 1)) k = (size_t)(n_threads > 1 ? n_threads : 1);
    if (k < 2) {
        if (n) fn(0, n, ctx);
        return;
    }
    if (align < 1) align = 1;
    parallel_piece pieces[KV_PARALLEL_MAX_THREADS];
    pthread_t tid[KV_PARALLEL_MAX_THREADS];
    bool started[KV_PARALLEL_MAX_THREADS] = {false};
    size_t per = ((n + k - 1) / k + align - 1) / align * align;
    for (size_t i = 0; i < k; i++) {
        size_t lo = i * per < n ? i * per : n;
        pieces[i] = (parallel_piece){fn, ctx, lo, n - lo < per ? n : lo + per};
    }
    for (size_t i = 1; i < k; i++)
        started[i] = pthread_create(&tid[i], NULL, parallel_piece_run, &pieces[i]) == 0;
    parallel_piece_run(&pieces[0]);
    for (size_t i = 1; i < k; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            parallel_piece_run(&pieces[i]);
    }
}

typedef struct memcpy_job {
    char *dst;
    const char *src;
} memcpy_job;

static void memcpy_range(size_t lo, size_t hi, void *ctx) {
    memcpy_job *j = ctx;
    memcpy(j->dst + lo, j->src + lo, hi - lo);
}

void kv_memcpy_parallel(void *dst, const void *src, size_t n, int n_threads) {
    memcpy_job j = {dst, src};
    /* page-aligned pieces: no page shared */
    kv_parallel_for(n, KV_MEMCPY_MIN_PIECE, 4096, n_threads, memcpy_range, &j);
}

int kv_copy_threads(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n < 1 ? 1 : n > 8 ? 8 : (int)n;
}
