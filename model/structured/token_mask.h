/* Token masks of a constraint: the tokenizer's byte strings in a trie (sc_vocab, built once per
 * tokenizer, read-only after) walked against a DFA state, one bitmask per state cached on first
 * use, and the per-token advance. A constraint (sc_constraint) is shared by the choices of a
 * request through a reference count; its mask cache is filled on the engine thread only. */
#ifndef KVSERVE_TOKEN_MASK_H
#define KVSERVE_TOKEN_MASK_H

#include "model/structured/regex_dfa.h"

typedef struct sc_vocab {
    int n_tokens;
    uint8_t *bytes;       /* all byte strings, concatenated */
    uint32_t *off;        /* [n_tokens + 1]; token t is bytes[off[t], off[t+1]); empty = never */
    int n_nodes;          /* trie nodes in preorder (the root is not stored) */
    uint8_t *node_byte;   /* [n_nodes] */
    uint16_t *node_depth; /* [n_nodes] 1.. */
    int32_t *node_skip;   /* [n_nodes] first node after the subtree */
    int32_t *node_tok;    /* [n_nodes] start in sorted of the tokens ending here */
    int32_t *node_n_tok;  /* [n_nodes] */
    int32_t *sorted;      /* token ids by byte string */
    int max_len;
} sc_vocab;

/* bytes[t] of lens[t] bytes for every token t (a NULL or empty string: never allowed by a mask,
 * e.g. special tokens). Copies everything. */
sc_vocab *sc_vocab_new(int n_tokens, const char *const *bytes, const size_t *lens);
void sc_vocab_free(sc_vocab *v);

typedef struct sc_constraint {
    int refs; /* atomic */
    sc_dfa *dfa;
    const sc_vocab *vocab; /* borrowed: outlives every request */
    uint64_t **masks;      /* [dfa->n_states] lazily built; bit t = token t allowed */
    int *n_allowed;        /* [dfa->n_states] tokens allowed (EOS not counted) */
    int n_words;
} sc_constraint;

/* Takes ownership of dfa. */
sc_constraint *sc_constraint_new(sc_dfa *dfa, const sc_vocab *vocab);
sc_constraint *sc_constraint_ref(sc_constraint *c);
void sc_constraint_unref(sc_constraint *c);

/* The mask of state (built and cached on first use). */
const uint64_t *sc_constraint_mask(sc_constraint *c, int32_t state, int *n_allowed);
/* Sets logits[t] = -inf for every t in [0, n_logits) the state does not allow. The eos ids keep
 * their logit only in an accepting state. Returns how many tokens remain allowed. */
int sc_constraint_apply(sc_constraint *c, int32_t state, float *logits, int n_logits,
                        const int32_t *eos_ids, int n_eos);
/* The state after token (-1 when the token is not allowed there); eos ids leave it as it is. */
int32_t sc_constraint_advance(const sc_constraint *c, int32_t state, int32_t token,
                              const int32_t *eos_ids, int n_eos);

#endif
