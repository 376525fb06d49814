// libFuzzer target: a torch.save zip image through ReadZipDirectory (every entry must lie inside the
// image) and then ParseTorchZip (zip + restricted pickle + storage resolution; accepted tensors must lie
// inside the image).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>

#include "fuzz/fuzz_checks.h"
#include "worker/checkpoint/torch_checkpoint.h"
#include "worker/checkpoint/zip_reader.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = tpserve::checkpoint::MappedFile::FromMemory("fuzz.pt", data, size);
  auto entries = tpserve::checkpoint::ReadZipDirectory(*file);
  if (!entries.ok()) return 0;
  for (const auto& e : *entries) {
    if (e.data_offset > size || e.size > size - e.data_offset) {
      std::fprintf(stderr, "zip entry %s: [%llu, +%llu) outside the %zu-byte file\n", e.name.c_str(),
                   static_cast<unsigned long long>(e.data_offset), static_cast<unsigned long long>(e.size), size);
      std::abort();
    }
  }
  auto tensors = tpserve::checkpoint::ParseTorchZip(*file);
  if (tensors.ok()) tpserve::fuzz::CheckTensorsInside(*tensors, file->data(), file->size());
  return 0;
}
