// llamacpp-quality: the llama.cpp side of bench/compare-quantization, built by that script against the
// prebuilt node-llama-cpp libraries (the same build bench/compare-llamacpp uses); not part of the CMake build.
//   llamacpp-quality quantize IN.gguf OUT.gguf q8_0 [--leave-output]   llama_model_quantize, as llama-quantize
//   llamacpp-quality logits MODEL.gguf SEQS.txt OUT.bin                  teacher-forced logits
//   llamacpp-quality greedy MODEL.gguf PROMPTS.txt N OUT.txt             greedy ids
// SEQS.txt / PROMPTS.txt: one sequence of token ids per line (space-separated, BOS included). logits writes,
// per sequence of n ids, the float32 logits after each of the first n - 1 ids ([n - 1][vocab]), sequences
// back to back. greedy writes one line of N generated ids per prompt. One thread, whole sequence per batch.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "llama.h"

namespace {

std::vector<std::vector<llama_token>> ReadSeqs(const char* path) {
  std::ifstream in(path);
  std::vector<std::vector<llama_token>> seqs;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    std::vector<llama_token> s;
    llama_token t;
    while (ss >> t) s.push_back(t);
    if (!s.empty()) seqs.push_back(s);
  }
  return seqs;
}

int Fail(const char* what) {
  std::fprintf(stderr, "llamacpp-quality: %s\n", what);
  return 1;
}

struct Session {
  llama_model* model = nullptr;
  llama_context* ctx = nullptr;
  int vocab = 0;
  ~Session() {
    if (ctx) llama_free(ctx);
    if (model) llama_model_free(model);
  }
};

bool Open(const char* path, Session* s) {
  llama_model_params mp = llama_model_default_params();
  mp.n_gpu_layers = 0;
  s->model = llama_model_load_from_file(path, mp);
  if (!s->model) return false;
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 1024;
  cp.n_batch = 1024;
  cp.n_ubatch = 1024;
  cp.n_threads = 1;
  cp.n_threads_batch = 1;
  s->ctx = llama_init_from_model(s->model, cp);
  if (!s->ctx) return false;
  s->vocab = llama_vocab_n_tokens(llama_model_get_vocab(s->model));
  return true;
}

// Decodes ids at positions [pos0, pos0 + n) with logits for every one of them.
bool Decode(Session& s, const llama_token* ids, int n, int pos0) {
  llama_batch b = llama_batch_init(n, 0, 1);
  for (int i = 0; i < n; ++i) {
    b.token[i] = ids[i];
    b.pos[i] = pos0 + i;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = 0;
    b.logits[i] = 1;
  }
  b.n_tokens = n;
  const bool ok = llama_decode(s.ctx, b) == 0;
  llama_batch_free(b);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Fail("usage: quantize IN OUT q8_0 [--leave-output] | logits MODEL SEQS OUT | greedy MODEL PROMPTS N OUT");
  const std::string cmd = argv[1];
  llama_backend_init();
  ggml_backend_load_all();
  if (cmd == "quantize" && argc >= 5) {
    if (std::strcmp(argv[4], "q8_0") != 0) return Fail("only q8_0");
    llama_model_quantize_params p = llama_model_quantize_default_params();
    p.ftype = LLAMA_FTYPE_MOSTLY_Q8_0;
    p.nthread = 1;
    p.quantize_output_tensor = !(argc >= 6 && std::strcmp(argv[5], "--leave-output") == 0);
    return llama_model_quantize(argv[2], argv[3], &p) == 0 ? 0 : Fail("llama_model_quantize failed");
  }
  if (cmd == "logits" && argc == 5) {
    Session s;
    if (!Open(argv[2], &s)) return Fail("cannot load model");
    FILE* out = std::fopen(argv[4], "wb");
    if (!out) return Fail("cannot write output");
    for (const auto& seq : ReadSeqs(argv[3])) {
      llama_memory_clear(llama_get_memory(s.ctx), true);
      const int n = static_cast<int>(seq.size()) - 1;
      if (!Decode(s, seq.data(), n, 0)) return Fail("llama_decode failed");
      for (int i = 0; i < n; ++i) std::fwrite(llama_get_logits_ith(s.ctx, i), sizeof(float), s.vocab, out);
    }
    std::fclose(out);
    return 0;
  }
  if (cmd == "greedy" && argc == 6) {
    Session s;
    if (!Open(argv[2], &s)) return Fail("cannot load model");
    const int num_new = std::atoi(argv[4]);
    std::ofstream out(argv[5]);
    for (const auto& prompt : ReadSeqs(argv[3])) {
      llama_memory_clear(llama_get_memory(s.ctx), true);
      if (!Decode(s, prompt.data(), static_cast<int>(prompt.size()), 0)) return Fail("llama_decode failed");
      int pos = static_cast<int>(prompt.size());
      const float* l = llama_get_logits_ith(s.ctx, -1);
      for (int g = 0; g < num_new; ++g) {
        llama_token best = 0;
        for (int v = 1; v < s.vocab; ++v) {
          if (l[v] > l[best]) best = v;
        }
        out << (g ? " " : "") << best;
        if (!Decode(s, &best, 1, pos++)) return Fail("llama_decode failed");
        l = llama_get_logits_ith(s.ctx, -1);
      }
      out << "\n";
    }
    return 0;
  }
  return Fail("bad arguments");
}
