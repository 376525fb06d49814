// gguf-export: one GGUF file (llama.cpp's format) from a tpserve / Hugging Face Llama checkpoint directory and
// its tokenizer.model, so llama.cpp and tpserve can be benchmarked on the same weights (bench/compare-llamacpp).
//   gguf-export --model build/llamacpp/model --out build/llamacpp/model-f16.gguf --dtype f16
// 2-D matrices become --dtype (f16, bf16 or f32, converted from the stored dtype with round-to-nearest-even);
// norm weights are f32. Tensor data is streamed in 64 MiB chunks and finished source pages are released, so
// resident memory stays about 200 MB whatever the model size (bench-0.9b: 1.9 GB in 8 s).
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>

#include "absl/flags/flag.h"
#include "absl/flags/usage.h"
#include "bench/dashed_flags.h"
#include "tools/checkpoint/gguf_writer.h"

ABSL_FLAG(std::string, model, "", "checkpoint directory (config.json + safetensors or PyTorch shards)");
ABSL_FLAG(std::string, tokenizer, "", "SentencePiece tokenizer.model (default: MODEL/tokenizer.model)");
ABSL_FLAG(std::string, out, "", "output .gguf file");
ABSL_FLAG(std::string, dtype, "f16", "type of the 2-D weight matrices: f16, bf16 or f32");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("gguf-export --model DIR --out FILE.gguf [--dtype f16|bf16|f32] [--tokenizer PATH]");
  tpserve::bench::ParseDashedCommandLine(argc, argv);
  tpserve::checkpoint::GgufExportOptions o;
  o.model_dir = absl::GetFlag(FLAGS_model);
  o.tokenizer_path = absl::GetFlag(FLAGS_tokenizer);
  o.out_path = absl::GetFlag(FLAGS_out);
  o.dtype = absl::GetFlag(FLAGS_dtype);
  if (o.model_dir.empty() || o.out_path.empty()) {
    std::fprintf(stderr, "gguf-export: --model DIR and --out FILE are required (see --help)\n");
    return 2;
  }
  if (auto t = tpserve::checkpoint::ParseGgmlType(o.dtype); !t.ok()) {
    std::fprintf(stderr, "gguf-export: --dtype: %s\n", std::string(t.status().message()).c_str());
    return 2;
  }
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = tpserve::checkpoint::ExportLlamaGguf(o);
  if (!s.ok()) {
    std::fprintf(stderr, "gguf-export: %s\n", s.ToString().c_str());
    return 1;
  }
  std::error_code ec;
  const auto bytes = std::filesystem::file_size(o.out_path, ec);
  std::fprintf(stderr, "gguf-export: wrote %s (%s, %.2f GB) in %.1f s\n", o.out_path.c_str(), o.dtype.c_str(),
               ec ? 0.0 : bytes / 1e9,
               std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return 0;
}
