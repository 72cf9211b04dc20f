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
                    "{\"rope_parameters\": {\"rope_type\": \"linear\", \"factor\": 2.0,"
                    " \"rope_theta\": 10000.0}}",
                    "rope_parameters.rope_type 'linear' is not supported");
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
    assert_rejected(mistral_hub, "{\"sliding_window\": 4096}",
                    "sliding_window 4096 is smaller than max_position_embeddings 32768");
    assert_rejected(qwen25_hub,
                    "{\"use_sliding_window\": true, \"sliding_window\": 4096,"
                    " \"max_window_layers\": 20}",
                    "sliding_window 4096");
    assert_rejected(llama31_v5,
                    "{\"num_hidden_layers\": 2, \"layer_types\": [\"full_attention\","
                    " \"sliding_attention\"]}",
                    "layer_types[1] 'sliding_attention' is not supported");
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
    if (have_testdata) tcase_add_test(tc, stories260k_config);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
