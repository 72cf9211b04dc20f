/* The built-in demo model that kvserve serves when no --model is given: a tiny Llama config.json
 * and a byte-level tokenizer (256 byte tokens, <s>, </s>), written into a fresh temporary
 * directory and loaded with random weights (--load-format dummy). It shows that the server runs;
 * its output is gibberish. Owns that directory; knows nothing of the server. */
#ifndef KVSERVE_DEMO_MODEL_H
#define KVSERVE_DEMO_MODEL_H

#include "model/common.h"

#define DEMO_MODEL_NAME "kvserve-demo-random-weights"

/* Creates a temporary directory holding config.json, generation_config.json, tokenizer.json and
 * tokenizer_config.json of the demo model; *dir is malloc'd (free it after demo_model_remove).
 * Returns -1 with err set when the directory or a file cannot be written. */
int demo_model_create(char **dir, kv_error *err);
/* Deletes the files demo_model_create wrote and the directory. */
void demo_model_remove(const char *dir);

#endif
