// The API key flag, shared by the server side (serve, coordinator) and the client (generate).
#include <string>

#include "absl/flags/flag.h"

ABSL_FLAG(std::string, api_key_file, "",
          "file holding the API key: servers then require metadata 'authorization: Bearer <key>'; "
          "generate sends it");
