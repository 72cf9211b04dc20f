/* Block headers: a fixed little-endian layout, XXH3-64 checksums. Measured on this repository's
 * 2-core VM (shared, loaded), one 2 MiB block: XXH3-64 0.62 ms (3.4 GB/s), SHA-256 5.7 ms
 * (0.37 GB/s), memcpy 0.05 ms; XXH3 is ~9x cheaper, and on an unloaded server core several times
 * faster again, below an NVMe read of the block. */
#include "offload/block_header.h"

#include <string.h>
#include <xxhash.h>

static const uint8_t block_magic[8] = {'K', 'V', 'S', 'B', 'L', 'K', 0, 1};

enum { /* field offsets */
       OFF_MAGIC = 0,
       OFF_VERSION = 8,
       OFF_HDR_BYTES = 12,
       OFF_NS = 16,
       OFF_HASH = 48,
       OFF_PAYLOAD_BYTES = 80,
       OFF_PAYLOAD_SUM = 88,
       OFF_HDR_SUM = 96, /* XXH3-64 of bytes [0, OFF_HDR_SUM) */
};

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}
static uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

const char *kv_block_verdict_name(kv_block_verdict v) {
    static const char *const names[] = {
        "ok", "short", "bad magic", "header checksum", "foreign", "payload checksum"};
    return (unsigned)v < sizeof names / sizeof *names ? names[v] : "?";
}

void kv_block_header_encode(uint8_t *out, const block_hash *ns, const block_hash *h,
                            const void *payload, size_t payload_bytes) {
    memset(out, 0, KV_BLOCK_HEADER_BYTES);
    memcpy(out + OFF_MAGIC, block_magic, sizeof block_magic);
    put_u32(out + OFF_VERSION, KV_LAYOUT_VERSION);
    put_u32(out + OFF_HDR_BYTES, KV_BLOCK_HEADER_BYTES);
    memcpy(out + OFF_NS, ns->b, 32);
    memcpy(out + OFF_HASH, h->b, 32);
    put_u64(out + OFF_PAYLOAD_BYTES, payload_bytes);
    put_u64(out + OFF_PAYLOAD_SUM, XXH3_64bits(payload, payload_bytes));
    put_u64(out + OFF_HDR_SUM, XXH3_64bits(out, OFF_HDR_SUM));
}

kv_block_verdict kv_block_header_parse(const uint8_t *buf, size_t n, kv_block_header *out) {
    if (n < KV_BLOCK_HEADER_BYTES) return KV_BLOCK_SHORT;
    if (memcmp(buf + OFF_MAGIC, block_magic, sizeof block_magic) != 0) return KV_BLOCK_BAD_MAGIC;
    if (get_u64(buf + OFF_HDR_SUM) != XXH3_64bits(buf, OFF_HDR_SUM)) return KV_BLOCK_BAD_HEADER;
    if (get_u32(buf + OFF_HDR_BYTES) != KV_BLOCK_HEADER_BYTES) return KV_BLOCK_FOREIGN;
    out->version = get_u32(buf + OFF_VERSION);
    memcpy(out->ns.b, buf + OFF_NS, 32);
    memcpy(out->hash.b, buf + OFF_HASH, 32);
    out->payload_bytes = get_u64(buf + OFF_PAYLOAD_BYTES);
    out->payload_sum = get_u64(buf + OFF_PAYLOAD_SUM);
    return KV_BLOCK_OK;
}

kv_block_verdict kv_block_header_expect(const kv_block_header *hd, const block_hash *ns,
                                        const block_hash *h, size_t payload_bytes) {
    if (hd->version != KV_LAYOUT_VERSION || !block_hash_eq(&hd->ns, ns) ||
        !block_hash_eq(&hd->hash, h) || hd->payload_bytes != payload_bytes)
        return KV_BLOCK_FOREIGN;
    return KV_BLOCK_OK;
}

kv_block_verdict kv_block_payload_check(const kv_block_header *hd, const void *payload,
                                        size_t payload_bytes) {
    if (hd->payload_bytes != payload_bytes) return KV_BLOCK_SHORT;
    return XXH3_64bits(payload, payload_bytes) == hd->payload_sum ? KV_BLOCK_OK : KV_BLOCK_BAD_SUM;
}
