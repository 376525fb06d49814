// libFuzzer target: raw bytes as a data.pkl through the restricted unpickler, then a bounded walk of the
// value graph it built (values may share children or form cycles, so the walk stops at a fixed budget).
#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/strings/string_view.h"
#include "worker/checkpoint/pickle_reader.h"

namespace {

using tpserve::checkpoint::PickleValue;

// Reads every field reachable from ROOT (so ASan sees any dangling pointer), visiting at most BUDGET nodes.
size_t Walk(const PickleValue* root, size_t budget) {
  size_t seen = 0;
  std::vector<const PickleValue*> stack = {root};
  while (!stack.empty() && seen < budget) {
    const PickleValue* v = stack.back();
    stack.pop_back();
    if (v == nullptr) continue;
    ++seen;
    volatile size_t touched = v->str.size() + v->shape.size() + v->strides.size();
    (void)touched;
    for (const PickleValue* c : v->items) stack.push_back(c);
    for (const auto& [k, val] : v->entries) {
      stack.push_back(k);
      stack.push_back(val);
    }
    if (v->storage != nullptr) stack.push_back(v->storage);
  }
  return seen;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto obj = tpserve::checkpoint::Unpickle(absl::string_view(reinterpret_cast<const char*>(data), size),
                                           "fuzz/data.pkl");
  if (obj.ok()) Walk((*obj)->root, 1 << 16);
  return 0;
}
