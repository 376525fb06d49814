// Checkpoint::Open (format detection, shard loading, index cross-checks) and ReadSlice.
#include "worker/checkpoint/checkpoint.h"

#include <sys/stat.h>

#include <map>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "worker/checkpoint/index.h"
#include "worker/checkpoint/mapped_file.h"
#include "worker/checkpoint/safetensors.h"
#include "worker/checkpoint/slice_copy.h"
#include "worker/checkpoint/tensor_layout.h"
#include "worker/checkpoint/torch_checkpoint.h"

namespace tpserve::checkpoint {
namespace {

bool IsFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

// Immutable after Open, so the const methods are thread-safe.
class MappedCheckpoint : public Checkpoint {
 public:
  MappedCheckpoint(std::string dir, std::string format) : dir_(std::move(dir)), format_(std::move(format)) {}

  // Maps SHARD and indexes its tensors; a tensor already seen in another shard is an error.
  absl::Status AddShard(const std::string& shard) {
    std::string path = dir_ + "/" + shard;
    TP_ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
    TP_ASSIGN_OR_RETURN(std::vector<TensorInfo> tensors,
                        format_ == "safetensors" ? ParseSafetensors(*file) : ParseTorchZip(*file));
    for (TensorInfo& t : tensors) {
      auto it = tensors_.find(t.name);
      if (it != tensors_.end()) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", t.name, "' appears in both ", it->second.file, " and ", t.file));
      }
      std::string name = t.name;
      tensors_.emplace(std::move(name), std::move(t));
    }
    files_.push_back(std::move(file));
    return absl::OkStatus();
  }

  // Every tensor the index names must be in the shard it names.
  absl::Status CheckIndex(const ShardIndex& index, const std::string& index_path) const {
    for (const auto& [name, shard] : index.weight_map) {
      auto it = tensors_.find(name);
      if (it == tensors_.end() || it->second.file != dir_ + "/" + shard) {
        return absl::InvalidArgumentError(absl::StrCat("index ", index_path, " places tensor '", name, "' in ", shard,
                                                       ", but that shard does not hold it"));
      }
    }
    return absl::OkStatus();
  }

  std::string format() const override { return format_; }

  std::vector<std::string> TensorNames() const override {
    std::vector<std::string> names;
    names.reserve(tensors_.size());
    for (const auto& [name, t] : tensors_) names.push_back(name);
    return names;
  }

  absl::StatusOr<const TensorInfo*> Get(absl::string_view name) const override {
    auto it = tensors_.find(std::string(name));
    if (it == tensors_.end()) {
      return absl::NotFoundError(absl::StrCat("tensor '", name, "' not found in checkpoint ", dir_));
    }
    return &it->second;
  }

  absl::Status ReadSlice(absl::string_view name, const std::vector<int64_t>& expected_shape, int dim, int64_t begin,
                         int64_t end, DType out_dtype, void* dst) const override {
    TP_ASSIGN_OR_RETURN(const TensorInfo* t, Get(name));
    if (t->shape != expected_shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' in ", t->file, " has shape ",
                                                     ShapeString(t->shape), ", expected ", ShapeString(expected_shape),
                                                     " (does config.json match the checkpoint?)"));
    }
    const int rank = static_cast<int>(t->shape.size());
    if (rank != 1 && rank != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' has rank ", rank, "; ReadSlice reads only 1-D and 2-D tensors"));
    }
    if (dim < 0 || dim >= rank) {
      return absl::InvalidArgumentError(absl::StrCat("ReadSlice of '", name, "': dim ", dim, " is invalid for a ",
                                                     rank, "-D tensor"));
    }
    if (begin < 0 || begin > end || end > t->shape[dim]) {
      return absl::InvalidArgumentError(absl::StrCat("ReadSlice of '", name, "': range [", begin, ", ", end,
                                                     ") is outside dimension ", dim, " of size ", t->shape[dim]));
    }
    if (dst == nullptr && end > begin) {
      return absl::InvalidArgumentError(absl::StrCat("ReadSlice of '", name, "': null destination"));
    }
    StridedView v;
    v.src_dtype = t->dtype;
    const size_t esize = DTypeSize(t->dtype);
    if (rank == 1) {
      v.rows = 1;
      v.cols = end - begin;
      v.col_stride = t->strides[0];
      v.src = t->data + static_cast<size_t>(begin * t->strides[0]) * esize;
    } else if (dim == 0) {
      v.rows = end - begin;
      v.cols = t->shape[1];
      v.row_stride = t->strides[0];
      v.col_stride = t->strides[1];
      v.src = t->data + static_cast<size_t>(begin * t->strides[0]) * esize;
    } else {
      v.rows = t->shape[0];
      v.cols = end - begin;
      v.row_stride = t->strides[0];
      v.col_stride = t->strides[1];
      v.src = t->data + static_cast<size_t>(begin * t->strides[1]) * esize;
    }
    CopyStridedView(v, out_dtype, dst);
    return absl::OkStatus();
  }

 private:
  std::string dir_;
  std::string format_;
  std::vector<std::unique_ptr<MappedFile>> files_;  // keep every mapping alive for TensorInfo::data
  std::map<std::string, TensorInfo> tensors_;
};

absl::StatusOr<std::unique_ptr<Checkpoint>> OpenSingle(const std::string& dir, const std::string& file,
                                                       const std::string& format) {
  auto ckpt = std::make_unique<MappedCheckpoint>(dir, format);
  TP_RETURN_IF_ERROR(ckpt->AddShard(file));
  return std::unique_ptr<Checkpoint>(std::move(ckpt));
}

absl::StatusOr<std::unique_ptr<Checkpoint>> OpenIndexed(const std::string& dir, const std::string& index_file,
                                                        const std::string& format) {
  std::string index_path = dir + "/" + index_file;
  TP_ASSIGN_OR_RETURN(ShardIndex index, LoadShardIndex(index_path));
  auto ckpt = std::make_unique<MappedCheckpoint>(dir, format);
  for (const std::string& shard : index.shards) {
    if (!IsFile(dir + "/" + shard)) {
      std::string example;
      for (const auto& [name, s] : index.weight_map) {
        if (s == shard) {
          example = name;
          break;
        }
      }
      return absl::InvalidArgumentError(absl::StrCat("index ", index_path, " names shard ", shard, " (for tensor '",
                                                     example, "'), but ", dir, "/", shard,
                                                     " is missing: incomplete download?"));
    }
    TP_RETURN_IF_ERROR(ckpt->AddShard(shard));
  }
  TP_RETURN_IF_ERROR(ckpt->CheckIndex(index, index_path));
  return std::unique_ptr<Checkpoint>(std::move(ckpt));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& dir) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("checkpoint directory ", dir, " does not exist"));
  }
  if (IsFile(dir + "/model.safetensors")) return OpenSingle(dir, "model.safetensors", "safetensors");
  if (IsFile(dir + "/model.safetensors.index.json")) {
    return OpenIndexed(dir, "model.safetensors.index.json", "safetensors");
  }
  if (IsFile(dir + "/pytorch_model.bin")) return OpenSingle(dir, "pytorch_model.bin", "pytorch");
  if (IsFile(dir + "/pytorch_model.bin.index.json")) {
    return OpenIndexed(dir, "pytorch_model.bin.index.json", "pytorch");
  }
  return absl::NotFoundError(absl::StrCat("no checkpoint in ", dir,
                                          ": expected model.safetensors, model.safetensors.index.json, "
                                          "pytorch_model.bin or pytorch_model.bin.index.json"));
}

}  // namespace tpserve::checkpoint
