/* A backend for tests of the offload tier and the engine: memory is malloc, copies are memcpy,
 * and each stream is a queue that the test can hold so that events complete only when it says.
 * Implements memory, async copies (copy_2d_async: one queued copy per row) and events; the
 * forward-pass ops are NULL (queue a fake_backend_kernel callback on COMPUTE instead).
 *
 * Eager mode (the default): work runs as soon as it is queued, unless its stream is held or waits
 * on an event that is not complete. Manual mode: work runs only in fake_backend_run (and in
 * event_sync / sync, which run queues as a device would until the event completes). */
#ifndef KVSERVE_FAKE_BACKEND_H
#define KVSERVE_FAKE_BACKEND_H

#include "model/backend.h"

typedef struct fake_backend_stats {
    int n_host_allocs, n_host_frees; /* host_alloc calls that returned memory, host_free calls */
    size_t host_bytes_live;
    int n_dev_live;
    int n_copy_calls[BACKEND_NUM_STREAMS]; /* copy_async calls */
    int n_copies[BACKEND_NUM_STREAMS];     /* copies in them */
    size_t copy_bytes[BACKEND_NUM_STREAMS];
    int n_events_live; /* recorded and not yet freed (or still queued) */
    int n_queued;      /* operations not yet run, all streams */
} fake_backend_stats;

backend *fake_backend_create(void);
void fake_backend_set_manual(backend *be, bool manual);
/* Turns copy_2d_async off (NULL), as on a backend without it. */
void fake_backend_no_copy_2d(backend *be);
/* Runs queued work until every stream is empty, held, or waits on an incomplete event. Returns
 * the number of operations run. */
int fake_backend_run(backend *be);

/* Queues fn(arg) on COMPUTE: a kernel that reads or writes device memory when it runs. */
void fake_backend_kernel(backend *be, void (*fn)(void *arg), void *arg);
/* Queues a hold on stream s (a kernel that runs until released): nothing queued after it on s runs
 * until fake_backend_release(hold). */
int fake_backend_hold(backend *be, backend_stream s);
void fake_backend_release(backend *be, int hold);

/* host_alloc control, for the pinning thread: a gate (n_permits < 0: open; otherwise each call
 * takes a permit and blocks while none is left) and a failure (calls after the first n succeed
 * return NULL; n < 0: never fail). */
void fake_backend_host_gate(backend *be, int n_permits);
void fake_backend_host_permit(backend *be, int n);
void fake_backend_host_fail_after(backend *be, int n);

fake_backend_stats fake_backend_get_stats(backend *be);

#endif
