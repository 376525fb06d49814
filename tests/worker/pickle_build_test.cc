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
}

TEST(PickleBuildTest, BuildOnANonDictIsRefused) {
  std::string p = std::string("\x80\x02", 2) + "K\x05" + "}" + "b.";  // BININT1 5; EMPTY_DICT; BUILD
  auto r = Unpickle(p, "bad.pkl");
  ASSERT_FALSE(r.ok());
  EXPECT_NE(std::string(r.status().message()).find("BUILD"), std::string::npos) << r.status();
}

}  // namespace
}  // namespace tpserve::checkpoint
