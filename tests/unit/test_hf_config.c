/* Unit tests for model/hf_config: both config.json dialects, llama3 RoPE frequencies against
 * values computed independently, eos lists, generation_config.json, and every rejection. */
#include <check.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "model/hf_config.h"

/* Llama-3.1-8B's config.json as published on the Hub (dialect 1). */
static const char *llama31_hub =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
    " \"bos_token_id\": 128000, \"eos_token_id\": [128001, 128008, 128009],"
    " \"hidden_act\": \"silu\", \"hidden_size\": 4096, \"intermediate_size\": 14336,"
    " \"max_position_embeddings\": 131072, \"mlp_bias\": false, \"model_type\": \"llama\","
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 32, \"num_key_value_heads\": 8,"
    " \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"factor\": 8.0, \"low_freq_factor\": 1.0,"
    " \"high_freq_factor\": 4.0, \"original_max_position_embeddings\": 8192,"
    " \"rope_type\": \"llama3\"}, \"rope_theta\": 500000.0, \"tie_word_embeddings\": false,"
    " \"torch_dtype\": \"bfloat16\", \"vocab_size\": 128256}";

/* The same model as transformers 5 saves it (dialect 2). */
static const char *llama31_v5 =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"attention_bias\": false,"
    " \"bos_token_id\": 128000, \"dtype\": \"bfloat16\", \"eos_token_id\": [128001, 128008, "
    "128009],"
    " \"head_dim\": 128, \"hidden_act\": \"silu\", \"hidden_size\": 4096,"
    " \"intermediate_size\": 14336, \"max_position_embeddings\": 131072, \"mlp_bias\": false,"
    " \"model_type\": \"llama\", \"num_attention_heads\": 32, \"num_hidden_layers\": 32,"
    " \"num_key_value_heads\": 8, \"pad_token_id\": null, \"rms_norm_eps\": 1e-05,"
    " \"rope_parameters\": {\"factor\": 8.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
    " \"original_max_position_embeddings\": 8192, \"rope_theta\": 500000.0,"
    " \"rope_type\": \"llama3\"}, \"tie_word_embeddings\": false,"
    " \"transformers_version\": \"5.0.0\", \"use_cache\": true, \"vocab_size\": 128256}";

/* Qwen2.5-0.5B's config.json (Hub). */
static const char *qwen25_hub =
    "{\"architectures\": [\"Qwen2ForCausalLM\"], \"attention_dropout\": 0.0,"
    " \"bos_token_id\": 151643, \"eos_token_id\": 151643, \"hidden_act\": \"silu\","
    " \"hidden_size\": 896, \"initializer_range\": 0.02, \"intermediate_size\": 4864,"
    " \"max_position_embeddings\": 32768, \"max_window_layers\": 24, \"model_type\": \"qwen2\","
    " \"num_attention_heads\": 14, \"num_hidden_layers\": 24, \"num_key_value_heads\": 2,"
    " \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0, \"sliding_window\": 32768,"
    " \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\", \"use_cache\": true,"
    " \"use_sliding_window\": false, \"vocab_size\": 151936}";

/* Mistral-7B-Instruct-v0.3's config.json (Hub). */
static const char *mistral_hub =
    "{\"architectures\": [\"MistralForCausalLM\"], \"attention_dropout\": 0.0,"
    " \"bos_token_id\": 1, \"eos_token_id\": 2, \"hidden_act\": \"silu\", \"hidden_size\": 4096,"
    " \"initializer_range\": 0.02, \"intermediate_size\": 14336,"
    " \"max_position_embeddings\": 32768, \"model_type\": \"mistral\","
    " \"num_attention_heads\": 32, \"num_hidden_layers\": 32, \"num_key_value_heads\": 8,"
    " \"rms_norm_eps\": 1e-05, \"rope_theta\": 1000000.0, \"sliding_window\": null,"
    " \"tie_word_embeddings\": false, \"torch_dtype\": \"bfloat16\", \"vocab_size\": 32768}";

static int parse(hf_config *cfg, const char *json, kv_error *err) {
    return hf_config_parse(cfg, json, strlen(json), err);
}

/* base with the keys of patch (a JSON object) set, and `drop` removed when not NULL. */
static int parse_patched(hf_config *cfg, const char *base, const char *patch, const char *drop,
                         kv_error *err) {
    json_t *b = json_loads(base, 0, NULL);
    json_t *p = json_loads(patch, 0, NULL);
    ck_assert_ptr_nonnull(b);
    ck_assert_ptr_nonnull(p);
    json_object_update(b, p);
    if (drop) json_object_del(b, drop);
    char *text = json_dumps(b, 0);
    int rc = parse(cfg, text, err);
    free(text);
    json_decref(b);
    json_decref(p);
    return rc;
}

/* Asserts that base + patch is rejected with a message containing `needle`. */
static void assert_rejected(const char *base, const char *patch, const char *needle) {
    hf_config cfg;
    kv_error err = {{0}};
    int rc = parse_patched(&cfg, base, patch, NULL, &err);
    ck_assert_msg(rc == -1, "accepted %s", patch);
    ck_assert_msg(strstr(err.msg, needle) != NULL, "patch %s: message '%s' lacks '%s'", patch,
                  err.msg, needle);
    ck_assert_msg(strncmp(err.msg, "config.json: ", 13) == 0, "message '%s' names no file",
                  err.msg);
}

