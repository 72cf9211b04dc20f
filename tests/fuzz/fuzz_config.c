/* libFuzzer target: config file text through config_apply_json. A config that loads prints to JSON
 * that loads again to the same values (the printer and the reader agree on every knob). */
#include <stdint.h>
#include <stdlib.h>

#include "server/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kv_config cfg;
    config_default(&cfg);
    kv_error err = {{0}};
    if (config_apply_json(&cfg, (const char *)data, size, "fuzz", &err) != 0) {
        KV_CHECK(strncmp(err.msg, "config: ", 8) == 0);
        config_free(&cfg);
        return 0;
    }
    KV_CHECK(cfg.block_size >= 1 && cfg.block_size <= 256 &&
             (cfg.block_size & (cfg.block_size - 1)) == 0);
    KV_CHECK(cfg.port >= 0 && cfg.port <= 65535);
    char *printed = config_to_json(&cfg, false);
    kv_config again;
    config_default(&again);
    KV_CHECK(config_apply_json(&again, printed, strlen(printed), "printed", &err) == 0);
    char *printed2 = config_to_json(&again, false);
    KV_CHECK(strcmp(printed, printed2) == 0);
    free(printed);
    free(printed2);
    config_free(&again);
    config_free(&cfg);
    return 0;
}
