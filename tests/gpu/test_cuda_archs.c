/* Which GPUs a CUDA build runs on (cuda_archs_run_on: machine code per gpu_archs target, PTX of
 * the newest) and the message for one it does not: host logic of the CUDA backend, no GPU needed
 * (no CUDA call). Expected answers are NVIDIA's compatibility rules: sm_XY code runs on X.Z for
 * Z >= Y, sm_XYa on X.Y alone, PTX of X.Y on anything >= X.Y. */
#include <stdio.h>
#include <string.h>

#include "model/cuda/cuda_backend.h"

static int n_failed;

static void expect_runs(const char *archs, int major, int minor, bool want) {
    bool got = cuda_archs_run_on(archs, major, minor);
    if (got != want) n_failed++;
    printf("%s [%s] on %d.%d: %s (want %s)\n", got == want ? "ok  " : "FAIL", archs, major, minor,
           got ? "runs" : "no code", want ? "runs" : "no code");
}

static void expect_msg(const char *archs, int major, int minor, const char *needle) {
    kv_error err = {{0}};
    cuda_archs_no_code_error(&err, archs, 0, "Test GPU", major, minor);
    bool ok = strstr(err.msg, needle) != NULL;
    if (!ok) n_failed++;
    printf("%s message for %d.%d contains \"%s\": %s\n", ok ? "ok  " : "FAIL", major, minor, needle,
           err.msg);
}

int main(void) {
    const char *def = "80,86,89,90a,100,120,ptx120"; /* the default gpu_archs */
    printf("this build: %s\n", cuda_backend_archs());
    expect_runs(def, 8, 0, true);   /* A100 */
    expect_runs(def, 8, 6, true);   /* RTX 3090 */
    expect_runs(def, 8, 7, true);   /* Orin: sm_80 code */
    expect_runs(def, 8, 9, true);   /* L4, RTX 4090 */
    expect_runs(def, 9, 0, true);   /* H100, H200 */
    expect_runs(def, 10, 0, true);  /* B200 */
    expect_runs(def, 10, 3, true);  /* B300: sm_100 code */
    expect_runs(def, 12, 0, true);  /* RTX 5090 */
    expect_runs(def, 12, 1, true);  /* GB10: sm_120 code */
    expect_runs(def, 13, 0, true);  /* a later GPU: the PTX */
    expect_runs(def, 7, 5, false);  /* T4: no bf16 mma.sync */
    expect_runs(def, 11, 0, false); /* Thor: neither sm_100 code nor compute_120 PTX */
    expect_runs("90a,ptx90", 9, 0, true);
    expect_runs("90a,ptx90", 8, 9, false);
    expect_runs("90a,ptx90", 10, 0, true); /* the PTX */
    expect_runs("90a", 10, 0, false);      /* 90a code is 9.0 alone */
    expect_runs("100a", 10, 3, false);
    expect_runs("86,ptx86", 8, 0, false); /* sm_86 code needs 8.6+, so does its PTX */
    expect_runs("86,ptx86", 9, 0, true);
    expect_runs("80,90a,ptx90", 8, 9, true);
    expect_msg(def, 7, 5, "compute capability 7.5");
    expect_msg(def, 7, 5, "need compute capability 8.0 or later");
    expect_msg(def, 7, 5, "sm_80 sm_86 sm_89 sm_90a sm_100 sm_120 +PTX compute_120");
    expect_msg("90a,ptx90", 8, 6, "Test GPU");
    expect_msg("90a,ptx90", 8, 6, "-Dgpu_archs='90a;86'");
    printf("%s: %d check(s) failed\n", n_failed ? "FAIL" : "PASS", n_failed);
    return n_failed ? 1 : 0;
}
