// The build's absolute paths, compiled into one generated file (tests/util/build_paths.cc.in, filled in by
// tests/CMakeLists.txt) instead of -D flags on every test file: a test file's command line then holds no path
// of this checkout or build folder, so ccache reuses it across clones (CI clones anew) and across build folders
// with the same flags (the CPU and CUDA builds). Read them through tests/util/test_env.h, which lets the
// environment override them.
#pragma once

namespace tpserve::testing {

const char* BuildSharedDir();  // ../shared next to the source tree, or -DTPSERVE_SHARED_DIR
const char* BuildBinDir();     // this build's bin/
const char* BuildSourceDir();  // the repository root

}  // namespace tpserve::testing
