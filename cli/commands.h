// Subcommands of the tpserve binary. Each returns the process exit code; flags are parsed before the call.
#pragma once

#include <string>

namespace tpserve::cli {

int ServeCommand();        // coordinator + N local worker processes, supervised
int CoordinatorCommand();  // coordinator only; workers register from elsewhere (Kubernetes)
int WorkerCommand();
int GenerateCommand();
int TokenizeCommand();
int MakeModelCommand();

// The path of the running executable (/proc/self/exe).
std::string SelfExe();
// <dir of the executable>/../models/tiny-random: where the default generated model lives.
std::string DefaultModelDir();
// Generates the default random-weight model at `dir` when it is not there yet. Returns 0 on success.
int EnsureDefaultModel(const std::string& dir);

}  // namespace tpserve::cli
