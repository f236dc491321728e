#include "storage/keys.h"

namespace fmq::storage {

KeyBuilder& KeyBuilder::Str(std::string_view s) {
  for (char c : s) {
    key_.push_back(c);
    if (c == '\0') key_.push_back('\xFF');
  }
  key_.push_back('\0');
  key_.push_back('\x01');
  return *this;
}

KeyBuilder& KeyBuilder::U64(uint64_t v) {
  for (int i = 7; i >= 0; --i) key_.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
  return *this;
}

KeyBuilder& KeyBuilder::I64(int64_t v) { return U64(static_cast<uint64_t>(v) ^ (uint64_t{1} << 63)); }

bool KeyReader::Str(std::string* out) {
  out->clear();
  for (size_t i = 0; i < rest_.size(); ++i) {
    char c = rest_[i];
    if (c != '\0') {
      out->push_back(c);
      continue;
    }
    if (i + 1 >= rest_.size()) return false;
    if (rest_[i + 1] == '\xFF') {
      out->push_back('\0');
      ++i;
    } else if (rest_[i + 1] == '\x01') {
      rest_.remove_prefix(i + 2);
      return true;
    } else {
      return false;
    }
  }
  return false;
}

bool KeyReader::U64(uint64_t* out) {
  if (rest_.size() < 8) return false;
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<uint8_t>(rest_[static_cast<size_t>(i)]);
  rest_.remove_prefix(8);
  *out = v;
  return true;
}

bool KeyReader::I64(int64_t* out) {
  uint64_t u;
  if (!U64(&u)) return false;
  *out = static_cast<int64_t>(u ^ (uint64_t{1} << 63));
  return true;
}

namespace keys {
namespace {
// Every tenant key starts here; `kind` separates record kinds that share a
// column family (the index family).
KeyBuilder Base(const TenantId& t, std::string_view kind = {}) {
  KeyBuilder b;
  b.Str(t.str());
  if (!kind.empty()) b.Str(kind);
  return b;
}
}  // namespace

std::string Session(const TenantId& t, std::string_view id) { return Base(t).Str(id).Take(); }
std::string SessionMessage(const TenantId& t, std::string_view id, uint64_t seq) {
  return Base(t).Str(id).U64(seq).Take();
}
std::string SessionMessagesPrefix(const TenantId& t, std::string_view id) { return Base(t).Str(id).Take(); }
std::string SessionQos2(const TenantId& t, std::string_view id, uint16_t packet_id) {
  return Base(t).Str(id).U64(packet_id).Take();
}
std::string SessionQos2Prefix(const TenantId& t, std::string_view id) { return Base(t).Str(id).Take(); }
std::string Retained(const TenantId& t, std::string_view topic) { return Base(t).Str(topic).Take(); }

std::string Tenant(const TenantId& t) { return Base(t).Take(); }
std::string TenantPrefix(const TenantId& t) { return Base(t).Take(); }
std::string Device(const TenantId& t, std::string_view id) { return Base(t).Str(id).Take(); }
std::string Model(const TenantId& t, std::string_view id) { return Base(t).Str(id).Take(); }
std::string Group(const TenantId& t, std::string_view id) { return Base(t).Str(id).Take(); }
namespace {
std::string_view KindTag(ConfigKind k) { return k == ConfigKind::kGroup ? "g" : k == ConfigKind::kModel ? "m" : "d"; }
}  // namespace
std::string Config(const TenantId& t, ConfigKind kind, std::string_view target, uint64_t version) {
  return Base(t).Str(KindTag(kind)).Str(target).U64(version).Take();
}
std::string ConfigPrefix(const TenantId& t, ConfigKind kind, std::string_view target) {
  return Base(t).Str(KindTag(kind)).Str(target).Take();
}
std::string DeviceConfig(const TenantId& t, std::string_view device_id) { return Base(t).Str(device_id).Take(); }
std::string ConfigBlob(const TenantId& t, std::string_view hash) { return Base(t).Str(hash).Take(); }
std::string ConfigRev(const TenantId& t) { return Base(t, "config.rev").Take(); }
std::string Firmware(const TenantId& t, std::string_view model, std::string_view version) {
  return Base(t, "a").Str(model).Str(version).Take();
}
std::string FirmwarePrefix(const TenantId& t) { return Base(t, "a").Take(); }
std::string FirmwareUpload(const TenantId& t, std::string_view sha256) { return Base(t, "u").Str(sha256).Take(); }
std::string FirmwareUploadPrefix(const TenantId& t) { return Base(t, "u").Take(); }
std::string FirmwareChunk(const TenantId& t, std::string_view sha256, uint64_t index) {
  return Base(t).Str(sha256).U64(index).Take();
}
std::string FirmwareChunkPrefix(const TenantId& t, std::string_view sha256) { return Base(t).Str(sha256).Take(); }
std::string DeviceFirmware(const TenantId& t, std::string_view device_id) { return Base(t).Str(device_id).Take(); }
std::string HealthLatest(const TenantId& t, std::string_view device_id) { return Base(t, "l").Str(device_id).Take(); }
std::string HealthLatestPrefix(const TenantId& t) { return Base(t, "l").Take(); }
std::string HealthMinute(const TenantId& t, std::string_view device_id, uint64_t slot) {
  return Base(t, "h").Str(device_id).U64(slot).Take();
}
std::string HealthMinutePrefix(const TenantId& t, std::string_view device_id) {
  return Base(t, "h").Str(device_id).Take();
}
std::string HealthLink(const TenantId& t, std::string_view device_id) { return Base(t, "n").Str(device_id).Take(); }
std::string AlertRule(const TenantId& t, std::string_view rule_id) { return Base(t, "r").Str(rule_id).Take(); }
std::string AlertRulePrefix(const TenantId& t) { return Base(t, "r").Take(); }
std::string Alert(const TenantId& t, std::string_view rule_id, std::string_view device_id) {
  return Base(t, "a").Str(rule_id).Str(device_id).Take();
}
std::string AlertPrefix(const TenantId& t) { return Base(t, "a").Take(); }
std::string AlertPrefix(const TenantId& t, std::string_view rule_id) { return Base(t, "a").Str(rule_id).Take(); }
std::string Cert(const TenantId& t, std::string_view serial) { return Base(t).Str(serial).Take(); }
std::string Job(const TenantId& t, std::string_view id) { return Base(t).Str(id).Take(); }
std::string JobDevice(const TenantId& t, std::string_view job, std::string_view dev) {
  return Base(t).Str(job).Str(dev).Take();
}
std::string JobDevicePrefix(const TenantId& t, std::string_view job) { return Base(t).Str(job).Take(); }
std::string Audit(const TenantId& t, uint64_t seq) { return Base(t).U64(seq).Take(); }
std::string AuditPrefix(const TenantId& t) { return Base(t).Take(); }
std::string AuditHead(const TenantId& t) { return Base(t, "audit.head").Take(); }

std::string DeviceIndexPrefix(const TenantId& t, DeviceIndex ix, std::string_view v1, std::string_view v2) {
  KeyBuilder b = Base(t, "dev");
  b.U64(static_cast<uint64_t>(ix)).Str(v1);
  if (ix == DeviceIndex::kGroupFirmware) b.Str(v2);
  return b.Take();
}
std::string DeviceIndexEntry(const TenantId& t, DeviceIndex ix, std::string_view v1, std::string_view v2,
                             std::string_view device_id) {
  KeyBuilder b = Base(t, "dev");
  b.U64(static_cast<uint64_t>(ix)).Str(v1);
  if (ix == DeviceIndex::kGroupFirmware) b.Str(v2);
  return b.Str(device_id).Take();
}
std::string CertByDevice(const TenantId& t, std::string_view dev, std::string_view serial) {
  return Base(t, "cert.dev").Str(dev).Str(serial).Take();
}
std::string CertExpiry(const TenantId& t, int64_t expires_ms, std::string_view serial) {
  return Base(t, "cert.exp").I64(expires_ms).Str(serial).Take();
}
std::string CertExpiryFrom(const TenantId& t, int64_t expires_ms) { return Base(t, "cert.exp").I64(expires_ms).Take(); }
std::string CertExpiryPrefix(const TenantId& t) { return Base(t, "cert.exp").Take(); }
std::string CertNoticeCursor(const TenantId& t) { return Base(t, "cert.notice").Take(); }
std::string CertRevokeDue(const TenantId& t, int64_t at_ms, std::string_view serial) {
  return Base(t, "cert.rvk").I64(at_ms).Str(serial).Take();
}
std::string CertRevokeDuePrefix(const TenantId& t) { return Base(t, "cert.rvk").Take(); }
std::string CertLog(const TenantId& t, int64_t at_ms, std::string_view serial, std::string_view event) {
  return Base(t, "cert.log").I64(at_ms).Str(serial).Str(event).Take();
}
std::string CertLogPrefix(const TenantId& t) { return Base(t, "cert.log").Take(); }
std::string CertByDevicePrefix(const TenantId& t, std::string_view dev) { return Base(t, "cert.dev").Str(dev).Take(); }
std::string AuditByDevice(const TenantId& t, std::string_view dev, uint64_t seq) {
  return Base(t, "audit.dev").Str(dev).U64(seq).Take();
}
std::string AuditByDevicePrefix(const TenantId& t, std::string_view dev) {
  return Base(t, "audit.dev").Str(dev).Take();
}
std::string AuditByTime(const TenantId& t, int64_t time_ms, uint64_t seq) {
  return Base(t, "audit.time").I64(time_ms).U64(seq).Take();
}
std::string AuditByTimeStart(const TenantId& t, int64_t time_ms) { return Base(t, "audit.time").I64(time_ms).Take(); }

}  // namespace keys
}  // namespace fmq::storage
