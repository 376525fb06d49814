// Flags mean what they say (issue 15): each `tpserve` command refuses another command's flags with a message
// naming itself, `--log-prompts` logs prompts and its absence never does, and GetModelInfo.device is what the
// registered workers run on.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "grpcpp/client_context.h"
#include "gtest/gtest.h"
#include "tests/util/server_process.h"
#include "tests/util/test_env.h"

namespace tpserve::testing {
namespace {

namespace v1 = tpserve::v1;

struct CliRun {
  int code = -1;
  std::string out;  // stdout + stderr
};

CliRun Tpserve(const std::string& args) {
  CliRun r;
  FILE* p = popen(("timeout 60 " + BinDir() + "/tpserve " + args + " 2>&1").c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

TEST(CliFlagsTest, CommandsRefuseFlagsTheyDoNotOwn) {
  struct Row {
    std::string args;
    std::string flag;
    std::string command;
  };
  const Row rows[] = {
      {"coordinator --model=/nonexistent --device=cuda", "--device", "coordinator"},
      {"coordinator --threads 4 --model=/nonexistent", "--threads", "coordinator"},
      {"coordinator --cpu-isa=avx2", "--cpu-isa", "coordinator"},
      {"worker --coordinator=127.0.0.1:1 --max-num-seqs=4", "--max-num-seqs", "worker"},
      {"generate --prompt hi --tp=2", "--tp", "generate"},
      {"tokenize --text hi --restart_workers=false", "--restart-workers", "tokenize"},
      {"make-model --out /nonexistent --noignore_eos", "--noignore-eos", "make-model"},
  };
  for (const Row& row : rows) {
    CliRun r = Tpserve(row.args);
    EXPECT_EQ(r.code, 2) << row.args << "\n" << r.out;
    EXPECT_NE(r.out.find(absl::StrCat("tpserve ", row.command, ": ", row.flag, " is not a flag of `tpserve ",
                                      row.command, "`")),
              std::string::npos)
        << row.args << "\n" << r.out;
  }
}

// Flag files (what the deploy manifests use) are checked too, and every shipped one passes for its role.
TEST(CliFlagsTest, FlagFilesAreCheckedToo) {
  ScopedTempDir dir("cli-flags");
  const std::string file = dir.path + "/coordinator.flags";
  std::ofstream(file) << "# a comment\n--tp=2\n--device=cuda\n";
  CliRun r = Tpserve("coordinator --flagfile=" + file);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--device is not a flag of `tpserve coordinator`"), std::string::npos) << r.out;
  // Each fails at once for another reason (no model, no coordinator), never binding the files' fixed ports.
  const std::string no_model =
      " --model=/nonexistent --host=127.0.0.1 --port=0 --worker_host=127.0.0.1 --worker_port=0 --metrics_port=-1 "
      "--http_port=-1";
  for (const std::string role : {"serve", "coordinator", "worker"}) {
    const std::string flags = SourceDir() + "/deploy/k8s/base/flags/" + role + ".flags";
    CliRun ok = Tpserve(absl::StrCat(role, " --flagfile=", flags,
                                     role == "worker" ? " --coordinator=127.0.0.1:1 --connect_timeout=1" : no_model));
    EXPECT_EQ(ok.out.find("is not a flag of"), std::string::npos) << role << ": " << ok.out;
    EXPECT_NE(ok.code, 0) << role << ": " << ok.out;
  }
}

TEST(CliFlagsTest, CoordinatorHelpListsOnlyItsFlags) {
  CliRun r = Tpserve("coordinator --help");
  ASSERT_EQ(r.code, 0) << r.out;
  for (const char* absent : {"--device ", "--threads ", "--cpu-isa ", "--restart-workers "}) {
    EXPECT_EQ(r.out.find(absent), std::string::npos) << absent << " listed:\n" << r.out;
  }
  for (const char* present : {"--model ", "--cluster-ca ", "--log-prompts ", "--tp "}) {
    EXPECT_NE(r.out.find(present), std::string::npos) << present << " missing:\n" << r.out;
  }
  // A flag used by two commands is listed for both.
  CliRun t = Tpserve("tokenize --help");
  EXPECT_NE(t.out.find("--model "), std::string::npos) << t.out;
}

TEST(CliFlagsTest, OwnFlagsStillWorkInEverySpelling) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  // Dashes or underscores, =value or a separate value, and a shared flag (--model) on tokenize.
  for (const std::string args : {"tokenize --model " + model_dir + " --text 'Once upon' --json",
                                 "tokenize --model=" + model_dir + " --text='Once upon' --no-bos=false --json"}) {
    CliRun r = Tpserve(args);
    EXPECT_EQ(r.code, 0) << args << "\n" << r.out;
    EXPECT_NE(r.out.find("ids"), std::string::npos) << r.out;
  }
}

std::string GenerateAndReadLog(const std::string& model_dir, bool log_prompts) {
  std::vector<std::string> flags;
  if (log_prompts) flags.push_back("--log_prompts");
  ServerProcess server({model_dir, 1, flags});
  EXPECT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  grpc::ClientContext ctx;
  v1::GenerateRequest req;
  req.set_prompt("The purple giraffe sang");
  req.mutable_sampling()->set_temperature(0);
  req.mutable_stopping()->set_max_new_tokens(2);
  v1::GenerateResponse resp;
  EXPECT_TRUE(stub->Generate(&ctx, req, &resp).ok());
  EXPECT_EQ(server.Stop(), 0);
  return server.ReadLog();
}

TEST(CliFlagsTest, LogPromptsLogsPromptsOnlyWhenSet) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  std::string with = GenerateAndReadLog(model_dir, true);
  EXPECT_NE(with.find("request_prompt"), std::string::npos) << with;
  EXPECT_NE(with.find("purple giraffe sang"), std::string::npos) << with;
  std::string without = GenerateAndReadLog(model_dir, false);
  EXPECT_EQ(without.find("request_prompt"), std::string::npos) << without;
  EXPECT_EQ(without.find("purple giraffe"), std::string::npos) << without;
}

TEST(CliFlagsTest, ModelInfoDeviceComesFromTheWorkers) {
  TP_REQUIRE_SHARED(model_dir, "models/stories260K");
  ServerProcess server({model_dir, 2, {}});
  ASSERT_TRUE(server.Start().ok()) << server.ReadLog();
  auto stub = server.NewStub();
  grpc::ClientContext ctx;
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &info).ok());
  // Both workers registered with --device=cpu (serve's default): one kind, reported once.
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(server.Stop(), 0);
}

}  // namespace
}  // namespace tpserve::testing
