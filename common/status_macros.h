// Status plumbing used at every boundary (loader, RPC handlers, worker API).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TP_CONCAT_INNER_(a, b) a##b
#define TP_CONCAT_(a, b) TP_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define TP_RETURN_IF_ERROR(expr)                  \
  do {                                            \
    ::absl::Status tp_status_ = (expr);           \
    if (!tp_status_.ok()) return tp_status_;      \
  } while (0)

// `TP_ASSIGN_OR_RETURN(auto x, MakeX());` binds the value or returns the error.
#define TP_ASSIGN_OR_RETURN(lhs, expr) \
  TP_ASSIGN_OR_RETURN_IMPL_(TP_CONCAT_(tp_statusor_, __LINE__), lhs, expr)
#define TP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
