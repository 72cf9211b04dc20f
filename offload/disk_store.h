/* The disk tier as a kv_block_store (offload/block_store.h): one file per block under a directory,
 * <path>/<first 2 hex of the hash>/<hash hex>.kvb = a 4096-byte header block (block_header.h,
 * padded for O_DIRECT) then the payload. Owns the files, an in-memory index (hash -> file size,
 * LRU) rebuilt at start by a background scan, and the size limit (LRU files deleted).
 *
 * Writes are crash-safe: a temp file is written whole and renamed over the name, so a reader sees
 * an old file, a new file or none; a file torn by a power loss fails its checksums. Reads and
 * writes use O_DIRECT where the filesystem allows it (so the page cache does not hold a second
 * copy of the tier), plain pread/pwrite otherwise. Files of another model or layout (namespace)
 * are left alone and never loaded; corrupt, truncated or torn ones are deleted and counted. */
#ifndef KVSERVE_DISK_STORE_H
#define KVSERVE_DISK_STORE_H

#include "model/common.h"
#include "offload/block_store.h"

typedef struct disk_store_config {
    const char *path;   /* directory (created if absent) */
    double size_gib;    /* limit on the files of this namespace (headers included); > 0 */
    size_t block_bytes; /* payload of one block */
    block_hash ns;      /* the KV namespace (block_hash_namespace) */
    bool quiet;         /* no progress lines on stderr (tests) */
} disk_store_config;

/* Opens the directory and starts the scan thread; returns at once (contains misses on files not
 * scanned yet). NULL and err set when the directory cannot be created or used. */
kv_block_store *disk_store_create(const disk_store_config *cfg, kv_error *err);
/* Blocks until the start-up scan is done (tests, benchmarks). */
void disk_store_wait_scan(kv_block_store *s);
/* The file of a block (tests corrupt it). */
void disk_store_block_path(kv_block_store *s, const block_hash *h, char *out, size_t cap);

#endif
