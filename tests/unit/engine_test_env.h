/* Set-up shared by the engine tests (test_scheduler, test_scheduler_tier): which backend they run
 * on (KVSERVE_TEST_DEVICE=cuda in the gpu suite, else cpu) and where stories260K lies
 * (KVSERVE_TESTDATA, default ../shared/testdata). */
#ifndef KVSERVE_ENGINE_TEST_ENV_H
#define KVSERVE_ENGINE_TEST_ENV_H

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "model/backend.h"

/* Sets *on_cuda, model_dir and *have_model. False when the GPU run was asked for but there is no
 * GPU: the caller prints nothing more and exits 77 (skipped). */
static inline bool engine_test_env(bool *on_cuda, char *model_dir, size_t cap, bool *have_model) {
    const char *dev = getenv("KVSERVE_TEST_DEVICE");
    *on_cuda = dev && strcmp(dev, "cuda") == 0;
    if (*on_cuda && !backend_cuda_available()) {
        printf("SKIP: KVSERVE_TEST_DEVICE=cuda but no GPU\n");
        return false;
    }
    const char *td = getenv("KVSERVE_TESTDATA");
    snprintf(model_dir, cap, "%s/models/stories260K", td ? td : "../shared/testdata");
    char probe[1100];
    snprintf(probe, sizeof probe, "%s/config.json", model_dir);
    *have_model = access(probe, R_OK) == 0;
    if (!*have_model)
        printf("SKIP: needs stories260K (outside data, not in the repository): %s not found; "
               "set KVSERVE_TESTDATA\n",
               probe);
    return true;
}

#endif
