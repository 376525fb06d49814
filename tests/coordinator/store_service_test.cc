// KeyValueStore (the rendezvous store behind WorkerControl.StoreGet/StoreSet): a pending get holds no thread
// and ends exactly once, by the Set that completes it, its deadline, or Shutdown.
#include "coordinator/store_service.h"

#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace tpserve::coordinator {
namespace {

// Records the one completion a Get must get. Declare it before the store, whose destructor ends pending Gets.
struct Result {
  absl::Mutex mu;
  int calls = 0;
  absl::StatusOr<std::vector<std::string>> values = absl::UnknownError("not completed");
  KeyValueStore::GetCallback Callback() {
    return [this](absl::StatusOr<std::vector<std::string>> v) {
      absl::MutexLock lock(&mu);
      ++calls;
      values = std::move(v);
    };
  }
  bool Wait(absl::Duration timeout) {
    absl::MutexLock lock(&mu);
    auto done = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) { return calls > 0; };
    return mu.AwaitWithTimeout(absl::Condition(&done), timeout);
  }
  int num_calls() {
    absl::MutexLock lock(&mu);
    return calls;
  }
};

TEST(KeyValueStoreTest, GetOfPresentKeysCompletesAtOnceInKeyOrder) {
  Result r;
  KeyValueStore store;
  store.Set("b", "2");
  store.Set("a", "1");
  store.Get({"a", "b"}, absl::Seconds(30), r.Callback());
  ASSERT_EQ(r.num_calls(), 1);  // on the caller's thread, before Get returned
  ASSERT_TRUE(r.values.ok()) << r.values.status();
  EXPECT_EQ(*r.values, (std::vector<std::string>{"1", "2"}));
  EXPECT_EQ(store.num_pending(), 0);
}

TEST(KeyValueStoreTest, TheSetThatSuppliesTheLastKeyCompletesThePendingGet) {
  Result r;
  KeyValueStore store;
  store.Get({"rank0", "rank1"}, absl::Seconds(30), r.Callback());
  EXPECT_EQ(store.num_pending(), 1);
  store.Set("rank1", "addr1");
  EXPECT_EQ(r.num_calls(), 0);  // one key still missing
  store.Set("rank0", "addr0");
  ASSERT_EQ(r.num_calls(), 1);  // on Set's thread
  ASSERT_TRUE(r.values.ok()) << r.values.status();
  EXPECT_EQ(*r.values, (std::vector<std::string>{"addr0", "addr1"}));
  EXPECT_EQ(store.num_pending(), 0);
  store.Set("rank0", "again");
  EXPECT_EQ(r.num_calls(), 1);
}

TEST(KeyValueStoreTest, DeadlineEndsTheGetNamingTheMissingKeys) {
  Result late, early;  // before the store: its destructor completes `late`
  KeyValueStore store;
  store.Set("present", "x");
  store.Get({"present", "missing"}, absl::Seconds(30), late.Callback());
  store.Get({"present", "absent"}, absl::Milliseconds(20), early.Callback());  // re-plans the timer
  ASSERT_TRUE(early.Wait(absl::Seconds(20))) << "the timer never ended the get";
  EXPECT_EQ(early.values.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_NE(early.values.status().message().find("absent"), std::string::npos) << early.values.status();
  EXPECT_EQ(early.values.status().message().find("present"), std::string::npos) << early.values.status();
  EXPECT_EQ(late.num_calls(), 0);
  EXPECT_EQ(store.num_pending(), 1);
}

TEST(KeyValueStoreTest, ShutdownAnswersEveryPendingGetUnavailableAndLaterGetsAtOnce) {
  Result pending, after;
  KeyValueStore store;
  store.Get({"never"}, absl::Hours(1), pending.Callback());
  store.Shutdown();
  ASSERT_EQ(pending.num_calls(), 1);
  EXPECT_EQ(pending.values.status().code(), absl::StatusCode::kUnavailable);
  store.Get({"never"}, absl::Hours(1), after.Callback());
  ASSERT_EQ(after.num_calls(), 1);
  EXPECT_EQ(after.values.status().code(), absl::StatusCode::kUnavailable);
  store.Shutdown();  // idempotent
  EXPECT_EQ(pending.num_calls(), 1);
}

}  // namespace
}  // namespace tpserve::coordinator
