// The restricted pickle machine: a stack, a mark stack and a memo of arena-owned values.
#include "worker/checkpoint/pickle_reader.h"

#include <cstring>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace tpserve::checkpoint {
namespace {

// A 13B state dict needs ~10k values; these bounds only stop hostile input from eating memory.
constexpr size_t kMaxStack = 1 << 20;
constexpr size_t kMaxMemo = 1 << 22;
constexpr size_t kMaxValues = 1 << 22;
constexpr size_t kMaxTensorRank = 16;

using Kind = PickleValue::Kind;
using Global = PickleValue::Global;

class Machine {
 public:
  Machine(absl::string_view bytes, const std::string& file) : in_(bytes), file_(file) {}

  absl::StatusOr<std::unique_ptr<UnpickledObject>> Run();

 private:
  absl::Status Bad(absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("pickle in ", file_, ": ", what, " (at byte ", op_pos_, ")"));
  }
  absl::Status Need(size_t n) const {
    if (in_.size() - pos_ < n) return Bad("truncated");
    return absl::OkStatus();
  }
  uint64_t Le(size_t n) {
    uint64_t v = 0;
    for (size_t i = n; i-- > 0;) v = (v << 8) | static_cast<uint8_t>(in_[pos_ + i]);
    pos_ += n;
    return v;
  }
  absl::StatusOr<PickleValue*> New(Kind kind) {
    if (obj_->arena.size() >= kMaxValues) return Bad("too many values");
    obj_->arena.push_back(std::make_unique<PickleValue>());
    obj_->arena.back()->kind = kind;
    return obj_->arena.back().get();
  }
  absl::Status Push(PickleValue* v) {
    if (stack_.size() >= kMaxStack) return Bad("stack too deep");
    stack_.push_back(v);
    return absl::OkStatus();
  }
  absl::StatusOr<PickleValue*> Pop() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) return Bad("stack underflow");
    PickleValue* v = stack_.back();
    stack_.pop_back();
    return v;
  }
  absl::StatusOr<PickleValue*> Top() {
    if (stack_.empty() || (!marks_.empty() && stack_.size() <= marks_.back())) return Bad("stack underflow");
    return stack_.back();
  }
  // Pops everything above the last MARK, and the mark.
  absl::StatusOr<std::vector<PickleValue*>> PopMark() {
    if (marks_.empty()) return Bad("MARK expected");
    size_t m = marks_.back();
    marks_.pop_back();
    std::vector<PickleValue*> items(stack_.begin() + m, stack_.end());
    stack_.resize(m);
    return items;
  }
  absl::Status PushString(size_t len_bytes) {
    TP_RETURN_IF_ERROR(Need(len_bytes));
    uint64_t n = Le(len_bytes);
    TP_RETURN_IF_ERROR(Need(n));
    auto v = New(Kind::kString);
    if (!v.ok()) return v.status();
    (*v)->str.assign(in_.data() + pos_, n);
    pos_ += n;
    return Push(*v);
  }
  absl::Status PushInt(int64_t i) {
    auto v = New(Kind::kInt);
    if (!v.ok()) return v.status();
    (*v)->integer = i;
    return Push(*v);
  }
  absl::Status Memo(uint64_t idx) {
    auto top = Top();
    if (!top.ok()) return top.status();
    if (memo_.size() >= kMaxMemo && memo_.find(idx) == memo_.end()) return Bad("memo too large");
    memo_[idx] = *top;
    return absl::OkStatus();
  }
  absl::Status Get(uint64_t idx) {
    auto it = memo_.find(idx);
    if (it == memo_.end()) return Bad(absl::StrCat("memo key ", idx, " was never stored"));
    return Push(it->second);
  }
  absl::Status MakeGlobal(const std::string& module, const std::string& name);
  absl::Status PersistentLoad();
  absl::Status Reduce();
  absl::Status Step(uint8_t op, bool* stop);


  absl::string_view in_;
  const std::string& file_;
  size_t pos_ = 0;
  size_t op_pos_ = 0;
  std::unique_ptr<UnpickledObject> obj_ = std::make_unique<UnpickledObject>();
  std::vector<PickleValue*> stack_;
  std::vector<size_t> marks_;
  std::unordered_map<uint64_t, PickleValue*> memo_;
};

