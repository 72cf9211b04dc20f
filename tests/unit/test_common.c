/* Unit tests for model/common: half-float conversions, dtype names, whole-file reads. */
#include <check.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "model/common.h"

START_TEST(bf16_round_trip_is_exact_for_representable_values) {
    /* every bf16 bit pattern that is not NaN converts to f32 and back unchanged */
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = kv_bf16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        ck_assert_uint_eq(kv_f32_to_bf16(f), h);
    }
}
END_TEST

START_TEST(bf16_rounds_to_nearest_even) {
    /* 1 + 2^-8 lies halfway between bf16 1.0 and 1.0078125: ties go to the even mantissa (1.0) */
    ck_assert_uint_eq(kv_f32_to_bf16(1.0f + 1.0f / 256), 0x3f80);
    /* 1 + 3 * 2^-8 lies halfway between 1.0078125 (odd) and 1.015625 (even) */
    ck_assert_uint_eq(kv_f32_to_bf16(1.0f + 3.0f / 256), 0x3f82);
}
END_TEST

START_TEST(f16_round_trip_is_exact_for_representable_values) {
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = kv_f16_to_f32((uint16_t)h);
        if (isnan(f)) continue;
        ck_assert_uint_eq(kv_f32_to_f16(f), h);
    }
}
END_TEST

START_TEST(f16_known_values) {
    ck_assert_float_eq(kv_f16_to_f32(0x3c00), 1.0f);
    ck_assert_float_eq(kv_f16_to_f32(0xc000), -2.0f);
    ck_assert_float_eq(kv_f16_to_f32(0x7bff), 65504.0f);
    ck_assert_float_eq(kv_f16_to_f32(0x0001), ldexpf(1.0f, -24));
    ck_assert_uint_eq(kv_f32_to_f16(1e6f), 0x7c00);
}
END_TEST

/* e4m3 values checked against the format's definition (OCP fp8 e4m3fn), not against the code. */
START_TEST(e4m3_known_values_and_round_trip) {
    ck_assert_float_eq(kv_e4m3_to_f32(0x38), 1.0f);         /* exp 7, man 0 */
    ck_assert_float_eq(kv_e4m3_to_f32(0x7e), 448.0f);       /* largest finite */
    ck_assert_float_eq(kv_e4m3_to_f32(0x01), 0.001953125f); /* smallest subnormal, 2^-9 */
    ck_assert_float_eq(kv_e4m3_to_f32(0x08), 0.015625f);    /* smallest normal, 2^-6 */
    ck_assert_float_eq(kv_e4m3_to_f32(0xc4), -3.0f);        /* -1.5 * 2 */
    ck_assert(isnan(kv_e4m3_to_f32(0x7f)) && isnan(kv_e4m3_to_f32(0xff)));
    for (int x = 0; x < 256; x++) {
        if ((x & 0x7f) == 0x7f) continue;
        float f = kv_e4m3_to_f32((uint8_t)x);
        ck_assert_msg(kv_f32_to_e4m3(f) == x, "0x%02x -> %g -> 0x%02x", x, f, kv_f32_to_e4m3(f));
        /* everything between f and its upper neighbour goes to the nearer one, ties to even */
        if ((x & 0x7f) < 0x7e) {
            float g = kv_e4m3_to_f32((uint8_t)(x + 1)), mid = (f + g) / 2;
            int even = (x & 1) ? x + 1 : x;
            ck_assert_int_eq(kv_f32_to_e4m3(mid), even);
            ck_assert_int_eq(kv_f32_to_e4m3(nextafterf(mid, f)), x);
            ck_assert_int_eq(kv_f32_to_e4m3(nextafterf(mid, g)), x + 1);
        }
    }
    /* saturating: past 448 and infinities clamp; NaN stays NaN */
    ck_assert_int_eq(kv_f32_to_e4m3(470.0f), 0x7e);
    ck_assert_int_eq(kv_f32_to_e4m3(1e9f), 0x7e);
    ck_assert_int_eq(kv_f32_to_e4m3(-INFINITY), 0xfe);
    ck_assert_int_eq(kv_f32_to_e4m3(NAN) & 0x7f, 0x7f);
    ck_assert_int_eq(kv_f32_to_e4m3(1e-4f), 0x00); /* below half the smallest subnormal */
}
END_TEST

START_TEST(dtype_names_parse) {
    kv_dtype dt;
    ck_assert(kv_dtype_parse("bfloat16", &dt) && dt == KV_DTYPE_BF16);
    ck_assert(kv_dtype_parse("F16", &dt) && dt == KV_DTYPE_F16);
    ck_assert(kv_dtype_parse("float32", &dt) && dt == KV_DTYPE_F32);
    ck_assert(!kv_dtype_parse("int8", &dt));
}
END_TEST

/* Every byte arrives for sizes that do not split evenly, with 1..16 threads (the GPU machine's
 * 16 cores found a lost tail: pieces of floor(n / k) pages). */
START_TEST(memcpy_parallel_copies_every_byte) {
    const size_t sizes[] = {1, 4096, ((size_t)5 << 20) * 4 + 4, ((size_t)33 << 20) + 4095};
    for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
        size_t n = sizes[si];
        uint8_t *src = kv_malloc(n), *dst = kv_malloc(n);
        for (size_t i = 0; i < n; i++) src[i] = (uint8_t)(i * 131 + 7);
        for (int t = 1; t <= 16; t *= 2) {
            memset(dst, 0, n);
            kv_memcpy_parallel(dst, src, n, t);
            ck_assert_msg(memcmp(dst, src, n) == 0, "n %zu threads %d", n, t);
        }
        free(src), free(dst);
    }
}
END_TEST

START_TEST(read_file_whole_missing_and_too_big) {
    char path[] = "/tmp/kv_common_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    /* 10000 bytes: more than the first 4096-byte read, with a NUL inside */
    char data[10000];
    for (size_t i = 0; i < sizeof data; i++) data[i] = (char)(i * 7);
    ck_assert_int_eq(write(fd, data, sizeof data), (ssize_t)sizeof data);
    close(fd);
    size_t len = 0;
    kv_error err = {{0}};
    char *buf = kv_read_file(path, sizeof data, &len, &err);
    ck_assert_ptr_nonnull(buf);
    ck_assert_uint_eq(len, sizeof data);
    ck_assert(memcmp(buf, data, sizeof data) == 0);
    ck_assert_int_eq(buf[len], '\0');
    free(buf);
    ck_assert_ptr_null(kv_read_file(path, sizeof data - 1, &len, &err));
    ck_assert_int_eq(errno, EFBIG);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
    unlink(path);
    ck_assert_ptr_null(kv_read_file(path, sizeof data, &len, &err));
    ck_assert_int_eq(errno, ENOENT);
    ck_assert_ptr_nonnull(strstr(err.msg, path));
}
END_TEST

int main(void) {
    Suite *s = suite_create("common");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, bf16_round_trip_is_exact_for_representable_values);
    tcase_add_test(tc, bf16_rounds_to_nearest_even);
    tcase_add_test(tc, f16_round_trip_is_exact_for_representable_values);
    tcase_add_test(tc, f16_known_values);
    tcase_add_test(tc, e4m3_known_values_and_round_trip);
    tcase_add_test(tc, dtype_names_parse);
    tcase_add_test(tc, read_file_whole_missing_and_too_big);
    tcase_add_test(tc, memcpy_parallel_copies_every_byte);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
