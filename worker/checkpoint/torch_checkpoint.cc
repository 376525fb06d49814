// Resolves the unpickled state dict against the zip's storage entries.
#include "worker/checkpoint/torch_checkpoint.h"

#include <set>
#include <unordered_map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "worker/checkpoint/pickle_reader.h"
#include "worker/checkpoint/tensor_layout.h"
#include "worker/checkpoint/zip_reader.h"

namespace tpserve::checkpoint {
namespace {

absl::Status Bad(const MappedFile& f, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat("PyTorch checkpoint ", f.path(), ": ", what));
}

}  // namespace

absl::StatusOr<std::vector<TensorInfo>> ParseTorchZip(const MappedFile& file) {
  auto entries_or = ReadZipDirectory(file);
  if (!entries_or.ok()) return entries_or.status();
  const std::vector<ZipEntry>& entries = *entries_or;

  // The top folder is the archive name torch chose (usually the file stem); find it via data.pkl.
  const ZipEntry* pkl = nullptr;
  for (const ZipEntry& e : entries) {
    if (e.name == "data.pkl" || absl::EndsWith(e.name, "/data.pkl")) {
      if (pkl != nullptr) return Bad(file, absl::StrCat("more than one data.pkl ('", pkl->name, "', '", e.name, "')"));
      pkl = &e;
    }
  }
  if (pkl == nullptr) {
    return Bad(file, "no '<archive>/data.pkl' entry; is this a torch.save zip file (not the legacy tar format)?");
  }
  std::string prefix = pkl->name.substr(0, pkl->name.size() - std::string("data.pkl").size());
  std::unordered_map<std::string, const ZipEntry*> storages;
  for (const ZipEntry& e : entries) {
    if (absl::StartsWith(e.name, prefix + "data/")) storages[e.name.substr(prefix.size() + 5)] = &e;
  }

  absl::string_view pkl_bytes(reinterpret_cast<const char*>(file.data() + pkl->data_offset), pkl->size);
  auto obj_or = Unpickle(pkl_bytes, file.path());
  if (!obj_or.ok()) return obj_or.status();
  const PickleValue* root = (*obj_or)->root;
  if (root->kind != PickleValue::Kind::kDict) return Bad(file, "data.pkl does not hold a state dict");

  std::vector<TensorInfo> tensors;
  std::set<std::string> seen;
  for (const auto& [key, value] : root->entries) {
    if (key->kind != PickleValue::Kind::kString) return Bad(file, "state dict has a non-string key");
    const std::string& name = key->str;
    auto where = [&](absl::string_view what) { return Bad(file, absl::StrCat("tensor '", name, "': ", what)); };
    if (value->kind != PickleValue::Kind::kTensor) return where("value is not a tensor");
    if (!seen.insert(name).second) return where("appears twice");
    const PickleValue* storage = value->storage;
    auto it = storages.find(storage->str);
    if (it == storages.end()) {
      return where(absl::StrCat("storage '", storage->str, "' has no entry '", prefix, "data/", storage->str, "'"));
    }
    const ZipEntry& entry = *it->second;
    const size_t esize = DTypeSize(value->dtype);
    int64_t storage_numel = storage->integer;
    int64_t storage_bytes = 0;
    if (!CheckedNumel({storage_numel}, esize, &storage_bytes) ||
        static_cast<uint64_t>(storage_numel) * esize > entry.size) {
      return where(absl::StrCat("storage '", storage->str, "' claims ", storage_numel, " ", DTypeName(value->dtype),
                                " elements but its entry holds ", entry.size, " bytes"));
    }
    int64_t numel = 0, extent = 0;
    if (!CheckedNumel(value->shape, esize, &numel) || !CheckedExtent(value->shape, value->strides, &extent)) {
      return where(absl::StrCat("invalid size ", ShapeString(value->shape), " / stride ", ShapeString(value->strides)));
    }
    if (value->storage_offset < 0 || value->storage_offset > storage_numel ||
        extent > storage_numel - value->storage_offset) {
      return where(absl::StrCat("view at offset ", value->storage_offset, " with size ", ShapeString(value->shape),
                                " and stride ", ShapeString(value->strides), " needs ", extent,
                                " elements, past the end of storage '", storage->str, "' (", storage_numel, ")"));
    }
    if (entry.data_offset % esize != 0) {
      return where(absl::StrCat("storage '", storage->str, "' data is misaligned for ", DTypeName(value->dtype)));
    }
    TensorInfo t;
    t.name = name;
    t.dtype = value->dtype;
    t.shape = value->shape;
    t.strides = value->strides;
    t.data = file.data() + entry.data_offset + static_cast<size_t>(value->storage_offset) * esize;
    t.file = file.path();
    tensors.push_back(std::move(t));
  }
  return tensors;
}

}  // namespace tpserve::checkpoint