absl::Status Machine::MakeGlobal(const std::string& module, const std::string& name) {
  Global g = Global::kNone;
  if (module == "collections" && name == "OrderedDict") g = Global::kOrderedDict;
  if (module == "torch._utils" && name == "_rebuild_tensor_v2") g = Global::kRebuildTensorV2;
  if (module == "torch" && name == "FloatStorage") g = Global::kFloatStorage;
  if (module == "torch" && name == "BFloat16Storage") g = Global::kBFloat16Storage;
  if (module == "torch" && name == "HalfStorage") g = Global::kHalfStorage;
  if (g == Global::kNone) {
    std::string shown = absl::StrCat(module, " ", name);
    if (shown.size() > 200) shown = shown.substr(0, 200) + "...";
    return absl::InvalidArgumentError(absl::StrCat(
        "pickle in ", file_, " references forbidden global '", shown,
        "'; only collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch Float/BFloat16/Half "
        "storages are allowed (nothing is executed)"));
  }
  auto v = New(Kind::kGlobal);
  if (!v.ok()) return v.status();
  (*v)->global = g;
  return Push(*v);
}

// ('storage', StorageType, key, location, numel) -> kStorage.
absl::Status Machine::PersistentLoad() {
  auto pid = Pop();
  if (!pid.ok()) return pid.status();
  const PickleValue* t = *pid;
  if (t->kind != Kind::kTuple || t->items.size() != 5 || t->items[0]->kind != Kind::kString ||
      t->items[0]->str != "storage" || t->items[1]->kind != Kind::kGlobal || t->items[2]->kind != Kind::kString ||
      t->items[4]->kind != Kind::kInt || t->items[4]->integer < 0) {
    return Bad("persistent id is not ('storage', StorageType, key, location, numel)");
  }
  auto v = New(Kind::kStorage);
  if (!v.ok()) return v.status();
  switch (t->items[1]->global) {
    case Global::kFloatStorage: (*v)->dtype = DType::kF32; break;
    case Global::kBFloat16Storage: (*v)->dtype = DType::kBF16; break;
    case Global::kHalfStorage: (*v)->dtype = DType::kF16; break;
    default: return Bad("persistent id names a callable that is not a storage type");
  }
  (*v)->str = t->items[2]->str;
  (*v)->integer = t->items[4]->integer;
  return Push(*v);
}

absl::Status Machine::Reduce() {
  auto args_or = Pop();
  if (!args_or.ok()) return args_or.status();
  auto fn_or = Pop();
  if (!fn_or.ok()) return fn_or.status();
  const PickleValue* args = *args_or;
  const PickleValue* fn = *fn_or;
  if (fn->kind != Kind::kGlobal || args->kind != Kind::kTuple) return Bad("REDUCE needs a global and a tuple");
  if (fn->global == Global::kOrderedDict) {
    if (!args->items.empty()) return Bad("OrderedDict() called with arguments");
    auto v = New(Kind::kDict);
    if (!v.ok()) return v.status();
    return Push(*v);
  }
  if (fn->global != Global::kRebuildTensorV2) return Bad("REDUCE of a storage type");
  // _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata])
  const auto& a = args->items;
  if (a.size() < 6 || a.size() > 7 || a[0]->kind != Kind::kStorage || a[1]->kind != Kind::kInt ||
      a[2]->kind != Kind::kTuple || a[3]->kind != Kind::kTuple || a[4]->kind != Kind::kBool) {
    return Bad("_rebuild_tensor_v2 arguments are not (storage, offset, size, stride, requires_grad, hooks)");
  }
  if (a[2]->items.size() != a[3]->items.size() || a[2]->items.size() > kMaxTensorRank) {
    return Bad("_rebuild_tensor_v2 size and stride differ in rank (or rank > 16)");
  }
  auto v = New(Kind::kTensor);
  if (!v.ok()) return v.status();
  (*v)->storage = a[0];
  (*v)->dtype = a[0]->dtype;
  (*v)->storage_offset = a[1]->integer;
  for (size_t i = 0; i < a[2]->items.size(); ++i) {
    const PickleValue* s = a[2]->items[i];
    const PickleValue* st = a[3]->items[i];
    if (s->kind != Kind::kInt || st->kind != Kind::kInt) return Bad("tensor size/stride entries must be ints");
    (*v)->shape.push_back(s->integer);
    (*v)->strides.push_back(st->integer);
  }
  return Push(*v);
}

