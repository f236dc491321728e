// Every storage key is built here and nowhere else. Keys of tenant data
// start with the tenant (TenantId), so one tenant's data is one key range
// and no code path can build such a key without a tenant. Components are
// order-preserving: strings are escaped (0x00 -> 0x00 0xFF) and ended by
// 0x00 0x01; numbers are big-endian. Pure functions; any thread.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace fmq::storage {

// A tenant identifier as established by authentication (the certificate
// chain, later) or by the platform itself. There is no implicit conversion
// from a string: constructing one is an explicit, greppable act.
class TenantId {
 public:
  static TenantId FromAuthenticated(std::string_view id) { return TenantId(id); }
  // The MQTT namespace of plain-TCP (unauthenticated) clients: the empty
  // tenant, which sorts before and never collides with a named one.
  static TenantId Anonymous() { return TenantId(""); }
  const std::string& str() const { return id_; }
  bool operator==(const TenantId& o) const { return id_ == o.id_; }

 private:
  explicit TenantId(std::string_view id) : id_(id) {}
  std::string id_;
};

// Builds one key from components.
class KeyBuilder {
 public:
  KeyBuilder& Str(std::string_view s);
  KeyBuilder& U64(uint64_t v);
  KeyBuilder& I64(int64_t v);  // order-preserving for negatives too
  const std::string& key() const { return key_; }
  std::string Take() { return std::move(key_); }

 private:
  std::string key_;
};

// Splits a key built by KeyBuilder back into components (for index scans).
class KeyReader {
 public:
  explicit KeyReader(std::string_view key) : rest_(key) {}
  bool Str(std::string* out);
  bool U64(uint64_t* out);
  bool I64(int64_t* out);
  bool done() const { return rest_.empty(); }

 private:
  std::string_view rest_;
};

// Whose configuration document (doc/configuration-management.md).
enum class ConfigKind : uint8_t { kDevice = 0, kGroup = 1, kModel = 2 };

// Device lifecycle states [seed: registration_status / status].
enum class DeviceStatus : uint8_t {
  kRegistered = 0,
  kProvisioned = 1,
  kActive = 2,
  kSuspended = 3,
  kDecommissioned = 4,
  kReplaced = 5,
};