static void assert_llama31(const hf_config *c) {
    ck_assert_int_eq(c->arch, HF_ARCH_LLAMA);
    ck_assert_str_eq(c->arch_name, "LlamaForCausalLM");
    ck_assert_str_eq(c->model_type, "llama");
    ck_assert_int_eq(c->hidden_size, 4096);
    ck_assert_int_eq(c->n_layers, 32);
    ck_assert_int_eq(c->n_heads, 32);
    ck_assert_int_eq(c->n_kv_heads, 8);
    ck_assert_int_eq(c->head_dim, 128);
    ck_assert_int_eq(c->intermediate_size, 14336);
    ck_assert_int_eq(c->vocab_size, 128256);
    ck_assert_int_eq(c->max_position_embeddings, 131072);
    ck_assert_double_eq(c->rope_theta, 500000.0);
    ck_assert_int_eq(c->rope_type, HF_ROPE_LLAMA3);
    ck_assert_double_eq(c->rope_factor, 8.0);
    ck_assert_double_eq(c->rope_low_freq_factor, 1.0);
    ck_assert_double_eq(c->rope_high_freq_factor, 4.0);
    ck_assert_int_eq(c->rope_original_max_position, 8192);
    ck_assert_double_eq(c->rms_norm_eps, 1e-5);
    ck_assert(!c->tie_word_embeddings);
    ck_assert(!c->attention_bias && !c->attention_out_bias);
    ck_assert_int_eq(c->bos_token_id, 128000);
    ck_assert_int_eq(c->n_eos, 3);
    ck_assert_int_eq(c->eos_token_ids[0], 128001);
    ck_assert_int_eq(c->eos_token_ids[2], 128009);
    ck_assert_int_eq(c->dtype, KV_DTYPE_BF16);
}

START_TEST(hub_dialect_llama31) {
    hf_config c;
    kv_error err;
    ck_assert_msg(parse(&c, llama31_hub, &err) == 0, "%s", err.msg);
    assert_llama31(&c);
}
END_TEST

START_TEST(v5_dialect_llama31_matches_hub) {
    hf_config hub, v5;
    kv_error err;
    ck_assert_msg(parse(&v5, llama31_v5, &err) == 0, "%s", err.msg);
    assert_llama31(&v5);
    ck_assert_int_eq(parse(&hub, llama31_hub, &err), 0);
    ck_assert_int_eq(memcmp(&hub, &v5, sizeof hub), 0);
}
END_TEST

START_TEST(v5_rope_parameters_default_and_layer_types) {
    hf_config c;
    kv_error err;
    ck_assert_msg(parse_patched(&c, llama31_v5,
                                "{\"rope_parameters\": {\"rope_theta\": 10000.0, \"rope_type\":"
                                " \"default\"}, \"num_hidden_layers\": 2, \"layer_types\":"
                                " [\"full_attention\", \"full_attention\"]}",
                                NULL, &err) == 0,
                  "%s", err.msg);
    ck_assert_int_eq(c.rope_type, HF_ROPE_DEFAULT);
    ck_assert_double_eq(c.rope_theta, 10000.0);
    ck_assert_int_eq(c.n_layers, 2);
    /* rope_parameters keyed by layer type */
    ck_assert_msg(parse_patched(&c, llama31_v5,
                                "{\"rope_parameters\": {\"full_attention\": {\"rope_theta\":"
                                " 20000.0, \"rope_type\": \"default\"}}}",
                                NULL, &err) == 0,
                  "%s", err.msg);
    ck_assert_double_eq(c.rope_theta, 20000.0);
}
END_TEST

START_TEST(qwen2_defaults_and_bias) {
    hf_config c;
    kv_error err;
    ck_assert_msg(parse(&c, qwen25_hub, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.arch, HF_ARCH_QWEN2);
    ck_assert_int_eq(c.head_dim, 64); /* 896 / 14 */
    ck_assert_int_eq(c.n_kv_heads, 2);
    ck_assert(c.tie_word_embeddings);
    ck_assert(c.attention_bias);      /* q/k/v always */
    ck_assert(!c.attention_out_bias); /* o_proj never */
    ck_assert_int_eq(c.rope_type, HF_ROPE_DEFAULT);
    ck_assert_double_eq(c.rope_theta, 1e6);
    ck_assert_int_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_token_ids[0], 151643);
    /* Qwen2Config's default is tie_word_embeddings=False */
    ck_assert_int_eq(parse_patched(&c, qwen25_hub, "{}", "tie_word_embeddings", &err), 0);
    ck_assert(!c.tie_word_embeddings);
    /* use_sliding_window with every layer below max_window_layers slides nowhere */
    ck_assert_int_eq(parse_patched(&c, qwen25_hub,
                                   "{\"use_sliding_window\": true, \"sliding_window\": 4096}", NULL,
                                   &err),
                     0);
}
END_TEST

