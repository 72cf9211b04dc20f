/* JSON Schema (the subset clients send), generic JSON, choice lists and literals turned into the
 * regex text regex_dfa compiles. Nesting is bounded (sc_limits.max_depth): objects and arrays
 * deeper than that, and $ref recursion past it, are left out of the language, so a recursive
 * schema still compiles to a finite automaton (its optional branches stop at the depth).
 * Knows nothing of tokens or requests. */
#ifndef KVSERVE_JSON_SCHEMA_H
#define KVSERVE_JSON_SCHEMA_H

#include <jansson.h>

#include "model/structured/regex_dfa.h"

/* The regex of JSON text valid under schema (*out malloc'd). Unsupported keywords, types or
 * combinations return -1 with a message naming them ("unsupported JSON Schema keyword
 * 'patternProperties' at #/properties/x"). */
int sc_schema_regex(json_t *schema, const sc_limits *lim, char **out, kv_error *err);
/* Any JSON object (response_format json_object): three levels of containers at most (fewer when
 * lim->max_depth is lower); values of no schema nest at most three levels. */
char *sc_json_object_regex(const sc_limits *lim);
/* One of the strings, exactly (guided_choice); n >= 1. */
char *sc_choice_regex(const char *const *choices, int n);

#endif