namespace keys {

// MQTT state.
std::string Session(const TenantId& t, std::string_view client_id);
std::string SessionMessage(const TenantId& t, std::string_view client_id, uint64_t seq);
std::string SessionMessagesPrefix(const TenantId& t, std::string_view client_id);
std::string SessionQos2(const TenantId& t, std::string_view client_id, uint16_t packet_id);
std::string SessionQos2Prefix(const TenantId& t, std::string_view client_id);
std::string Retained(const TenantId& t, std::string_view topic);

// Registry.
std::string Tenant(const TenantId& t);
std::string TenantPrefix(const TenantId& t);  // the whole key range of a tenant
std::string Device(const TenantId& t, std::string_view device_id);
std::string Model(const TenantId& t, std::string_view model_id);
std::string Group(const TenantId& t, std::string_view group_id);
std::string Config(const TenantId& t, ConfigKind kind, std::string_view target_id, uint64_t version);
std::string ConfigPrefix(const TenantId& t, ConfigKind kind, std::string_view target_id);
std::string DeviceConfig(const TenantId& t, std::string_view device_id);  // Family::kDeviceConfigs
std::string ConfigBlob(const TenantId& t, std::string_view hash);         // Family::kConfigBlobs
std::string ConfigRev(const TenantId& t);  // Family::kMeta: the tenant's last configuration revision
// Firmware (Family::kFirmware, kFirmwareChunks, kDeviceFirmware; doc/ota.md).
std::string Firmware(const TenantId& t, std::string_view model_id, std::string_view version);
std::string FirmwarePrefix(const TenantId& t);  // every artifact of the tenant, by model then version
std::string FirmwareUpload(const TenantId& t, std::string_view sha256);
std::string FirmwareUploadPrefix(const TenantId& t);
std::string FirmwareChunk(const TenantId& t, std::string_view sha256, uint64_t index);
std::string FirmwareChunkPrefix(const TenantId& t, std::string_view sha256);
std::string DeviceFirmware(const TenantId& t, std::string_view device_id);
// Health (Family::kHealth; doc/health.md): the latest report, and one slot
// per minute of the day (minute % history_minutes) of the device's history.
std::string HealthLatest(const TenantId& t, std::string_view device_id);
std::string HealthLatestPrefix(const TenantId& t);  // every device's latest report
std::string HealthMinute(const TenantId& t, std::string_view device_id, uint64_t slot);
std::string HealthMinutePrefix(const TenantId& t, std::string_view device_id);
// What the broker observed of the device's connection (mgmt/health/link.h).
std::string HealthLink(const TenantId& t, std::string_view device_id);
// Alerts (Family::kHealth; doc/health.md, "Alerts"): the tenant's rules, and
// per rule and device the alert it raised (raised or cleared, acknowledged).
std::string AlertRule(const TenantId& t, std::string_view rule_id);
std::string AlertRulePrefix(const TenantId& t);
std::string Alert(const TenantId& t, std::string_view rule_id, std::string_view device_id);
std::string AlertPrefix(const TenantId& t);                            // every alert of the tenant
std::string AlertPrefix(const TenantId& t, std::string_view rule_id);  // one rule's
std::string Cert(const TenantId& t, std::string_view serial);
// Family::kIndex: the tenant's certificates not revoked, by expiry (unix ms)
// then serial (doc/certificate-profile.md, "Expiry").
std::string CertExpiry(const TenantId& t, int64_t expires_ms, std::string_view serial);
std::string CertExpiryFrom(const TenantId& t, int64_t expires_ms);  // the first entry at or after
std::string CertExpiryPrefix(const TenantId& t);
// Family::kMeta: expiry notices sent up to this expiry (ms).
std::string CertNoticeCursor(const TenantId& t);
// Family::kIndex: a renewed device's old certificate, revoked at `at_ms`
// (its grace after the new one was used) → device id.
std::string CertRevokeDue(const TenantId& t, int64_t at_ms, std::string_view serial);
std::string CertRevokeDuePrefix(const TenantId& t);
// Family::kIndex: the tenant's transparency log, every certificate issued
// or revoked, by time (doc/certificate-profile.md "Transparency log") →
// JSON {event, serial, device_id, sha256, expires_at_ms, by}.
std::string CertLog(const TenantId& t, int64_t at_ms, std::string_view serial, std::string_view event);
std::string CertLogPrefix(const TenantId& t);
std::string Job(const TenantId& t, std::string_view job_id);
std::string JobDevice(const TenantId& t, std::string_view job_id, std::string_view device_id);
std::string JobDevicePrefix(const TenantId& t, std::string_view job_id);
std::string Audit(const TenantId& t, uint64_t seq);
std::string AuditPrefix(const TenantId& t);
std::string AuditHead(const TenantId& t);  // Family::kMeta: last seq and hash

// Secondary indexes (Family::kIndex). Each ends with the record id, so a
// prefix scan lists ids in a stable order.
enum class DeviceIndex : uint8_t { kGroup = 1, kStatus, kFirmware, kModel, kGroupFirmware, kSerial };
std::string DeviceIndexPrefix(const TenantId& t, DeviceIndex ix, std::string_view v1, std::string_view v2 = {});
std::string DeviceIndexEntry(const TenantId& t, DeviceIndex ix, std::string_view v1, std::string_view v2,
                             std::string_view device_id);
std::string CertByDevice(const TenantId& t, std::string_view device_id, std::string_view serial);
std::string CertByDevicePrefix(const TenantId& t, std::string_view device_id);
std::string AuditByDevice(const TenantId& t, std::string_view device_id, uint64_t seq);
std::string AuditByDevicePrefix(const TenantId& t, std::string_view device_id);
std::string AuditByTime(const TenantId& t, int64_t time_ms, uint64_t seq);
std::string AuditByTimeStart(const TenantId& t, int64_t time_ms);

}  // namespace keys
}  // namespace fmq::storage
