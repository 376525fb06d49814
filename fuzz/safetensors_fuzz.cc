// libFuzzer target: a whole .safetensors file image through ParseSafetensors, held in memory so any read
// past the end is an ASan report; every accepted tensor must lie inside the image.
#include <cstddef>
#include <cstdint>

#include "fuzz/fuzz_checks.h"
#include "worker/checkpoint/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto file = tpserve::checkpoint::MappedFile::FromMemory("fuzz.safetensors", data, size);
  auto tensors = tpserve::checkpoint::ParseSafetensors(*file);
  if (tensors.ok()) tpserve::fuzz::CheckTensorsInside(*tensors, file->data(), file->size());
  return 0;
}
