/* libFuzzer target: a disk-tier file or Redis value (header + payload) through the checks every
 * store makes before it hands bytes back: parse, expect (version, namespace, hash, size), payload
 * checksum. What passes must say what was asked for. */
#include <stdint.h>
#include <string.h>

#include "offload/block_header.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    kv_block_header hd;
    kv_block_verdict v = kv_block_header_parse(data, size, &hd);
    KV_CHECK(v >= KV_BLOCK_OK && v <= KV_BLOCK_BAD_SUM && kv_block_verdict_name(v)[0]);
    if (v != KV_BLOCK_OK) return 0;
    KV_CHECK(size >= KV_BLOCK_HEADER_BYTES);
    size_t n = size - KV_BLOCK_HEADER_BYTES;
    const uint8_t *payload = data + KV_BLOCK_HEADER_BYTES;
    /* the header's own namespace and hash: only the size and checksum can still fail */
    v = kv_block_header_expect(&hd, &hd.ns, &hd.hash, n);
    if (v == KV_BLOCK_OK) {
        KV_CHECK(hd.payload_bytes == n && hd.version == KV_LAYOUT_VERSION);
        v = kv_block_payload_check(&hd, payload, n);
        if (v == KV_BLOCK_OK) { /* re-encoding what passed gives the same header */
            uint8_t again[KV_BLOCK_HEADER_BYTES];
            kv_block_header_encode(again, &hd.ns, &hd.hash, payload, n);
            kv_block_header hd2;
            KV_CHECK(kv_block_header_parse(again, sizeof again, &hd2) == KV_BLOCK_OK);
            KV_CHECK(hd2.payload_sum == hd.payload_sum);
        }
    }
    block_hash other = hd.hash;
    other.b[0] ^= 1;
    KV_CHECK(kv_block_header_expect(&hd, &hd.ns, &other, n) == KV_BLOCK_FOREIGN);
    return 0;
}
