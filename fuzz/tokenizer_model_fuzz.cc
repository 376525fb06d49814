// libFuzzer target: a hostile tokenizer.model (SentencePiece ModelProto) through Tokenizer::Load, then a
// short Encode / Decode / chat round on whatever it accepted. Load takes a directory, so each input is
// written to one scratch dir made at start-up.
#include <stdlib.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "coordinator/tokenizer/tokenizer.h"

namespace {

const std::string& ScratchDir() {
  static const std::string* dir = [] {
    const char* tmp = getenv("TMPDIR");  // scripts/fuzz.sh points it into the build dir
    std::string tmpl = std::string(tmp != nullptr && *tmp != '\0' ? tmp : "/tmp") + "/tokenizer-fuzz-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    return new std::string(tmpl);
  }();
  return *dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = ScratchDir() + "/tokenizer.model";
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size > 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  auto tok = tpserve::coordinator::Tokenizer::Load(ScratchDir());
  if (!tok.ok()) return 0;
  const tpserve::coordinator::Tokenizer& t = **tok;
  std::vector<int32_t> ids = t.Encode("Hello, w\xc3\xb6rld \xe2\x9c\x93\n 42 <s></s>", /*add_bos=*/true);
  for (int32_t id : ids) {
    if (id < 0 || id >= t.vocab_size()) {
      std::fprintf(stderr, "Encode produced id %d outside the vocabulary of %d\n", id, t.vocab_size());
      std::abort();
    }
  }
  (void)t.Decode(ids);
  std::vector<int32_t> all;
  for (int32_t id = -1; id <= t.vocab_size() && id < 512; ++id) all.push_back(id);
  (void)t.Decode(all);
  std::vector<tpserve::coordinator::ChatMessage> chat(1);
  chat[0].role = "user";
  chat[0].content = "hi";
  (void)t.EncodeChat(chat, /*add_generation_prompt=*/true);
  return 0;
}
