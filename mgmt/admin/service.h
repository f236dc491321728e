// The admin control plane's executor: parses a JSON request (one or more
// commands), checks each command's role and arguments against the command
// table (commands.cc), runs it against the registry and the PKI, and writes
// its audit entry in the same batch as the change. Runs on the management
// thread only (it signs certificates and reads RocksDB: never on a broker
// loop). What the broker itself must do afterwards (close a connection, add
// a serial to the TLS revocation set, publish a CRL) is returned as Effects
// and applied on the loop thread by the broker's module (broker/modules/).
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "common/clock.h"
#include "common/string_map.h"
#include "mgmt/certs/expiry.h"
#include "mgmt/certs/renewal.h"
#include "mgmt/config/config_feature.h"
#include "mgmt/health/alerts.h"
#include "mgmt/health/health_feature.h"
#include "mgmt/jobs/job_engine.h"
#include "mgmt/ota/ota_feature.h"
#include "mgmt/pki/pki.h"
#include "mgmt/runtime/feature.h"
#include "storage/registry.h"

namespace fmq::admin {

using Json = nlohmann::json;

// Who sent a request, from the verified certificate (never from the request).
enum class Role : uint8_t { kDevice, kOperator, kAdmin };
std::string_view RoleName(Role r);

struct Actor {
  std::string tenant;
  std::string name;  // operator name or device id
  Role role = Role::kDevice;
  std::string client_id;
  std::string Label() const;  // "operator:alice" as written in the audit log
};

// What the broker must do once a command committed (loop thread).
struct Effects {
  // Closes the device's session (suspended or retired). Connections using a
  // revoked certificate are closed through `revoked`, connected or not.
  struct Kick {
    std::string tenant, device_id;
  };
  struct Block {
    std::string tenant, device_id;
    bool blocked = true;  // suspended / decommissioned / replaced: CONNACK 0x8A
  };
  // A device's group membership changed: its live session's ACL (%g).
  struct Groups {
    std::string tenant, device_id;
    std::vector<std::string> old_groups, groups;
  };
  struct Quota {
    std::string tenant;
    uint32_t max_connections = 0, max_publish_rate = 0;
    uint16_t server_keepalive = 0;
  };
  struct Publish {
    std::string tenant;  // published under this tenant's mount
    std::string topic;   // as the tenant's clients see it
    std::string payload;
    bool retain = false;
  };
  std::vector<Kick> kicks;
  std::vector<std::pair<std::string, std::string>> revoked;  // (tenant, serial): refused and closed everywhere
  std::vector<Block> blocks;
  std::vector<Groups> regroups;
  std::vector<Quota> quotas;
  std::vector<std::string> trusted_cas;  // PEM of tenant CAs created at run time
  std::vector<Publish> publishes;
  // What the features release: device-channel messages and events.
  mgmt::Output features;
  bool empty() const {
    return kicks.empty() && revoked.empty() && blocks.empty() && regroups.empty() && quotas.empty() &&
           trusted_cas.empty() && publishes.empty() && features.empty();
  }
};

// A device connected or disconnected, or (counters_only) reported the
// counters of its open connection (from the broker's hooks).
struct ConnEvent {
  std::string tenant, device_id, reason, peer;
  bool connected = false;
  int64_t wall_ms = 0;
  std::string serial;  // the certificate the connection presented
  bool counters_only = false;
  LinkCounters counters;  // since the connection last reported
  std::string error;      // a disconnect for a protocol error: the rule
};

struct ServiceOptions {
  std::string pki_dir;                                   // DATA_DIR/pki
  std::string mqtt_endpoint = "mqtts://127.0.0.1:8883";  // returned by device.register
  size_t max_request_bytes = 256 * 1024;
  size_t max_commands = 100;  // per request
  size_t max_page = 1000;     // list limit ceiling
  int64_t crl_validity_ms = 7 * pki::kDay;
  jobs::EngineOptions jobs;
  config::Options config;
  ota::Options ota;
  health::Options health;
  health::AlertOptions alerts;
  certs::Options certs;
  certs::RenewalOptions renewal;
  int64_t device_validity_ms = pki::kDeviceValidity;  // certificates issued from device CSRs
};

// Live connectivity as last reported by the broker's hooks.
struct Connectivity {
  bool online = false;
  int64_t connected_since_ms = 0;  // wall
  int64_t last_seen_ms = 0;        // wall: connect or disconnect time (the
                                   // loop refines it for online devices)
  std::string last_disconnect_reason;
  std::string cert_serial;          // of the (last) connection
  std::vector<std::string> scopes;  // online: the health roll-up scopes it is counted in
};

class Service {
 public:
  Service(storage::KvStore* kv, const Clock* clock, ServiceOptions opts);
  ~Service();

