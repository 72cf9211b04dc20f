/* Shared basics for every module: dtypes, the two error tiers, half-float conversion.
 * Owns no state. Outside input errors travel as kv_error (a message for the user);
 * broken invariants abort through KV_CHECK with the statement, file and line. */
#ifndef KVSERVE_COMMON_H
#define KVSERVE_COMMON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* F8_E4M3: OCP fp8 e4m3fn (1 sign, 4 exponent bits of bias 7, 3 mantissa bits; no infinities,
 * 0x7f/0xff NaN, largest finite 448): KV cache elements and FP8 checkpoint weights. */
typedef enum kv_dtype { KV_DTYPE_F32, KV_DTYPE_F16, KV_DTYPE_BF16, KV_DTYPE_F8_E4M3 } kv_dtype;

size_t kv_dtype_size(kv_dtype dt);
const char *kv_dtype_name(kv_dtype dt);

/* Why a sequence ended: one enum from the sampler through the engine to the reply and /metrics. */
typedef enum kv_finish {
    KV_FINISH_NONE,   /* not ended (not the last event) */
    KV_FINISH_STOP,   /* an eos id, a stop_token_ids entry, or a stop string */
    KV_FINISH_LENGTH, /* max_tokens generated, or max_model_len reached */
    KV_FINISH_ABORT,  /* cancelled, or the engine failed */
    KV_FINISH_COUNT
} kv_finish;
/* "stop", "length", "abort" (OpenAI's finish_reason); NULL for NONE. */
const char *kv_finish_name(kv_finish f);
/* "F32"/"float32", "F16"/"float16", "BF16"/"bfloat16", "F8_E4M3"/"float8_e4m3fn" (either case);
 * false when unknown. */
bool kv_dtype_parse(const char *s, kv_dtype *out);

/* An error caused by input from outside (files, HTTP, flags): a message meant for the user. */
typedef struct kv_error {
    char msg[512];
} kv_error;

/* Formats the message into err (which may be NULL) and returns -1, so that callers can write
 * `return kv_error_set(err, "...")`. */
int kv_error_set(kv_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Invariant failures: never for outside input. */
_Noreturn void kv_die(const char *file, int line, const char *what);
#define KV_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) kv_die(__FILE__, __LINE__, #cond);                                            \
    } while (0)

/* malloc/calloc/realloc that abort on exhaustion (only for sizes the program chose). */
void *kv_malloc(size_t n);
void *kv_calloc(size_t n, size_t size);
void *kv_realloc(void *p, size_t n);
char *kv_strdup(const char *s);

static inline float kv_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t kv_f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u); /* round to nearest even */
    return (uint16_t)(u >> 16);
}

float kv_f16_to_f32(uint16_t h);
/* e4m3 (see kv_dtype) to f32, exact. */
float kv_e4m3_to_f32(uint8_t x);
/* f32 to e4m3, round to nearest even, saturating at +-448 (as CUDA's __NV_SATFINITE); NaN stays
 * NaN. */
uint8_t kv_f32_to_e4m3(float f);
uint16_t kv_f32_to_f16(float f);

/* Converts n elements of src (dtype) to f32. */
void kv_convert_to_f32(float *dst, const void *src, kv_dtype dtype, size_t n);

/* Reads a whole file into a malloc'd, NUL-terminated buffer (*len bytes without the NUL; the
 * caller frees it). NULL with err set, naming the path, when it cannot be opened or read or holds
 * more than max_bytes; errno then says why (ENOENT: missing, EFBIG: too big). */
char *kv_read_file(const char *path, size_t max_bytes, size_t *len, kv_error *err);

/* Monotonic clock in seconds. */
double kv_now(void);

/* fn(lo, hi, ctx) over [0, n) split into pieces of at least min_piece (a multiple of align, but
 * the last) on up to n_threads threads, the caller one of them; in the caller alone when that
 * leaves fewer than 2 pieces, and a piece whose thread does not start runs on the caller. */
void kv_parallel_for(size_t n, size_t min_piece, size_t align, int n_threads,
                     void (*fn)(size_t lo, size_t hi, void *ctx), void *ctx);
/* memcpy of n bytes split over up to n_threads threads (the caller is one of them; pieces of at
 * least 4 MiB), for large host copies such as weights out of a file mapping into a pinned
 * staging buffer, which one thread does at a fraction of the memory bandwidth (page faults of the
 * mapping included). n_threads <= 1, a small n or a failed thread start copies on the caller. */
void kv_memcpy_parallel(void *dst, const void *src, size_t n, int n_threads);
/* Threads worth giving kv_memcpy_parallel here: the online CPUs, at most 8. */
int kv_copy_threads(void);

#endif
