// Protocol-2 pickle emission matching torch.save's opcode choices (memo puts omitted: not needed).
#include "tools/checkpoint/pickle_writer.h"

namespace tpserve::checkpoint {
namespace {

class Emitter {
 public:
  void Op(char op) { out_.push_back(op); }
  void Le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
  }
  void Str(const std::string& s) {
    Op('X');  // BINUNICODE
    Le(s.size(), 4);
    out_ += s;
  }
  void Int(int64_t v) {
    if (v >= 0 && v < 256) {
      Op('K');
      Le(v, 1);
    } else if (v >= 0 && v < 65536) {
      Op('M');
      Le(v, 2);
    } else if (v >= INT32_MIN && v <= INT32_MAX) {
      Op('J');
      Le(static_cast<uint32_t>(static_cast<int32_t>(v)), 4);
    } else {
      Op('\x8a');  // LONG1, 8 bytes two's complement
      Le(8, 1);
      Le(static_cast<uint64_t>(v), 8);
    }
  }
  void Global(const char* module, const char* name) {
    Op('c');
    out_ += module;
    out_ += '\n';
    out_ += name;
    out_ += '\n';
  }
  void IntTuple(const std::vector<int64_t>& v) {
    if (v.empty()) {
      Op(')');
      return;
    }
    if (v.size() > 3) Op('(');
    for (int64_t x : v) Int(x);
    Op(v.size() == 1 ? '\x85' : v.size() == 2 ? '\x86' : v.size() == 3 ? '\x87' : 't');
  }
  std::string& out() { return out_; }

 private:
  std::string out_;
};

const char* StorageName(DType t) {
  switch (t) {
    case DType::kF32: return "FloatStorage";
    case DType::kBF16: return "BFloat16Storage";
    case DType::kF16: return "HalfStorage";
  }
  return "FloatStorage";
}

}  // namespace

std::string PickleStateDict(const std::vector<PickledTensorSpec>& tensors) {
  Emitter e;
  e.Op('\x80');  // PROTO 2
  e.Le(2, 1);
  e.Op('}');  // EMPTY_DICT
  constexpr size_t kBatch = 1000;  // pickle batches SETITEMS like this
  for (size_t i = 0; i < tensors.size(); ++i) {
    if (i % kBatch == 0) e.Op('(');
    const PickledTensorSpec& t = tensors[i];
    e.Str(t.name);
    e.Global("torch._utils", "_rebuild_tensor_v2");
    e.Op('(');
    e.Op('(');  // persistent id tuple
    e.Str("storage");
    e.Global("torch", StorageName(t.dtype));
    e.Str(t.storage_key);
    e.Str("cpu");
    e.Int(t.storage_numel);
    e.Op('t');
    e.Op('Q');  // BINPERSID
    e.Int(t.storage_offset);
    e.IntTuple(t.shape);
    e.IntTuple(t.strides);
    e.Op('\x89');  // requires_grad = False
    e.Global("collections", "OrderedDict");
    e.Op(')');
    e.Op('R');  // backward_hooks = OrderedDict()
    e.Op('t');
    e.Op('R');
    if (i % kBatch == kBatch - 1 || i + 1 == tensors.size()) e.Op('u');  // SETITEMS
  }
  e.Op('.');
  return std::move(e.out());
}

}  // namespace tpserve::checkpoint
