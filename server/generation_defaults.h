/* Default sampling parameters from a model's generation_config.json, as vLLM's
 * --generation-config auto does: temperature, top_p, top_k, min_p and repetition_penalty found
 * there replace OpenAI's defaults for requests that do not set them. Owns nothing. */
#ifndef KVSERVE_GENERATION_DEFAULTS_H
#define KVSERVE_GENERATION_DEFAULTS_H

#include <stddef.h>

#include "model/common.h"
#include "model/sampler.h"

/* Fills out (sampler_params_default first) from where/generation_config.json: where is source
 * (a folder), or model_dir when source is NULL or "auto"; source "vllm" reads nothing. A missing
 * file is no error. A field of the wrong type or out of range is an error naming the file and
 * field. summary (size bytes) gets "temperature=0.7, top_p=0.8" of what was taken ("" = nothing).
 * out must be freed with sampler_params_free. */
int generation_defaults_load(const char *source, const char *model_dir, sampler_params *out,
                             char *summary, size_t size, kv_error *err);

#endif
