// Start-up configuration: one table of options (key, default, meaning) feeds
// the command-line flags, the TOML config file, `fleetmq --help` and
// doc/configuration.md. Loaded and validated once on the main thread before
// any worker starts; read-only afterwards.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "broker/core/acl.h"
#include "broker/core/options.h"
#include "broker/modules/admin_options.h"
#include "broker/net/server.h"
#include "broker/store/storage_writer.h"
#include "broker/tls/ticket_keys.h"
#include "common/log.h"
#include "storage/kv_store.h"

namespace fmq {

struct Config {
  ServerOptions server;
  BrokerOptions broker;
  WriterOptions storage;
  AclPolicy acl;
  storage::RocksOptions rocks;
  AdminModuleOptions management;
  std::string data_dir = "./data";
  uint32_t workers = 0;  // 0: one per usable CPU
  std::string tls_server_name = "localhost";
  std::string tls_crl_dir;  // empty: DATA_DIR/crl
  tls::TicketOptions tls_tickets;
  LogLevel log_level = LogLevel::kInfo;
  std::string config_file;  // empty = none
};

// Parses argv (flags `--key=value` or `--key value`, `--config FILE`); the
// file is read first and flags override it. Unknown keys and bad values are
// errors naming the key. Sets *exit_now for --help / --version (the text is
// then in *message).
absl::Status LoadConfig(int argc, char** argv, Config* cfg, bool* exit_now, std::string* message);

// Applies one `key = value` (value in flag syntax) to cfg.
absl::Status SetOption(Config* cfg, const std::string& key, const std::string& value);

// Loads a TOML file into cfg.
absl::Status LoadConfigFile(const std::string& path, Config* cfg);

// Markdown table of every option, for --help and doc/configuration.md.
std::string OptionsHelp(bool markdown);

}  // namespace fmq
