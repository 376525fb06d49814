// tpserve: the single binary. Subcommands: serve, coordinator, worker, generate, tokenize, make-model.
#include <cstdio>
#include <cstring>

int main(int argc, char** argv) {
  std::fprintf(stderr, "tpserve: not yet wired\n");
  return 2;
}
