// tpserve: the single binary. `tpserve <command> [flags]`; `tpserve <command> --help` lists that command's
// flags with their defaults.
#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/reflection.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include <algorithm>
#include "cli/commands.h"

namespace {

struct Command {
  const char* name;
  const char* flag_files;  // comma-separated file stems whose flags belong to this command
  const char* summary;
  int (*run)();
  const char* extra_flags = "";  // comma-separated flags defined in another command's file that this one uses too
};

const Command kCommands[] = {
    {"serve", "server_flags,serve_command,device_flags,auth_flags,cluster_flags", "start the coordinator and --tp local workers; serve the public API",
     tpserve::cli::ServeCommand},
    {"coordinator", "server_flags,auth_flags,cluster_flags", "start only the coordinator; workers register with `tpserve worker`",
     tpserve::cli::CoordinatorCommand},
    {"worker", "worker_command,device_flags,cluster_flags", "start one tensor-parallel worker that registers with a coordinator",
     tpserve::cli::WorkerCommand},
    {"generate", "client_commands,output_flags,auth_flags", "send one generation request to a server and print the result",
     tpserve::cli::GenerateCommand},
    {"tokenize", "tokenize_command,output_flags", "print the token ids of a text (no server needed)", tpserve::cli::TokenizeCommand,
     "model"},
    {"make-model", "make_model_command,output_flags", "write a random-weight Llama checkpoint and tokenizer",
     tpserve::cli::MakeModelCommand},
};

// True when `flag` is defined in one of the command's flag files.
bool Owns(const Command& c, const absl::CommandLineFlag& flag) {
  for (absl::string_view stem : absl::StrSplit(c.flag_files, ',')) {
    if (absl::EndsWith(flag.Filename(), absl::StrCat("cli/", stem, ".cc"))) return true;
  }
  for (absl::string_view name : absl::StrSplit(c.extra_flags, ',', absl::SkipEmpty())) {
    if (name == flag.Name()) return true;
  }
  return false;
}

// A flag belongs to the command that uses it: every --name[=value] in `args` (names already with underscores),
// and in the files --flagfile names, must be one of the command's flags or one of Abseil's own (--flagfile,
// --fromenv, ...). Returns the first one that is not, or "". A flag absl does not know, or a flag file it
// cannot read, is left to ParseCommandLine, which names it.
std::string ForeignFlag(const Command& c, const std::vector<std::string>& args, int depth = 0) {
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--") break;
    if (a.size() < 3 || a[0] != '-' || a[1] != '-') continue;
    const size_t eq = a.find('=');
    std::string name = a.substr(2, eq == std::string::npos ? std::string::npos : eq - 2);
    if (name == "flagfile" && depth < 4) {
      std::string files = eq != std::string::npos ? a.substr(eq + 1) : (i + 1 < args.size() ? args[++i] : "");
      for (absl::string_view file : absl::StrSplit(files, ',', absl::SkipEmpty())) {
        std::ifstream in{std::string(file)};
        std::vector<std::string> lines;
        for (std::string line; std::getline(in, line);) {
          line = std::string(absl::StripAsciiWhitespace(line));
          if (absl::StartsWith(line, "--")) {
            const size_t e = line.find('=');
            std::replace(line.begin() + 2, e == std::string::npos ? line.end() : line.begin() + e, '-', '_');
            lines.push_back(line);
          }
        }
        if (std::string f = ForeignFlag(c, lines, depth + 1); !f.empty()) return f;
      }
      continue;
    }
    absl::CommandLineFlag* flag = absl::FindCommandLineFlag(name);
    if (flag == nullptr && absl::StartsWith(name, "no")) {
      flag = absl::FindCommandLineFlag(name.substr(2));  // --noflag for a bool
      if (flag != nullptr && !flag->IsOfType<bool>()) flag = nullptr;
    }
    if (flag == nullptr) continue;
    if (!absl::StrContains(flag->Filename(), "cli/")) continue;  // Abseil's own flags
    if (!Owns(c, *flag)) return name;
    // `--name value` for a non-bool flag: the next argument is its value, not a flag.
    if (eq == std::string::npos && !flag->IsOfType<bool>()) ++i;
  }
  return "";
}

void PrintTopUsage() {
  std::printf("tpserve: tensor-parallel serving for Llama-2-family chat models\n\nusage: tpserve <command> [flags]\n\n");
  for (const auto& c : kCommands) std::printf("  %-12s %s\n", c.name, c.summary);
  std::printf("\n`tpserve <command> --help` lists a command's flags with their defaults.\n");
}

void PrintCommandHelp(const Command& c) {
  std::printf("usage: tpserve %s [flags]\n%s\n\nflags:\n", c.name, c.summary);
  auto flags = absl::GetAllFlags();
  std::vector<std::pair<std::string, absl::CommandLineFlag*>> sorted(flags.begin(), flags.end());
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (const auto& [name, flag] : sorted) {
    if (!Owns(c, *flag)) continue;
    std::string dashed = name;
    std::replace(dashed.begin(), dashed.end(), '_', '-');
    std::printf("  --%s (default: %s)\n      %s\n", dashed.c_str(),
                flag->DefaultValue().empty() ? "\"\"" : flag->DefaultValue().c_str(), flag->Help().c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || std::strcmp(argv[1], "--help") == 0 || std::strcmp(argv[1], "-h") == 0 ||
      std::strcmp(argv[1], "help") == 0) {
    PrintTopUsage();
    return argc < 2 ? 2 : 0;
  }
  const Command* cmd = nullptr;
  for (const auto& c : kCommands) {
    if (std::strcmp(argv[1], c.name) == 0) cmd = &c;
  }
  if (cmd == nullptr) {
    std::fprintf(stderr, "tpserve: unknown command '%s'\n\n", argv[1]);
    PrintTopUsage();
    return 2;
  }
  // Flags are spelled with dashes (--max-new-tokens); absl names them with underscores. Normalise the
  // name part of every --flag[=value] so both spellings work.
  std::vector<std::string> storage;
  storage.reserve(argc);
  for (int i = 2; i < argc; ++i) {
    if (std::strcmp(argv[i], "--help") == 0 || std::strcmp(argv[i], "-h") == 0) {
      PrintCommandHelp(*cmd);
      return 0;
    }
    std::string a = argv[i];
    if (a.size() > 2 && a[0] == '-' && a[1] == '-') {
      size_t eq = a.find('=');
      std::replace(a.begin() + 2, eq == std::string::npos ? a.end() : a.begin() + eq, '-', '_');
    }
    storage.push_back(std::move(a));
  }
  if (std::string foreign = ForeignFlag(*cmd, storage); !foreign.empty()) {
    std::replace(foreign.begin(), foreign.end(), '_', '-');
    std::fprintf(stderr, "tpserve %s: --%s is not a flag of `tpserve %s` (`tpserve %s --help` lists its flags)\n",
                 cmd->name, foreign.c_str(), cmd->name, cmd->name);
    return 2;
  }
  std::vector<char*> args;
  args.push_back(argv[0]);
  for (auto& a : storage) args.push_back(a.data());
  absl::SetProgramUsageMessage(std::string("tpserve ") + cmd->name + " [flags]");
  std::vector<char*> positional = absl::ParseCommandLine(static_cast<int>(args.size()), args.data());
  if (positional.size() > 1) {
    std::fprintf(stderr, "tpserve %s: unexpected argument '%s' (flags look like --name=value)\n", cmd->name,
                 positional[1]);
    return 2;
  }
  return cmd->run();
}