absl::Status Machine::Step(uint8_t op, bool* stop) {
  switch (op) {
    case 0x80:  // PROTO
      TP_RETURN_IF_ERROR(Need(1));
      if (Le(1) > 5) return Bad("unsupported pickle protocol");
      return absl::OkStatus();
    case 0x95:  // FRAME: framing is only a read-ahead hint
      TP_RETURN_IF_ERROR(Need(8));
      Le(8);
      return absl::OkStatus();
    case '.':  // STOP
      *stop = true;
      return absl::OkStatus();
    case '(':  // MARK
      if (marks_.size() >= kMaxStack) return Bad("too many marks");
      marks_.push_back(stack_.size());
      return absl::OkStatus();
    case '}':  // EMPTY_DICT
    case ']':  // EMPTY_LIST
    case ')': {  // EMPTY_TUPLE
      auto v = New(op == '}' ? Kind::kDict : op == ']' ? Kind::kList : Kind::kTuple);
      if (!v.ok()) return v.status();
      return Push(*v);
    }
    case 't': {  // TUPLE
      auto items = PopMark();
      if (!items.ok()) return items.status();
      auto v = New(Kind::kTuple);
      if (!v.ok()) return v.status();
      (*v)->items = std::move(*items);
      return Push(*v);
    }
    case 0x85:
    case 0x86:
    case 0x87: {  // TUPLE1..3
      size_t n = op - 0x84;
      auto v = New(Kind::kTuple);
      if (!v.ok()) return v.status();
      (*v)->items.resize(n);
      for (size_t i = n; i-- > 0;) {
        auto x = Pop();
        if (!x.ok()) return x.status();
        (*v)->items[i] = *x;
      }
      return Push(*v);
    }
    case '0': {  // POP
      auto x = Pop();
      return x.status();
    }
    case '1':  // POP_MARK
      return PopMark().status();
    case 'q':  // BINPUT
      TP_RETURN_IF_ERROR(Need(1));
      return Memo(Le(1));
    case 'r':  // LONG_BINPUT
      TP_RETURN_IF_ERROR(Need(4));
      return Memo(Le(4));
    case 0x94:  // MEMOIZE
      return Memo(memo_.size());
    case 'h':  // BINGET
      TP_RETURN_IF_ERROR(Need(1));
      return Get(Le(1));
    case 'j':  // LONG_BINGET
      TP_RETURN_IF_ERROR(Need(4));
      return Get(Le(4));
    case 'J':  // BININT (signed)
      TP_RETURN_IF_ERROR(Need(4));
      return PushInt(static_cast<int32_t>(static_cast<uint32_t>(Le(4))));
    case 'K':  // BININT1
      TP_RETURN_IF_ERROR(Need(1));
      return PushInt(static_cast<int64_t>(Le(1)));
    case 'M':  // BININT2
      TP_RETURN_IF_ERROR(Need(2));
      return PushInt(static_cast<int64_t>(Le(2)));
    case 0x8a: {  // LONG1: n-byte little-endian two's complement
      TP_RETURN_IF_ERROR(Need(1));
      size_t n = Le(1);
      if (n > 8) return Bad("LONG1 wider than 64 bits");
      TP_RETURN_IF_ERROR(Need(n));
      uint64_t u = Le(n);
      if (n > 0 && n < 8 && (u >> (8 * n - 1)) & 1u) u |= ~0ull << (8 * n);  // sign-extend
      return PushInt(static_cast<int64_t>(u));
    }
    case 'X':  // BINUNICODE
    case 'T':  // BINSTRING
      return PushString(4);
    case 0x8c:  // SHORT_BINUNICODE
    case 'U':   // SHORT_BINSTRING
      return PushString(1);
    case 0x8d:  // BINUNICODE8
      return PushString(8);
    case 0x88:
    case 0x89: {  // NEWTRUE / NEWFALSE
      auto v = New(Kind::kBool);
      if (!v.ok()) return v.status();
      (*v)->boolean = op == 0x88;
      return Push(*v);
    }
    case 'N': {  // NONE
      auto v = New(Kind::kNone);
      if (!v.ok()) return v.status();
      return Push(*v);
    }
    case 'c': {  // GLOBAL "module\nname\n"
      std::string parts[2];
      for (auto& p : parts) {
        size_t nl = in_.find('\n', pos_);
        if (nl == absl::string_view::npos) return Bad("truncated GLOBAL");
        p.assign(in_.data() + pos_, nl - pos_);
        pos_ = nl + 1;
      }
      return MakeGlobal(parts[0], parts[1]);
    }
    case 0x93: {  // STACK_GLOBAL
      auto name = Pop();
      if (!name.ok()) return name.status();
      auto module = Pop();
      if (!module.ok()) return module.status();
      if ((*name)->kind != Kind::kString || (*module)->kind != Kind::kString) return Bad("STACK_GLOBAL needs strings");
      return MakeGlobal((*module)->str, (*name)->str);
    }
    case 'Q':  // BINPERSID
      return PersistentLoad();
    case 'R':  // REDUCE
      return Reduce();
    case 's': {  // SETITEM
      auto value = Pop();
      if (!value.ok()) return value.status();
      auto key = Pop();
      if (!key.ok()) return key.status();
      auto dict = Top();
      if (!dict.ok()) return dict.status();
      if ((*dict)->kind != Kind::kDict) return Bad("SETITEM on a non-dict");
      (*dict)->entries.emplace_back(*key, *value);
      return absl::OkStatus();
    }
    case 'u': {  // SETITEMS
      auto items = PopMark();
      if (!items.ok()) return items.status();
      auto dict = Top();
      if (!dict.ok()) return dict.status();
      if ((*dict)->kind != Kind::kDict || items->size() % 2 != 0) return Bad("SETITEMS on a non-dict or odd items");
      for (size_t i = 0; i < items->size(); i += 2) (*dict)->entries.emplace_back((*items)[i], (*items)[i + 1]);
      return absl::OkStatus();
    }
    case 'a': {  // APPEND
      auto value = Pop();
      if (!value.ok()) return value.status();
      auto list = Top();
      if (!list.ok()) return list.status();
      if ((*list)->kind != Kind::kList) return Bad("APPEND on a non-list");
      (*list)->items.push_back(*value);
      return absl::OkStatus();
    }
    case 'e': {  // APPENDS
      auto items = PopMark();
      if (!items.ok()) return items.status();
      auto list = Top();
      if (!list.ok()) return list.status();
      if ((*list)->kind != Kind::kList) return Bad("APPENDS on a non-list");
      (*list)->items.insert((*list)->items.end(), items->begin(), items->end());
      return absl::OkStatus();
    }
    case 'b': {  // BUILD on a dict: attribute state an OrderedDict may carry, e.g. a state_dict's `_metadata`
      // (torch.save(model.state_dict()) pickles it as BUILD {'_metadata': OrderedDict(...)}). The state is plain
      // data, already parsed by the restricted reader; it is dropped, nothing is executed.
      auto state = Pop();
      if (!state.ok()) return state.status();
      auto obj = Top();
      if (!obj.ok()) return obj.status();
      const PickleValue* s = *state;
      bool data_state = s->kind == Kind::kNone || s->kind == Kind::kDict || s->kind == Kind::kTuple;
      if ((*obj)->kind != Kind::kDict || !data_state) {
        return Bad("BUILD is only allowed on a dict, with a dict/tuple/None state");
      }
      return absl::OkStatus();
    }
    default:
      return Bad(absl::StrFormat("unsupported opcode 0x%02x (tpserve reads only torch.save state dicts)", op));
  }
}

absl::StatusOr<std::unique_ptr<UnpickledObject>> Machine::Run() {
  bool stop = false;
  while (!stop) {
    op_pos_ = pos_;
    if (pos_ >= in_.size()) return Bad("truncated: no STOP opcode");
    uint8_t op = static_cast<uint8_t>(in_[pos_++]);
    TP_RETURN_IF_ERROR(Step(op, &stop));
  }
  if (stack_.size() != 1 || !marks_.empty()) return Bad("STOP with an unbalanced stack");
  obj_->root = stack_.back();
  return std::move(obj_);
}

}  // namespace

absl::StatusOr<std::unique_ptr<UnpickledObject>> Unpickle(absl::string_view bytes, const std::string& file) {
  Machine m(bytes, file);
  return m.Run();
}

}  // namespace tpserve::checkpoint
