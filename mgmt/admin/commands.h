// The one table of admin commands: name, required role, arguments with
// types, a one-line summary and the handler. The dispatcher (service.cc),
// fleetmq-admin's help and doc/admin-api.md are all generated from it.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "mgmt/admin/service.h"

namespace fmq::admin {

enum class ArgType : uint8_t { kString, kInt, kBool, kStringList, kObject, kNumber };
std::string_view ArgTypeName(ArgType t);

struct ArgSpec {
  const char* name;
  ArgType type;
  bool required;
  const char* help;
};

// State a handler works with; the Service commits `batch` (with the audit
// entry) after the handler returned OK, and applies `fx` only then.
struct Service::Ctx {
  Service& svc;
  const Actor& actor;
  const Json& args;
  Json& data;
  Effects& fx;
  storage::WriteBatch& batch;
  int64_t now_ms;
  std::string device_id;                         // the device the command is about (audit)
  std::vector<std::string> other_devices;        // more devices it changed: an entry each (audit)
  std::vector<std::string> crl_tenants;          // tenants whose CRL changed
  std::vector<std::function<void()>> on_commit;  // in-memory changes once the batch committed
  Json audit_change;                             // non-null: kept in the audit entry as "change" (a diff)
  Json certificates;  // certificates issued or revoked: in the audit entry (the transparency log's chain)

  // A certificate the command issued or revoked, for its audit entry.
  void NoteCert(const char* event, const fb::CertificateT& c) {
    certificates.push_back(Json{{"event", event}, {"serial", c.serial}, {"sha256", storage::Registry::CertSha256(c)}});
  }

  jobs::JobEngine& jobs() { return *svc.jobs_; }
  config::ConfigFeature& config() { return *svc.config_; }
  ota::OtaFeature& ota() { return *svc.ota_; }
  health::HealthFeature& health() { return *svc.health_; }
  health::AlertFeature& alerts() { return *svc.alerts_; }
  certs::ExpiryFeature& certs() { return *svc.certs_; }
  storage::TenantId tenant() const { return storage::TenantId::FromAuthenticated(actor.tenant); }
  storage::Registry& reg() { return svc.registry_; }
  storage::KvStore& kv() { return *svc.kv_; }
  const ServiceOptions& opts() const { return svc.opts_; }
  pki::Rng& rng() { return svc.rng_; }
  absl::StatusOr<pki::CertificateAuthority*> TenantCa(const std::string& t) { return svc.TenantCa(t); }
  absl::StatusOr<pki::CertificateAuthority*> RootCa() { return svc.RootCa(); }
  absl::Status CreateTenantPki(const std::string& t, std::string* ca_pem) { return svc.CreateTenantPki(t, ca_pem); }
  const Connectivity* ConnectivityOf(std::string_view device) const { return svc.ConnectivityOf(actor.tenant, device); }

  // Typed argument access; the dispatcher already checked types.
  // The time zone of the actor's tenant (maintenance windows): UTC unless set.
  std::string TenantZone() {
    fb::TenantT r;
    return reg().GetTenant(tenant(), &r).ok() && !r.time_zone.empty() ? r.time_zone : "UTC";
  }
  bool Has(const char* name) const { return args.contains(name); }
  std::string Str(const char* name, std::string def = {}) const {
    auto it = args.find(name);
    return it == args.end() ? def : it->get<std::string>();
  }
  int64_t Int(const char* name, int64_t def = 0) const {
    auto it = args.find(name);
    return it == args.end() ? def : it->get<int64_t>();
  }
  bool Bool(const char* name, bool def = false) const {
    auto it = args.find(name);
    return it == args.end() ? def : it->get<bool>();
  }
  std::vector<std::string> List(const char* name) const {
    std::vector<std::string> out;
    auto it = args.find(name);
    if (it != args.end()) {
      for (const auto& v : *it) out.push_back(v.get<std::string>());
    }
    return out;
  }
};

using Handler = absl::Status (*)(Service::Ctx&);

struct CommandSpec {
  const char* name;
  Role role;      // the one role allowed to run it
  bool mutating;  // audited, success or failure
  const char* summary;
  std::vector<ArgSpec> args;
  Handler handler;
};

// Every command: the device and tenant commands (commands.cc), then the
// job commands (job_commands.cc).
const std::vector<CommandSpec>& Commands();
std::vector<CommandSpec> JobCommands();
std::vector<CommandSpec> ConfigCommands();
std::vector<CommandSpec> OtaCommands();
std::vector<CommandSpec> HealthCommands();
std::vector<CommandSpec> CertCommands();
// A group's or model's configuration document changes (config.set and the
// group/model commands): a new version in the record `g`/`m` (the caller
// stores it); when `stored`, its devices get it through a config job.
absl::Status ChangeGroupDocument(Service::Ctx& ctx, fb::DeviceGroupT* g, const Json& next, bool stored, Json* out);
// A group's firmware_target_version was set (or cleared): its earlier target
// campaigns are canceled and a continuous ota campaign per model with an
// artifact of that version starts (doc/ota.md); `out` names them.
absl::Status GroupFirmwareTarget(Service::Ctx& ctx, const fb::DeviceGroupT& g, Json* out);
absl::Status ChangeModelDocument(Service::Ctx& ctx, fb::DeviceModelT* m, const Json& next, bool stored, Json* out);

// A job's target from the command's device_ids, or its query (group_id,
// model_id, firmware_version, status, online), and continuous (job.create,
// cert.renew).
absl::Status ParseJobTarget(Service::Ctx& ctx, jobs::JobEngine::Target* t);
// The arguments ParseJobTarget reads, between `before` and `after`.
std::vector<ArgSpec> WithTargetArgs(std::vector<ArgSpec> before, const std::vector<ArgSpec>& after);

// Shared by the handlers of every domain.
inline constexpr size_t kDefaultPage = 100;
// Ids are MQTT topic levels and certificate names: the certificate name
// alphabet, and not starting with '_' (reserved, e.g. the platform tenant).
bool ValidId(std::string_view s);
absl::Status CheckId(const char* what, std::string_view s);
size_t PageLimit(Service::Ctx& ctx, size_t ceiling);
absl::Status CheckLimit(Service::Ctx& ctx);
bool ParseDeviceStatus(std::string_view s, fb::DeviceStatus* out);
// Shorthands for the command tables (commands.cc, job_commands.cc,
// config_commands.cc): `using namespace table;` inside each file.
namespace table {
inline constexpr ArgType S = ArgType::kString;
inline constexpr ArgType I = ArgType::kInt;
inline constexpr ArgType B = ArgType::kBool;
inline constexpr ArgType L = ArgType::kStringList;
inline constexpr ArgType O = ArgType::kObject;
inline constexpr ArgType N = ArgType::kNumber;
inline constexpr Role kOp = Role::kOperator;
}  // namespace table
// Arguments every paginated command takes.
inline const ArgSpec kCursorArg{"cursor", ArgType::kString, false, "next_cursor of the previous page"};
inline const ArgSpec kLimitArg{"limit", ArgType::kInt, false, "page size (default 100, at most 1000)"};
const CommandSpec* FindCommand(std::string_view name);

// Stable error codes of replies (doc/admin-api.md lists them).
std::string_view ErrorCodeOf(const absl::Status& s);

// The command reference section of doc/admin-api.md.
std::string CommandsMarkdown();

}  // namespace fmq::admin
