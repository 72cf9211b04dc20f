/* Start-up warm-up: before /health says ready, a few requests through the started engine pay
 * what the first real request would (lazy module loading, cuBLASLt plans, attention plans, graph
 * recording, pinned download buffers), so the first request is as fast as the second. */
#ifndef KVSERVE_WARMUP_H
#define KVSERVE_WARMUP_H

#include "server/engine/scheduler.h"

/* Runs the warm-up on the started scheduler s and waits for it: a short and a long (max_prompt
 * tokens) prefill, each with a few decode steps at batch 1, then 8 concurrent requests ending one
 * by one (decode at every batch size from 8 down to 1). Token ids are below vocab; a cache salt
 * keeps its blocks from matching any real request. Returns the requests that did not finish
 * normally (0: all did). */
int warmup_run(scheduler *s, int vocab, int max_prompt);

#endif
