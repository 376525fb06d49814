// The restricted pickle reader accepts the attribute state torch.save writes for
// `torch.save(model.state_dict())` (BUILD {'_metadata': OrderedDict()} on the top-level OrderedDict) and still
// refuses BUILD on anything that is not a dict. Bytes written by hand after CPython's pickle protocol 2.
#include <string>

#include "gtest/gtest.h"
#include "worker/checkpoint/pickle_reader.h"

namespace tpserve::checkpoint {
namespace {

// PROTO 2; GLOBAL collections OrderedDict; EMPTY_TUPLE; REDUCE -> OrderedDict()
const std::string kOrderedDict = std::string("\x80\x02", 2) + "ccollections\nOrderedDict\n)R";

TEST(PickleBuildTest, StateDictMetadataIsAcceptedAndIgnored) {
  // OrderedDict(); then {'_metadata': OrderedDict()} as BUILD state; STOP.
  std::string p = kOrderedDict;
  p += "}";                                            // EMPTY_DICT (the state)
  p += std::string("X\x09\x00\x00\x00", 5) + "_metadata";  // BINUNICODE "_metadata"
  p += "ccollections\nOrderedDict\n)R";                // OrderedDict()
  p += "s";                                            // SETITEM
  p += "b.";                                           // BUILD, STOP
  auto r = Unpickle(p, "state.pkl");
  ASSERT_TRUE(r.ok()) << r.status();
  // Ignored means: the result is the OrderedDict itself, still empty; the BUILD state neither becomes an entry
  // ('_metadata' is no tensor name) nor replaces the dict.
  const PickleValue* root = (*r)->root;
  ASSERT_NE(root, nullptr);
  EXPECT_EQ(root->kind, PickleValue::Kind::kDict);
  EXPECT_TRUE(root->entries.empty());
}

TEST(PickleBuildTest, BuildStateLeavesTheDictsOwnEntriesAsTheyWere) {
  // OrderedDict(); SETITEM 'w' -> 7; then BUILD {'_metadata': OrderedDict()}; STOP.
  std::string p = kOrderedDict;
  p += std::string("X\x01\x00\x00\x00", 5) + "w" + "K\x07" + "s";  // BINUNICODE "w"; BININT1 7; SETITEM
  p += "}";
  p += std::string("X\x09\x00\x00\x00", 5) + "_metadata";
  p += "ccollections\nOrderedDict\n)R";
  p += "s";
  p += "b.";
  auto r = Unpickle(p, "state.pkl");
  ASSERT_TRUE(r.ok()) << r.status();
  const PickleValue* root = (*r)->root;
  ASSERT_EQ(root->kind, PickleValue::Kind::kDict);
  ASSERT_EQ(root->entries.size(), 1u);
  EXPECT_EQ(root->entries[0].first->str, "w");
  EXPECT_EQ(root->entries[0].second->integer, 7);
}

TEST(PickleBuildTest, BuildOnANonDictIsRefused) {
  std::string p = std::string("\x80\x02", 2) + "K\x05" + "}" + "b.";  // BININT1 5; EMPTY_DICT; BUILD
  auto r = Unpickle(p, "bad.pkl");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("BUILD"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace tpserve::checkpoint
