#include "broker/config.h"

#include <doctest/doctest.h>

#include <cstdio>
#include <fstream>
#include <sstream>

namespace fmq {
namespace {

absl::Status Load(std::vector<std::string> args, Config* cfg) {
  std::vector<char*> argv = {const_cast<char*>("fleetmq")};
  for (auto& a : args) argv.push_back(a.data());
  bool exit_now;
  std::string msg;
  return LoadConfig(static_cast<int>(argv.size()), argv.data(), cfg, &exit_now, &msg);
}

TEST_CASE("flags set options; bad values and unknown keys name the key") {
  Config c;
  REQUIRE(Load({"--listen=127.0.0.1:0,[::1]:1884", "--limits.max_packet_size", "4096", "--log_level=debug",
                "--limits.queue_qos0=true", "--limits.max_topic_levels=8"},
               &c)
              .ok());
  REQUIRE(c.server.listeners.size() == 2);
  CHECK(c.server.listeners[1].host == "::1");
  CHECK(c.server.listeners[1].port == 1884);
  CHECK(c.broker.max_packet_size == 4096);
  CHECK(c.broker.queue_qos0);
  CHECK(c.broker.topic_limits.max_levels == 8);
  CHECK(c.log_level == LogLevel::kDebug);

  Config d;
  auto s = Load({"--limits.max_packet_size=abc"}, &d);
  CHECK(std::string(s.message()).find("limits.max_packet_size") != std::string::npos);
  s = Load({"--limits.receive_maximum=0"}, &d);
  CHECK(std::string(s.message()).find("limits.receive_maximum") != std::string::npos);
  s = Load({"--no_such_key=1"}, &d);
  CHECK(std::string(s.message()).find("no_such_key") != std::string::npos);
  s = Load({"--listen=nope"}, &d);
  CHECK(std::string(s.message()).find("listen") != std::string::npos);
}

TEST_CASE("the TOML file is read first and flags override it") {
  std::string path = "/tmp/fleetmq-config-test.toml";
  {
    std::ofstream f(path);
    f << "listen = [\"127.0.0.1:1999\"]\nsys_interval = 3\n[limits]\nmax_inflight = 7\nmax_keepalive = 30\n";
  }
  Config c;
  REQUIRE(Load({"--config", path, "--limits.max_inflight=9"}, &c).ok());
  CHECK(c.server.listeners[0].port == 1999);
  CHECK(c.broker.sys_interval_s == 3);
  CHECK(c.broker.max_inflight == 9);
  CHECK(c.broker.max_keepalive == 30);
  {
    std::ofstream f(path);
    f << "[limits]\nmax_inflite = 7\n";
  }
  Config d;
  auto s = Load({"--config", path}, &d);
  CHECK(std::string(s.message()).find("limits.max_inflite") != std::string::npos);
  {
    std::ofstream f(path);
    f << "listen = [\n";
  }
  s = Load({"--config", path}, &d);
  CHECK_FALSE(s.ok());
  CHECK(std::string(s.message()).find(path) != std::string::npos);
  std::remove(path.c_str());
}

TEST_CASE("help lists every option with its default, and each default is accepted as a value") {
  std::string md = OptionsHelp(true);
  CHECK(md.find("`limits.max_queued_messages` | `1000`") != std::string::npos);
  // Every row: `key` | `default` | meaning. Setting each option to the
  // default the table shows must succeed, and leave the config as a fresh
  // one has it (the table says what the code does).
  std::istringstream lines(md);
  std::string line;
  size_t rows = 0;
  while (std::getline(lines, line)) {
    if (line.rfind("| `", 0) != 0) continue;
    const size_t k1 = 3, k2 = line.find('`', k1);
    const size_t d1 = line.find('`', k2 + 1) + 1, d2 = line.find("` |", d1);
    REQUIRE(k2 != std::string::npos);
    REQUIRE(d2 != std::string::npos);
    const std::string key = line.substr(k1, k2 - k1), def = line.substr(d1, d2 - d1);
    CAPTURE(key);
    Config c;
    absl::Status st = SetOption(&c, key, def);
    CHECK_MESSAGE(st.ok(), st.message());
    ++rows;
  }
  CHECK(rows >= 30);  // the table is not empty or cut short
  Config fresh, c;
  CHECK(SetOption(&c, "limits.max_queued_messages", "1000").ok());
  CHECK(c.broker.max_queued_messages == fresh.broker.max_queued_messages);
  CHECK(!SetOption(&c, "no.such.option", "1").ok());
}

}  // namespace
}  // namespace fmq

namespace fmq {
namespace {

TEST_CASE("doc/configuration.md lists exactly the options table") {
  std::ifstream in(FMQ_TEST_DATA_DIR "/../../doc/configuration.md");
  std::string doc((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK_MESSAGE(doc.find(OptionsHelp(true)) != std::string::npos, "regenerate the table with: tools/regen_docs.py");
}

}  // namespace
}  // namespace fmq