  // Start-up: a tenant record for every tenant CA in the PKI dir, each
  // tenant's CRL (the file on disk when current, else re-signed; published
  // on $SYS), and the blocked devices and tenant quotas the broker must know.
  absl::Status Init(Effects* fx);

  // One request (the JSON text of one MQTT message) → the JSON reply.
  std::string Handle(const Actor& actor, std::string_view request, Effects* fx);

  // Connect/disconnect events, in order: first/last seen, provisioned →
  // active on first connect, an audit entry each, one batch for all.
  void OnConnectivity(const std::vector<ConnEvent>& events);

  // Periodic duties (called about once a second; each runs on its own
  // period): CRLs past half their validity are re-signed (checked once a
  // minute).
  void Tick(Effects* fx);

  // The features (mgmt/runtime/feature.h), read-only once started: the
  // broker's module asks it which feature validates a device message.
  const mgmt::Runtime& runtime() const { return runtime_; }
  // Every feature's counters (management thread).
  void FeatureCounters(const std::function<void(const char*, uint64_t)>& pub) const {
    for (const mgmt::Feature* f : runtime_.features()) f->Counters(pub);
  }
  // The device channel: a device message valid for its feature's schema,
  // and the outcome of a message sent to a device (with a token).
  void OnDeviceMessage(const mgmt::DeviceMessage& m);
  // The device subscribed to its channel (after OnConnectivity's connect).
  void OnSubscribed(const std::string& tenant, const std::string& device_id);
  void OnDeliveryOutcome(uint64_t token, bool acked, std::string_view why);
  // Registry changes made by commands, once committed: every feature hears them.
  void DeviceJoined(const storage::TenantId& t, const fb::DeviceT& d);
  void DeviceRetired(const storage::TenantId& t, const std::string& device_id);
  // Runs the features' deadlines and pending work (job timeouts, retries,
  // dispatch), commits their state, and returns what must go out now and
  // the wall ms at which it must run again (INT64_MAX: only on new input).
  int64_t Pump(Effects* fx);

  // A device refused at CONNECT (suspended...) or a denied admin attempt
  // that never reached a command: audited.
  void AuditDenied(const Actor& actor, std::string_view action, std::string_view device_id, std::string_view why);

  const Connectivity* ConnectivityOf(const std::string& tenant, std::string_view device_id) const;

  // Exposed for the command handlers (commands.cc).
  struct Ctx;

 private:
  friend struct Ctx;
  friend struct CommandImpl;
  Json RunOne(const Actor& actor, const Json& cmd, Effects* fx);
  absl::StatusOr<pki::CertificateAuthority*> TenantCa(const std::string& tenant);
  absl::StatusOr<pki::CertificateAuthority*> RootCa();
  absl::Status RegenerateCrl(const std::string& tenant, Effects* fx);
  absl::Status LoadOrRegenerateCrl(const std::string& tenant, Effects* fx);
  absl::Status CreateTenantPki(const std::string& tenant, std::string* ca_pem);
  // What the features revoked (Output::revoked): closed everywhere at once,
  // their tenants' CRLs re-signed by SignDueCrls (at most one per tenant per
  // kCrlCoalesceMs; returns when it must run again).
  void ApplyRevoked(Effects* fx);
  int64_t SignDueCrls(Effects* fx);
  static constexpr int64_t kCrlCoalesceMs = 2000;

  storage::KvStore* kv_;
  const Clock* clock_;
  ServiceOptions opts_;
  storage::Registry registry_;
  pki::Rng rng_;
  std::unique_ptr<pki::CertificateAuthority> root_;
  StringMap<std::unique_ptr<pki::CertificateAuthority>> cas_;
  StringMap<int64_t> crl_signed_at_;          // tenant → wall ms
  absl::flat_hash_set<std::string> crl_due_;  // tenants whose CRL lacks a feature's revocation
  StringMap<StringMap<Connectivity>> conn_;   // tenant → device → state
  int64_t last_tick_ms_ = 0;
  std::unique_ptr<jobs::JobEngine> jobs_;
  std::unique_ptr<config::ConfigFeature> config_;
  std::unique_ptr<ota::OtaFeature> ota_;
  std::unique_ptr<health::HealthFeature> health_;
  std::unique_ptr<health::AlertFeature> alerts_;
  std::unique_ptr<certs::ExpiryFeature> certs_;
  std::unique_ptr<certs::RenewalFeature> renewal_;
  StringMap<pki::Signer> signers_;  // tenant → firmware signer (loaded or made on first use)
  mgmt::Runtime runtime_;           // jobs_, config_, ota_, health_, certs_, renewal_
};

}  // namespace fmq::admin
