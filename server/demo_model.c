/* The built-in demo model: its files are built here in code (jansson), so a fresh checkout serves
 * something with no download. The shape is a small Llama (4 layers, dim 256, GQA 8/4 heads); the
 * vocabulary is byte-level BPE without merges, <s> and </s>, and 62 common English words as
 * (non-special) added tokens, which round the vocabulary up to a multiple of 64 (friendlier GEMM
 * shapes) and make the random output at least partly readable. Every token decodes to printable
 * ASCII (or a newline), so whatever the random weights sample is valid text: token b is byte b for
 * the printable bytes 32..126, the other 161 ids below 256 are two-letter pieces; a prompt's other
 * bytes (controls, non-ASCII) have no token and are dropped, as Hugging Face's BPE drops a
 * character it has no token for. */
#include "server/demo_model.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define DEMO_BOS   256
#define DEMO_EOS   257
#define DEMO_VOCAB 320 /* 256 bytes + <s> + </s> + 62 words */

#define DEMO_CHAT_TEMPLATE                                                                         \
    "{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"      \
    "{% if add_generation_prompt %}assistant: {% endif %}"

static const char *const demo_files[] = {"config.json", "generation_config.json", "tokenizer.json",
                                         "tokenizer_config.json"};
#define N_DEMO_FILES ((int)(sizeof demo_files / sizeof demo_files[0]))

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others map to 256 + k in
 * byte order (what Hugging Face's ByteLevel pre-tokenizer and decoder expect). */
static bool byte_printable(int b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

static void byte_piece(int b, char out[4]) {
    int cp = b;
    if (!byte_printable(b)) {
        cp = 256;
        for (int x = 0; x < b; x++) cp += !byte_printable(x);
    }
    if (cp < 0x80) {
        out[0] = (char)cp;
        out[1] = 0;
    } else { /* every code point here is below 0x800: two UTF-8 bytes */
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        out[2] = 0;
    }
}

static json_t *demo_config(void) {
    return json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s, s:b, s:b,"
                     " s:b, s:i, s:i, s:s}",
                     "architectures", "LlamaForCausalLM", "model_type", "llama", "hidden_size", 256,
                     "intermediate_size", 688, "num_hidden_layers", 4, "num_attention_heads", 8,
                     "num_key_value_heads", 4, "head_dim", 32, "vocab_size", DEMO_VOCAB,
                     "max_position_embeddings", 4096, "rms_norm_eps", 1e-5, "rope_theta", 10000.0,
                     "hidden_act", "silu", "tie_word_embeddings", 1, "attention_bias", 0,
                     "mlp_bias", 0, "bos_token_id", DEMO_BOS, "eos_token_id", DEMO_EOS,
                     "torch_dtype", "bfloat16");
}

static const char *const demo_words[DEMO_VOCAB - DEMO_EOS - 1] = {
    " the",    " a",      " and",    " of",    " to",   " in",   " is",   " was",  " it",
    " that",   " he",     " she",    " they",  " we",   " you",  " I",    " with", " on",
    " for",    " as",     " at",     " by",    " from", " up",   " out",  " day",  " time",
    " little", " big",    " happy",  " sad",   " dog",  " cat",  " bird", " tree", " sun",
    " house",  " ball",   " friend", " mom",   " dad",  " park", " saw",  " said", " went",
    " played", " wanted", " loved",  " found", " had",  " not",  " but",  " so",   " very",
    " one",    " two",    " all",    " new",   " old",  ".",     ",",     "\n"};

static json_t *added_token(int id, const char *content, bool special) {
    return json_pack("{s:i, s:s, s:b, s:b, s:b, s:b, s:b}", "id", id, "content", content,
                     "single_word", 0, "lstrip", 0, "rstrip", 0, "normalized", 0, "special",
                     special);
}

/* The k-th two-letter piece of frequent English letters (k < 18 * 18). */
static void pair_piece(int k, char out[3]) {
    static const char letters[] = "etaoinshrdlucmfwyp";
    out[0] = letters[k / 18];
    out[1] = letters[k % 18];
    out[2] = 0;
}

static json_t *demo_tokenizer(void) {
    json_t *vocab = json_object();
    for (int b = 0, k = 0; b < 256; b++) {
        char piece[4];
        if (b >= 32 && b <= 126)
            byte_piece(b, piece);
        else
            pair_piece(k++, piece);
        json_object_set_new(vocab, piece, json_integer(b));
    }
    json_t *added = json_array();
    json_array_append_new(added, added_token(DEMO_BOS, "<s>", true));
    json_array_append_new(added, added_token(DEMO_EOS, "</s>", true));
    for (int id = DEMO_EOS + 1; id < DEMO_VOCAB; id++)
        json_array_append_new(added, added_token(id, demo_words[id - DEMO_EOS - 1], false));
    /* <s> before every encoded text, as Llama tokenizers do */
    json_t *post =
        json_pack("{s:s, s:[{s:{s:s, s:i}}, {s:{s:s, s:i}}], s:[], s:{s:{s:s, s:[i], "
                  "s:[s]}}}",
                  "type", "TemplateProcessing", "single", "SpecialToken", "id", "<s>", "type_id", 0,
                  "Sequence", "id", "A", "type_id", 0, "pair", "special_tokens", "<s>", "id", "<s>",
                  "ids", DEMO_BOS, "tokens", "<s>");
    json_t *byte_level = json_pack("{s:s, s:b, s:b, s:b}", "type", "ByteLevel", "add_prefix_space",
                                   0, "trim_offsets", 1, "use_regex", 0);
    return json_pack("{s:s, s:n, s:n, s:o, s:n, s:O, s:o, s:o, s:{s:s, s:n, s:n, s:b, s:b, s:o, "
                     "s:[]}}",
                     "version", "1.0", "truncation", "padding", "added_tokens", added, "normalizer",
                     "pre_tokenizer", byte_level, "post_processor", post, "decoder", byte_level,
                     "model", "type", "BPE", "dropout", "unk_token", "fuse_unk", 0, "byte_fallback",
                     0, "vocab", vocab, "merges");
}

static json_t *demo_file(int i) {
    switch (i) {
    case 0:
        return demo_config();
    case 1:
        return json_pack("{s:i, s:i}", "bos_token_id", DEMO_BOS, "eos_token_id", DEMO_EOS);
    case 2:
        return demo_tokenizer();
    default:
        /* a plain role-prefixed chat template, so /v1/chat/completions works on the demo too */
        return json_pack("{s:s, s:s, s:s, s:i, s:s}", "tokenizer_class", "PreTrainedTokenizerFast",
                         "bos_token", "<s>", "eos_token", "</s>", "model_max_length", 4096,
                         "chat_template", DEMO_CHAT_TEMPLATE);
    }
}

int demo_model_create(char **dir, kv_error *err) {
    const char *tmp = getenv("TMPDIR");
    char path[4096];
    snprintf(path, sizeof path, "%s/kvserve-demo-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(path))
        return kv_error_set(err, "demo model: cannot create a directory %s: %s", path,
                            strerror(errno));
    for (int i = 0; i < N_DEMO_FILES; i++) {
        char file[4200];
        snprintf(file, sizeof file, "%s/%s", path, demo_files[i]);
        json_t *j = demo_file(i);
        KV_CHECK(j);
        int rc = json_dump_file(j, file, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        json_decref(j);
        if (rc) {
            int e = errno;
            demo_model_remove(path);
            return kv_error_set(err, "demo model: cannot write %s: %s", file, strerror(e));
        }
    }
    *dir = kv_strdup(path);
    return 0;
}

void demo_model_remove(const char *dir) {
    for (int i = 0; i < N_DEMO_FILES; i++) {
        char file[4200];
        snprintf(file, sizeof file, "%s/%s", dir, demo_files[i]);
        unlink(file);
    }
    rmdir(dir);
}
