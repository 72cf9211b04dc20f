/* The header every block carries below the host tier (a disk file, a Redis value): magic, layout
 * version, the KV namespace (model fingerprint, block size, layout), the block hash, the payload
 * length and XXH3-64 checksums of the header and the payload. Encoding and checking only: the
 * stores own the media. A parse never trusts a byte it has not checked. */
#ifndef KVSERVE_BLOCK_HEADER_H
#define KVSERVE_BLOCK_HEADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvcache/prefix_cache.h"

#define KV_BLOCK_HEADER_BYTES 128 /* encoded size; the disk tier pads it to 4096 (O_DIRECT) */

typedef struct kv_block_header {
    uint32_t version;       /* KV_LAYOUT_VERSION of the writer */
    block_hash ns;          /* block_hash_namespace of the writer */
    block_hash hash;        /* the block's hash */
    uint64_t payload_bytes; /* block_bytes of the writer's layout */
    uint64_t payload_sum;   /* XXH3-64 of the payload */
} kv_block_header;

/* Why a header or a block was refused (counted by the stores). */
typedef enum kv_block_verdict {
    KV_BLOCK_OK,
    KV_BLOCK_SHORT,      /* fewer bytes than a header, or than the payload it announces */
    KV_BLOCK_BAD_MAGIC,  /* not a kvserve block */
    KV_BLOCK_BAD_HEADER, /* header checksum wrong (torn or corrupt) */
    KV_BLOCK_FOREIGN,    /* another version, namespace, hash or size than asked for */
    KV_BLOCK_BAD_SUM,    /* payload checksum wrong */
} kv_block_verdict;

const char *kv_block_verdict_name(kv_block_verdict v);

/* Fills out[0..KV_BLOCK_HEADER_BYTES) for the payload (checksummed here). */
void kv_block_header_encode(uint8_t *out, const block_hash *ns, const block_hash *h,
                            const void *payload, size_t payload_bytes);
/* Parses buf[0..n) (n may be anything, buf any bytes): OK and *out filled, or why not. Checks the
 * magic and the header checksum; not what the header says (kv_block_header_expect). */
kv_block_verdict kv_block_header_parse(const uint8_t *buf, size_t n, kv_block_header *out);
/* OK when the header is of this version, namespace, hash and payload size; FOREIGN otherwise. */
kv_block_verdict kv_block_header_expect(const kv_block_header *hd, const block_hash *ns,
                                        const block_hash *h, size_t payload_bytes);
/* OK when the payload's checksum is the header's; BAD_SUM otherwise. */
kv_block_verdict kv_block_payload_check(const kv_block_header *hd, const void *payload,
                                        size_t payload_bytes);

#endif
