// Trains a small Llama-style SentencePiece tokenizer for synthetic test models (make-model).
#pragma once

#include <string>

#include "absl/status/status.h"

namespace tpserve::coordinator {

struct TrainTokenizerOptions {
  // Receives tokenizer.model, tokenizer_config.json and special_tokens_map.json (created if missing).
  std::string out_dir;
  // Requested vocabulary. A small corpus cannot fill 32000 entries, so the limit is soft: the trained vocab may
  // be smaller (see the vocab_size_out overload). It must leave room for <unk>/<s>/</s>, the 256 byte pieces and
  // the corpus' characters, or training fails with INVALID_ARGUMENT.
  int vocab_size = 0;
  // Folder of *.txt training text. Empty: DefaultTokenizerCorpusDir().
  std::string corpus_dir;
};

// Trains SentencePiece BPE the way Llama's tokenizer was made: byte_fallback, split_digits, add_dummy_prefix,
// identity normalization, extra whitespace kept; unk 0, bos 1 ("<s>"), eos 2 ("</s>"), no pad. Deterministic
// (one thread) and takes a few seconds on the bundled corpus. tokenizer_config.json carries the Tulu
// chat_template verbatim (kTuluChatTemplate) and bos/eos "<s>"/"</s>".
// Errors: INVALID_ARGUMENT for a bad option or a corpus folder that is missing or holds no *.txt (naming it);
// INTERNAL when writing the output fails.
absl::Status TrainTokenizer(const TrainTokenizerOptions& options);
// Same, and stores the trained vocabulary size (<= options.vocab_size) in *vocab_size_out. A model built for
// this tokenizer needs vocab_size >= *vocab_size_out (callers use max(requested, trained)).
absl::Status TrainTokenizer(const TrainTokenizerOptions& options, int* vocab_size_out);

// The bundled corpus: <source tree>/data/tokenizer-corpus when this binary was built from a checkout that still
// exists, else <dir of the executable>/../share/tpserve/tokenizer-corpus; "" when neither exists.
std::string DefaultTokenizerCorpusDir();

}  // namespace tpserve::coordinator
