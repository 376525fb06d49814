// Declarations of flags defined once and used by several commands.
#pragma once

#include <cstdint>
#include <string>

#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(std::string, device);
ABSL_DECLARE_FLAG(int, threads);
ABSL_DECLARE_FLAG(std::string, cpu_isa);
ABSL_DECLARE_FLAG(bool, json);
ABSL_DECLARE_FLAG(int64_t, seed);
ABSL_DECLARE_FLAG(std::string, model);
ABSL_DECLARE_FLAG(std::string, api_key_file);
ABSL_DECLARE_FLAG(std::string, cluster_ca);
ABSL_DECLARE_FLAG(std::string, cluster_cert);
ABSL_DECLARE_FLAG(std::string, cluster_key);
ABSL_DECLARE_FLAG(std::string, cluster_token_file);
