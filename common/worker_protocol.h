// The worker control plane's version, sent as Hello.protocol_version (proto/tpserve/worker/v1/worker.proto):
// bump it when a coordinator and a worker from different builds would misread each other's messages. The
// coordinator refuses a Hello that carries another (coordinator/group_membership.h).
#pragma once

#include <cstdint>

namespace tpserve {

inline constexpr uint32_t kWorkerProtocolVersion = 2;  // 2: Load/AllocateKv answers echo the generation

}  // namespace tpserve
