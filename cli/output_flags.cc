// Flags shared by the client-side commands (generate, tokenize, make-model).
#include <cstdint>

#include "absl/flags/flag.h"

ABSL_FLAG(bool, json, false, "print JSON (generate: one object at the end instead of streaming text)");
ABSL_FLAG(int64_t, seed, -1,
          "generate: per-request sampling seed (-1 = the server picks one); make-model: weight seed (-1 = 0)");
