// libFuzzer target: tokenizer_config.json / special_tokens_map.json text through ParseSpecialTokensJson,
// the parser Tokenizer::Load runs on both files (the first byte picks which name the messages use).
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "coordinator/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tpserve::coordinator::SpecialTokenNames names;
  names.bos = "<s>";  // as if an earlier file had named it: a later file may overlay or keep it
  const std::string file = size > 0 && data[0] % 2 ? "special_tokens_map.json" : "tokenizer_config.json";
  absl::Status s = tpserve::coordinator::ParseSpecialTokensJson(
      absl::string_view(reinterpret_cast<const char*>(data), size), file, &names);
  (void)s;
  return 0;
}
