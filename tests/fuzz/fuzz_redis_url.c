/* libFuzzer target: offload.remote.url (config file / command line) through redis_url_parse:
 * an error with a message, or a host, a port in 1..65535 and a database >= 0. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "offload/redis_store.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = 0;
    redis_url u;
    kv_error err = {{0}};
    if (redis_url_parse(s, &u, &err) != 0) {
        KV_CHECK(err.msg[0] != '\0');
    } else {
        KV_CHECK(u.host[0] != '\0' && strlen(u.host) < sizeof u.host);
        KV_CHECK(u.port >= 1 && u.port <= 65535 && u.db >= 0);
    }
    free(s);
    return 0;
}