START_TEST(mistral_and_defaults) {
    hf_config c;
    kv_error err;
    ck_assert_msg(parse(&c, mistral_hub, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.arch, HF_ARCH_MISTRAL);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert(!c.attention_bias);
    ck_assert_int_eq(c.vocab_size, 32768);
    /* absent num_key_value_heads means MHA; absent head_dim is hidden / heads; absent dtype F32 */
    ck_assert_int_eq(parse_patched(&c, mistral_hub, "{}", "num_key_value_heads", &err), 0);
    ck_assert_int_eq(c.n_kv_heads, 32);
    ck_assert_int_eq(parse_patched(&c, mistral_hub, "{}", "torch_dtype", &err), 0);
    ck_assert_int_eq(c.dtype, KV_DTYPE_F32);
    ck_assert_int_eq(parse_patched(&c, mistral_hub, "{\"head_dim\": null}", NULL, &err), 0);
    ck_assert_int_eq(c.head_dim, 128);
    /* sliding_window as long as the context never slides */
    ck_assert_int_eq(parse_patched(&c, mistral_hub, "{\"sliding_window\": 32768}", NULL, &err), 0);
    /* no architectures: model_type decides */
    ck_assert_int_eq(parse_patched(&c, mistral_hub, "{}", "architectures", &err), 0);
    ck_assert_int_eq(c.arch, HF_ARCH_MISTRAL);
}
END_TEST

START_TEST(explicit_head_dim_and_bias) {
    hf_config c;
    kv_error err;
    ck_assert_int_eq(parse_patched(&c, llama31_hub,
                                   "{\"head_dim\": 64, \"attention_bias\": true, \"eos_token_id\":"
                                   " 7, \"bos_token_id\": null, \"rope_scaling\": null}",
                                   NULL, &err),
                     0);
    ck_assert_int_eq(c.head_dim, 64);
    ck_assert(c.attention_bias && c.attention_out_bias);
    ck_assert_int_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_token_ids[0], 7);
    ck_assert_int_eq(c.bos_token_id, -1);
    ck_assert_int_eq(c.rope_type, HF_ROPE_DEFAULT);
    /* old "type" key and rope_type "default" */
    ck_assert_int_eq(parse_patched(&c, llama31_hub,
                                   "{\"rope_scaling\": {\"type\": \"llama3\", \"factor\": 8,"
                                   " \"low_freq_factor\": 1, \"high_freq_factor\": 4,"
                                   " \"original_max_position_embeddings\": 8192}}",
                                   NULL, &err),
                     0);
    ck_assert_int_eq(c.rope_type, HF_ROPE_LLAMA3);
    ck_assert_int_eq(parse_patched(&c, llama31_hub,
                                   "{\"rope_scaling\": {\"rope_type\": \"default\"}}", NULL, &err),
                     0);
    ck_assert_int_eq(c.rope_type, HF_ROPE_DEFAULT);
}
END_TEST

/* Reference values: a Python transcription of transformers' _compute_default_rope_parameters
 * and _compute_llama3_parameters evaluated in double precision for Llama-3.1-8B (theta 500000,
 * head_dim 128, factor 8, low 1, high 4, original context 8192). Indices 0..28 keep their
 * frequency, 29..34 are interpolated, 35.. are divided by 8. */
START_TEST(llama3_inv_freq_matches_reference) {
    static const struct {
        int i;
        double inv;
    } ref[] = {
        {0, 1.0},
        {1, 0.8146172338565447},
        {28, 0.0032114459947525913},
        {29, 0.002166570763503359},
        {31, 0.0008567514129196321},
        {34, 0.00017850781276799638},
        {35, 9.556212353964683e-05},
        {63, 3.068925988914511e-07},
    };
    hf_config c;
    kv_error err;
    ck_assert_int_eq(parse(&c, llama31_hub, &err), 0);
    float inv[64];
    hf_config_rope_inv_freq(&c, inv);
    for (size_t k = 0; k < sizeof ref / sizeof ref[0]; k++) {
        double got = inv[ref[k].i], want = ref[k].inv;
        /* one float rounding of a double result: within 2^-24 relative */
        ck_assert_msg(fabs(got - want) <= want * 6e-8, "inv_freq[%d] = %.9g, want %.9g", ref[k].i,
                      got, want);
    }
    /* without scaling, plain theta^(-2i/d) */
    ck_assert_int_eq(parse_patched(&c, llama31_hub, "{\"rope_scaling\": null}", NULL, &err), 0);
    hf_config_rope_inv_freq(&c, inv);
    ck_assert(fabs(inv[63] - 2.455140791131609e-06) <= 2.455140791131609e-06 * 6e-8);
    ck_assert(fabs(inv[31] - 0.0017360467021768655) <= 0.0017360467021768655 * 6e-8);
}
END_TEST

START_TEST(generation_config_overrides) {
    hf_config c;
    kv_error err;
    ck_assert_int_eq(parse(&c, mistral_hub, &err), 0);
    const char *gen = "{\"bos_token_id\": 5, \"eos_token_id\": [2, 9], \"do_sample\": true}";
    ck_assert_int_eq(hf_config_apply_generation(&c, gen, strlen(gen), &err), 0);
    ck_assert_int_eq(c.bos_token_id, 5);
    ck_assert_int_eq(c.n_eos, 2);
    ck_assert_int_eq(c.eos_token_ids[1], 9);
    /* absent or null keys leave the config's ids alone */
    gen = "{\"eos_token_id\": null, \"temperature\": 0.6}";
    ck_assert_int_eq(hf_config_apply_generation(&c, gen, strlen(gen), &err), 0);
    ck_assert_int_eq(c.n_eos, 2);
    ck_assert_int_eq(c.bos_token_id, 5);
    /* a bad file is an error naming it and changes nothing */
    gen = "{\"eos_token_id\": [1, \"x\"]}";
    ck_assert_int_eq(hf_config_apply_generation(&c, gen, strlen(gen), &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "generation_config.json: eos_token_id[1]"));
    ck_assert_int_eq(c.n_eos, 2);
    gen = "[1]";
    ck_assert_int_eq(hf_config_apply_generation(&c, gen, strlen(gen), &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "generation_config.json"));
}
END_TEST

