// doctest runner for the unit tests. Broker log lines are silenced unless
// FMQ_TEST_LOG=debug|info|warning is set.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdlib>

#include "common/log.h"

int main(int argc, char** argv) {
  fmq::LogLevel level = fmq::LogLevel::kNone;
  if (const char* env = std::getenv("FMQ_TEST_LOG")) fmq::ParseLogLevel(env, &level);
  fmq::SetLogLevel(level);
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