START_TEST(load_from_directory) {
    char dir[] = "/tmp/kv_hfconfig_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char cfg_path[256], gen_path[256];
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    snprintf(gen_path, sizeof gen_path, "%s/generation_config.json", dir);
    hf_config c;
    kv_error err;
    ck_assert_int_eq(hf_config_load(&c, dir, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, cfg_path));

    FILE *f = fopen(cfg_path, "w");
    fputs(qwen25_hub, f);
    fclose(f);
    ck_assert_msg(hf_config_load(&c, dir, &err) == 0, "%s", err.msg); /* no generation config */
    ck_assert_int_eq(c.eos_token_ids[0], 151643);
    f = fopen(gen_path, "w");
    fputs("{\"eos_token_id\": [151645, 151643]}", f);
    fclose(f);
    ck_assert_msg(hf_config_load(&c, dir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.n_eos, 2);
    ck_assert_int_eq(c.eos_token_ids[0], 151645);
    unlink(gen_path);
    unlink(cfg_path);
    rmdir(dir);
}
END_TEST

START_TEST(rejections_name_the_field) {
    assert_rejected(llama31_hub, "{\"architectures\": [\"GemmaForCausalLM\"]}",
                    "architecture 'GemmaForCausalLM' is not supported");
    assert_rejected(llama31_hub, "{\"architectures\": []}", "architectures");
    assert_rejected(llama31_hub, "{\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}",
                    "rope_scaling.rope_type 'yarn' is not supported");
    assert_rejected(llama31_hub, "{\"rope_scaling\": {\"type\": \"dynamic\", \"factor\": 2.0}}",
                    "rope_scaling.type 'dynamic' is not supported");
    assert_rejected(llama31_hub, "{\"rope_scaling\": {\"factor\": 2.0}}", "rope_type");
    assert_rejected(llama31_v5,
                    "{\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 2.0,"
                    " \"rope_theta\": 10000.0}}",
                    "rope_parameters.rope_type 'yarn' is not supported");
    assert_rejected(llama31_hub,
                    "{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
                    " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0}}",
                    "rope_scaling.original_max_position_embeddings");
    assert_rejected(llama31_hub,
                    "{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
                    " \"low_freq_factor\": 4.0, \"high_freq_factor\": 4.0,"
                    " \"original_max_position_embeddings\": 8192}}",
                    "high_freq_factor");
    assert_rejected(llama31_hub,
                    "{\"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 0.5,"
                    " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0,"
                    " \"original_max_position_embeddings\": 8192}}",
                    "rope_scaling.factor");
    assert_rejected(llama31_hub, "{\"rope_scaling\": 3}", "rope_scaling");
    assert_rejected(llama31_hub, "{\"rope_theta\": -1}", "rope_theta");
    assert_rejected(llama31_hub, "{\"rms_norm_eps\": 0}", "rms_norm_eps");
    assert_rejected(llama31_hub, "{\"hidden_size\": \"4096\"}", "hidden_size must be an integer");
    assert_rejected(llama31_hub, "{\"hidden_size\": 0}", "hidden_size");
    assert_rejected(llama31_hub, "{\"hidden_size\": 4096.5}", "hidden_size");
    assert_rejected(llama31_hub, "{\"vocab_size\": null}", "missing vocab_size");
    assert_rejected(llama31_hub, "{\"num_key_value_heads\": 5}", "num_key_value_heads 5");
    assert_rejected(llama31_hub, "{\"head_dim\": 127}", "head_dim 127");
    assert_rejected(llama31_hub, "{\"num_attention_heads\": 30, \"num_key_value_heads\": 10}",
                    "hidden_size 4096 is not a multiple of num_attention_heads 30");
    assert_rejected(llama31_hub, "{\"tie_word_embeddings\": 1}", "tie_word_embeddings");
    assert_rejected(llama31_hub, "{\"hidden_act\": \"gelu\"}", "hidden_act 'gelu'");
    assert_rejected(llama31_hub, "{\"mlp_bias\": true}", "mlp_bias");
    assert_rejected(llama31_hub, "{\"torch_dtype\": \"int8\"}", "torch_dtype 'int8'");
    assert_rejected(llama31_v5, "{\"dtype\": \"float64\"}", "dtype 'float64'");
    assert_rejected(llama31_hub, "{\"quantization_config\": {\"quant_method\": \"awq\"}}",
                    "quantization_config");
    assert_rejected(llama31_hub, "{\"eos_token_id\": [1, 2, 3, 4, 5, 6, 7, 8, 9]}", "eos_token_id");
    assert_rejected(llama31_hub, "{\"eos_token_id\": [1, -2]}", "eos_token_id[1]");
    assert_rejected(llama31_hub, "{\"bos_token_id\": \"<s>\"}", "bos_token_id");
    assert_rejected(llama31_hub, "{\"max_position_embeddings\": -5}", "max_position_embeddings");
    assert_rejected(llama31_v5,
                    "{\"num_hidden_layers\": 2, \"layer_types\": [\"full_attention\","
                    " \"sliding_attention\"]}",
                    "sliding_window is missing");
    assert_rejected(llama31_v5,
                    "{\"num_hidden_layers\": 2, \"layer_types\": [\"full_attention\","
                    " \"linear_attention\"]}",
                    "layer_types[1] 'linear_attention': hybrid attention is not supported");
    assert_rejected(llama31_v5, "{\"layer_types\": [\"full_attention\"]}", "layer_types");
}
END_TEST

START_TEST(malformed_json) {
    hf_config c;
    kv_error err;
    ck_assert_int_eq(hf_config_parse(&c, "{\"hidden_size\": ", 16, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "config.json: invalid JSON"));
    ck_assert_int_eq(hf_config_parse(&c, "[1, 2]", 6, &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "top level"));
    ck_assert_int_eq(hf_config_parse(&c, "", 0, &err), -1);
    ck_assert_int_eq(parse(&c, "{}", &err), -1);
    ck_assert_ptr_nonnull(strstr(err.msg, "architectures"));
}
END_TEST

/* A real model's files: stories260K (testdata). */
/* --- issue 17: the families' config.json files, as published on the Hub (trimmed to the keys
 * that matter; values as in the published files) --- */

static const char *qwen3_hub =
    "{\"architectures\": [\"Qwen3ForCausalLM\"], \"attention_bias\": false,"
    " \"bos_token_id\": 151643, \"eos_token_id\": 151645, \"head_dim\": 128,"
    " \"hidden_act\": \"silu\", \"hidden_size\": 1024, \"intermediate_size\": 3072,"
    " \"max_position_embeddings\": 40960, \"max_window_layers\": 28, \"model_type\": \"qwen3\","
    " \"num_attention_heads\": 16, \"num_hidden_layers\": 28, \"num_key_value_heads\": 8,"
    " \"rms_norm_eps\": 1e-06, \"rope_scaling\": null, \"rope_theta\": 1000000,"
    " \"sliding_window\": null, \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\","
    " \"use_sliding_window\": false, \"vocab_size\": 151936}";

static const char *gemma2_hub =
    "{\"architectures\": [\"Gemma2ForCausalLM\"], \"attn_logit_softcapping\": 50.0,"
    " \"bos_token_id\": 2, \"eos_token_id\": 1, \"final_logit_softcapping\": 30.0,"
    " \"head_dim\": 256, \"hidden_act\": \"gelu_pytorch_tanh\","
    " \"hidden_activation\": \"gelu_pytorch_tanh\", \"hidden_size\": 2304,"
    " \"intermediate_size\": 9216, \"max_position_embeddings\": 8192, \"model_type\": \"gemma2\","
    " \"num_attention_heads\": 8, \"num_hidden_layers\": 26, \"num_key_value_heads\": 4,"
    " \"query_pre_attn_scalar\": 256, \"rms_norm_eps\": 1e-06, \"rope_theta\": 10000.0,"
    " \"sliding_window\": 4096, \"torch_dtype\": \"float32\", \"vocab_size\": 256000}";

static const char *gemma3_hub =
    "{\"architectures\": [\"Gemma3ForCausalLM\"], \"attn_logit_softcapping\": null,"
    " \"bos_token_id\": 2, \"eos_token_id\": [1, 106], \"final_logit_softcapping\": null,"
    " \"head_dim\": 256, \"hidden_activation\": \"gelu_pytorch_tanh\", \"hidden_size\": 1152,"
    " \"intermediate_size\": 6912, \"max_position_embeddings\": 32768,"
    " \"model_type\": \"gemma3_text\", \"num_attention_heads\": 4, \"num_hidden_layers\": 26,"
    " \"num_key_value_heads\": 1, \"query_pre_attn_scalar\": 256, \"rms_norm_eps\": 1e-06,"
    " \"rope_local_base_freq\": 10000, \"rope_scaling\": null, \"rope_theta\": 1000000,"
    " \"sliding_window\": 512, \"sliding_window_pattern\": 6, \"torch_dtype\": \"bfloat16\","
    " \"vocab_size\": 262144}";

static const char *phi4mini_hub =
    "{\"architectures\": [\"Phi3ForCausalLM\"], \"bos_token_id\": 199999,"
    " \"eos_token_id\": 199999, \"hidden_act\": \"silu\", \"hidden_size\": 3072,"
    " \"intermediate_size\": 8192, \"max_position_embeddings\": 131072, \"model_type\": \"phi3\","
    " \"num_attention_heads\": 24, \"num_hidden_layers\": 32, \"num_key_value_heads\": 8,"
    " \"original_max_position_embeddings\": 4096, \"partial_rotary_factor\": 0.75,"
    " \"rms_norm_eps\": 1e-05, \"rope_scaling\": {\"long_factor\": [1, 1.118, 1.25, 1.398, 1.5,"
    " 1.7, 2, 2.5, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24,"
    " 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42], \"short_factor\":"
    " [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,"
    " 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1.5], \"type\": \"longrope\"},"
    " \"rope_theta\": 10000.0, \"sliding_window\": 262144, \"tie_word_embeddings\": true,"
    " \"torch_dtype\": \"bfloat16\", \"vocab_size\": 200064}";

static const char *granite_hub =
    "{\"architectures\": [\"GraniteForCausalLM\"], \"attention_bias\": false,"
    " \"attention_multiplier\": 0.015625, \"bos_token_id\": 0, \"embedding_multiplier\": 12.0,"
    " \"eos_token_id\": 0, \"hidden_act\": \"silu\", \"hidden_size\": 2048,"
    " \"intermediate_size\": 8192, \"logits_scaling\": 8.0, \"max_position_embeddings\": 131072,"
    " \"mlp_bias\": false, \"model_type\": \"granite\", \"num_attention_heads\": 32,"
    " \"num_hidden_layers\": 40, \"num_key_value_heads\": 8, \"residual_multiplier\": 0.22,"
    " \"rms_norm_eps\": 1e-05, \"rope_scaling\": null, \"rope_theta\": 5000000.0,"
    " \"tie_word_embeddings\": true, \"torch_dtype\": \"bfloat16\", \"vocab_size\": 49155}";

static const char *smollm3_hub =
    "{\"architectures\": [\"SmolLM3ForCausalLM\"], \"attention_bias\": false,"
    " \"bos_token_id\": null, \"eos_token_id\": 128012, \"hidden_act\": \"silu\","
    " \"hidden_size\": 2048, \"intermediate_size\": 11008, \"max_position_embeddings\": 65536,"
    " \"max_window_layers\": 28, \"mlp_bias\": false, \"model_type\": \"smollm3\","
    " \"no_rope_layer_interval\": 4, \"num_attention_heads\": 16, \"num_hidden_layers\": 8,"
    " \"num_key_value_heads\": 4, \"rms_norm_eps\": 1e-06, \"rope_scaling\": null,"
    " \"rope_theta\": 5000000.0, \"sliding_window\": null, \"use_sliding_window\": false,"
    " \"torch_dtype\": \"bfloat16\", \"vocab_size\": 128256}";

static int count_sliding(const hf_config *c) {
    int n = 0;
    for (int l = 0; l < c->n_layers; l++) n += hf_config_layer_sliding(c, l);
    return n;
}

START_TEST(issue17_families_parse) {
    hf_config c;
    kv_error err;
    ck_assert_msg(parse(&c, qwen3_hub, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.arch, HF_ARCH_QWEN3);
    ck_assert(c.qk_norm && !c.attention_bias && c.act == HF_ACT_SILU);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.rot_dim, 128);
    ck_assert_int_eq(c.sliding_window, 0);
    ck_assert_float_eq(hf_config_attn_scale(&c), (float)(1.0 / sqrt(128.0)));

    ck_assert_msg(parse(&c, gemma2_hub, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.arch, HF_ARCH_GEMMA2);
    ck_assert(!c.qk_norm && c.act == HF_ACT_GELU_TANH);
    ck_assert_double_eq(c.attn_softcap, 50.0);
    ck_assert_double_eq(c.final_softcap, 30.0);
    ck_assert_int_eq(c.sliding_window, 4096);
    /* Gemma2Config: layer i slides when (i + 1) % 2 != 0, i.e. the even layers */
    ck_assert_int_eq(count_sliding(&c), 13);
    ck_assert(hf_config_layer_sliding(&c, 0) && !hf_config_layer_sliding(&c, 1));
    ck_assert_float_eq(hf_config_attn_scale(&c), 1.0f / 16.0f);
    /* absent soft caps take the Gemma2Config defaults; null turns them off */
    ck_assert_int_eq(parse_patched(&c, gemma2_hub, "{}", "final_logit_softcapping", &err), 0);
    ck_assert_double_eq(c.final_softcap, 30.0);
    ck_assert_int_eq(
        parse_patched(&c, gemma2_hub, "{\"attn_logit_softcapping\": null}", NULL, &err), 0);
    ck_assert_double_eq(c.attn_softcap, 0.0);

    ck_assert_msg(parse(&c, gemma3_hub, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.arch, HF_ARCH_GEMMA3);
    ck_assert(c.qk_norm && c.rope_local);
    ck_assert_double_eq(c.rope_local_theta, 10000.0);
    ck_assert_double_eq(c.rope_theta, 1e6);
    ck_assert_double_eq(c.attn_softcap, 0.0);
    ck_assert_double_eq(c.final_softcap, 0.0);
    /* sliding_window_pattern 6: layers 5, 11, 17, 23 are global */
    ck_assert_int_eq(count_sliding(&c), 22);
    ck_assert(!hf_config_layer_sliding(&c, 5) && !hf_config_layer_sliding(&c, 23));
    ck_assert(hf_config_layer_sliding(&c, 25));
    ck_assert_int_eq(c.n_eos, 2);

    ck_assert_msg(parse(&c, phi4mini_hub, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.arch, HF_ARCH_PHI3);
    ck_assert_int_eq(c.head_dim, 128);
    ck_assert_int_eq(c.rot_dim, 96);
    ck_assert_int_eq(c.rope_type, HF_ROPE_LONGROPE);
    ck_assert_int_eq(c.n_rope_factors, 48);
    ck_assert_int_eq(c.rope_original_max_position, 4096);
    ck_assert_double_eq(c.rope_long_factor[1], 1.118);
    ck_assert_double_eq(c.rope_short_factor[47], 1.5);
    ck_assert_double_eq_tol(c.rope_attention_factor, sqrt(1 + log(32.0) / log(4096.0)), 1e-12);
    ck_assert_int_eq(c.sliding_window, 262144); /* every layer, but it never bites */
    ck_assert_int_eq(count_sliding(&c), 32);

    ck_assert_msg(parse(&c, granite_hub, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.arch, HF_ARCH_GRANITE);
    ck_assert_double_eq(c.embedding_multiplier, 12.0);
    ck_assert_double_eq(c.residual_multiplier, 0.22);
    ck_assert_double_eq(c.logits_scaling, 8.0);
    ck_assert_float_eq(hf_config_attn_scale(&c), 0.015625f);

    ck_assert_msg(parse(&c, smollm3_hub, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.arch, HF_ARCH_SMOLLM3);
    for (int l = 0; l < 8; l++) ck_assert(hf_config_layer_rope(&c, l) == ((l + 1) % 4 != 0));
    ck_assert_int_eq(parse_patched(&c, smollm3_hub,
                                   "{\"no_rope_layers\": [1, 0, 1, 1, 1, 1, 1, 0]}", NULL, &err),
                     0);
    ck_assert(!hf_config_layer_rope(&c, 1) && hf_config_layer_rope(&c, 3) &&
              !hf_config_layer_rope(&c, 7));
    ck_assert_int_eq(c.sliding_window, 0);
}
END_TEST

START_TEST(sliding_window_layers) {
    hf_config c;
    kv_error err;
    /* Mistral: every layer, once sliding_window is set */
    ck_assert_int_eq(parse_patched(&c, mistral_hub, "{\"sliding_window\": 4096}", NULL, &err), 0);
    ck_assert_int_eq(c.sliding_window, 4096);
    ck_assert_int_eq(count_sliding(&c), 32);
    /* Qwen2: with use_sliding_window, the layers from max_window_layers on */
    ck_assert_int_eq(parse_patched(&c, qwen25_hub,
                                   "{\"use_sliding_window\": true, \"sliding_window\": 4096,"
                                   " \"max_window_layers\": 20}",
                                   NULL, &err),
                     0);
    ck_assert_int_eq(count_sliding(&c), 4);
    ck_assert(!hf_config_layer_sliding(&c, 19) && hf_config_layer_sliding(&c, 20));
    /* Qwen2.5 as published: use_sliding_window false, no window anywhere */
    ck_assert_int_eq(parse(&c, qwen25_hub, &err), 0);
    ck_assert_int_eq(c.sliding_window, 0);
    ck_assert_int_eq(count_sliding(&c), 0);
    /* layer_types decides over the family default; v5 Gemma 3 rope_parameters per layer type */
    ck_assert_msg(parse_patched(&c, gemma3_hub,
                                "{\"num_hidden_layers\": 3, \"layer_types\": [\"full_attention\","
                                " \"sliding_attention\", \"full_attention\"], \"rope_parameters\":"
                                " {\"full_attention\": {\"rope_type\": \"linear\", \"factor\": 8.0,"
                                " \"rope_theta\": 1000000.0}, \"sliding_attention\":"
                                " {\"rope_type\": \"default\", \"rope_theta\": 20000.0}}}",
                                NULL, &err) == 0,
                  "%s", err.msg);
    ck_assert_int_eq(count_sliding(&c), 1);
    ck_assert(hf_config_layer_sliding(&c, 1));
    ck_assert_int_eq(c.rope_type, HF_ROPE_LINEAR);
    ck_assert_double_eq(c.rope_factor, 8.0);
    ck_assert_double_eq(c.rope_local_theta, 20000.0);
}
END_TEST

/* inv_freq of the new RoPE kinds against the formulas written out here (double). */
START_TEST(rope_kinds_inv_freq) {
    hf_config c;
    kv_error err;
    float inv[128];
    ck_assert_int_eq(parse(&c, phi4mini_hub, &err), 0);
    for (int longf = 0; longf < 2; longf++) {
        hf_config_rope_inv_freq_for(&c, false, longf, inv);
        for (int i = 0; i < 48; i++) {
            double f = longf ? c.rope_long_factor[i] : c.rope_short_factor[i];
            double want = 1.0 / (f * pow(10000.0, 2.0 * i / 96));
            ck_assert_double_eq_tol(inv[i], want, 1e-7 * want);
        }
    }
    ck_assert_int_eq(parse_patched(&c, gemma3_hub,
                                   "{\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 8}}",
                                   NULL, &err),
                     0);
    hf_config_rope_inv_freq_for(&c, false, false, inv); /* global: theta 1e6, / 8 */
    for (int i = 0; i < 128; i += 17)
        ck_assert_double_eq_tol(inv[i], 1.0 / (8 * pow(1e6, 2.0 * i / 256)), 1e-7 * inv[i]);
    hf_config_rope_inv_freq_for(&c, true, false, inv); /* local: theta 1e4, unscaled */
    for (int i = 0; i < 128; i += 17)
        ck_assert_double_eq_tol(inv[i], 1.0 / pow(1e4, 2.0 * i / 256), 1e-7 * inv[i]);
}
END_TEST

START_TEST(unsupported_kinds_name_the_field) {
    assert_rejected(qwen3_hub,
                    "{\"architectures\": [\"Qwen3MoeForCausalLM\"], \"model_type\": \"qwen3_moe\","
                    " \"num_experts\": 128, \"num_experts_per_tok\": 8}",
                    "num_experts = 128: mixture-of-experts models are not supported");
    assert_rejected(mistral_hub,
                    "{\"architectures\": [\"MixtralForCausalLM\"], \"num_local_experts\": 8}",
                    "num_local_experts = 8: mixture-of-experts");
    assert_rejected(qwen3_hub, "{\"n_routed_experts\": 64}", "n_routed_experts");
    assert_rejected(gemma3_hub,
                    "{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"vision_config\":"
                    " {\"hidden_size\": 1152}}",
                    "vision_config is present: multimodal models are not supported");
    assert_rejected(gemma3_hub, "{\"text_config\": {\"hidden_size\": 1152}}", "text_config");
    assert_rejected(mistral_hub, "{\"layers_block_type\": [\"mamba\", \"attention\"]}",
                    "layers_block_type is set: hybrid attention");
    assert_rejected(mistral_hub, "{\"hybrid_override_pattern\": \"M-M*\"}",
                    "hybrid_override_pattern");
    assert_rejected(qwen3_hub,
                    "{\"num_hidden_layers\": 2, \"layer_types\": [\"linear_attention\","
                    " \"full_attention\"]}",
                    "layer_types[0] 'linear_attention': hybrid attention is not supported");
    /* family fields */
    assert_rejected(gemma2_hub, "{\"hidden_activation\": \"gelu\"}",
                    "hidden_activation 'gelu' is not supported (only gelu_pytorch_tanh)");
    assert_rejected(qwen3_hub, "{\"hidden_act\": \"gelu_pytorch_tanh\"}", "hidden_act");
    assert_rejected(phi4mini_hub,
                    "{\"rope_scaling\": {\"type\": \"longrope\", \"short_factor\": [1, 2],"
                    " \"long_factor\": [1, 2]}}",
                    "rope_scaling.short_factor has 2 entries, the rotary dims need 48");
    assert_rejected(phi4mini_hub, "{\"partial_rotary_factor\": 0.001}", "partial_rotary_factor");
    assert_rejected(gemma3_hub,
                    "{\"rope_parameters\": {\"full_attention\": {\"rope_type\": \"default\"},"
                    " \"sliding_attention\": {\"rope_type\": \"linear\", \"factor\": 2}}}",
                    "rope_parameters.sliding_attention.rope_type 'linear'");
    assert_rejected(smollm3_hub, "{\"no_rope_layers\": [1, 1]}", "no_rope_layers");
    assert_rejected(granite_hub, "{\"residual_multiplier\": -1}", "residual_multiplier");
    assert_rejected(granite_hub, "{\"mlp_bias\": true}", "mlp_bias");
}
END_TEST

START_TEST(stories260k_config) {
    const char *td = getenv("KVSERVE_TESTDATA");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260K", td ? td : "");
    if (!td || access(dir, R_OK) != 0) return; /* main() reports the skip */
    hf_config c;
    kv_error err;
    ck_assert_msg(hf_config_load(&c, dir, &err) == 0, "%s", err.msg);
    ck_assert_int_eq(c.arch, HF_ARCH_LLAMA);
    ck_assert_int_eq(c.hidden_size, 64);
    ck_assert_int_eq(c.n_layers, 5);
    ck_assert_int_eq(c.n_heads, 8);
    ck_assert_int_eq(c.n_kv_heads, 4);
    ck_assert_int_eq(c.head_dim, 8);
    ck_assert_int_eq(c.intermediate_size, 172);
    ck_assert_int_eq(c.vocab_size, 512);
    ck_assert(c.tie_word_embeddings);
    ck_assert_int_eq(c.bos_token_id, 1);
    ck_assert_int_eq(c.n_eos, 1);
    ck_assert_int_eq(c.eos_token_ids[0], 2);
    ck_assert_int_eq(c.dtype, KV_DTYPE_F32);
    ck_assert_int_eq(c.rope_type, HF_ROPE_DEFAULT);
    ck_assert(fabs(c.rms_norm_eps - 1e-5) < 1e-12);
    float inv[4];
    hf_config_rope_inv_freq(&c, inv);
    ck_assert_float_eq(inv[0], 1.0f);
    ck_assert(fabsf(inv[2] - 0.01f) < 1e-9f); /* 10000^(-4/8) */
}
END_TEST

int main(void) {
    const char *td = getenv("KVSERVE_TESTDATA");
    char dir[4096];
    snprintf(dir, sizeof dir, "%s/models/stories260K", td ? td : "");
    bool have_testdata = td && access(dir, R_OK) == 0;
    if (!have_testdata) printf("SKIP: stories260K_config (no %s)\n", dir);

    Suite *s = suite_create("hf_config");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, hub_dialect_llama31);
    tcase_add_test(tc, v5_dialect_llama31_matches_hub);
    tcase_add_test(tc, v5_rope_parameters_default_and_layer_types);
    tcase_add_test(tc, qwen2_defaults_and_bias);
    tcase_add_test(tc, mistral_and_defaults);
    tcase_add_test(tc, explicit_head_dim_and_bias);
    tcase_add_test(tc, llama3_inv_freq_matches_reference);
    tcase_add_test(tc, generation_config_overrides);
    tcase_add_test(tc, load_from_directory);
    tcase_add_test(tc, rejections_name_the_field);
    tcase_add_test(tc, malformed_json);
    tcase_add_test(tc, issue17_families_parse);
    tcase_add_test(tc, sliding_window_layers);
    tcase_add_test(tc, rope_kinds_inv_freq);
    tcase_add_test(tc, unsupported_kinds_name_the_field);
    if (have_testdata) tcase_add_test(tc, stories260k_config);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
