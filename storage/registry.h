// The device-management data model over a KvStore: tenants, models, groups,
// devices (with secondary indexes), versioned configurations, certificates,
// bulk jobs with per-device state, and the hash-chained audit log. Writes go
// into a caller's WriteBatch so a change and its audit entry commit
// atomically; index entries always travel in the same batch as their
// record. Writes and the audit chain (AppendAudit, VerifyAudit, its cached
// head) belong to one owner thread (the management module's); point reads
// and listings touch no cached state and may run on any thread (the broker's
// workers read devices at CONNECT).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "storage/keys.h"
#include "storage/kv_store.h"
#include "storage/records.h"

namespace fmq::storage {

template <class T>
struct Page {
  std::vector<T> items;
  std::string next_cursor;  // empty: no more
};

// Decommissioned or replaced: archived, never served or targeted again.
inline bool IsRetired(fb::DeviceStatus s) {
  return s == fb::DeviceStatus::Decommissioned || s == fb::DeviceStatus::Replaced;
}

struct DeviceFilter {
  std::string serial_number;     // empty = any (unique per tenant: at most one)
  std::string group_id;          // empty = any
  std::string firmware_version;  // empty = any
  std::string model_id;          // empty = any
  std::optional<fb::DeviceStatus> status;
};

// Told of every PutDevice with the batch it goes in (old: the stored
// version, or null for a new device), e.g. to mirror counts in memory once
// that batch commits (WriteBatch::OnCommitted).
class DeviceObserver {
 public:
  virtual ~DeviceObserver() = default;
  virtual void OnDevicePut(const TenantId& t, const fb::DeviceT* old, const fb::DeviceT& rec, WriteBatch* b) = 0;
};

class Registry {
 public:
  explicit Registry(KvStore* kv) : kv_(kv) {}
  void SetObserver(DeviceObserver* o) { observer_ = o; }

  absl::Status Commit(const WriteBatch& b, bool sync = true) { return kv_->Write(b, sync); }

  void PutTenant(const TenantId& t, const fb::TenantT& rec, WriteBatch* b);
  absl::Status GetTenant(const TenantId& t, fb::TenantT* out);
  // Platform-wide listing (platform admin only).
  absl::Status ListTenants(std::string_view cursor, size_t limit, Page<fb::TenantT>* out);

  void PutModel(const TenantId& t, const fb::DeviceModelT& rec, WriteBatch* b);
  absl::Status GetModel(const TenantId& t, std::string_view id, fb::DeviceModelT* out);
  absl::Status ListModels(const TenantId& t, std::string_view cursor, size_t limit, Page<fb::DeviceModelT>* out);

  void PutGroup(const TenantId& t, const fb::DeviceGroupT& rec, WriteBatch* b);
  absl::Status GetGroup(const TenantId& t, std::string_view id, fb::DeviceGroupT* out);
  absl::Status ListGroups(const TenantId& t, std::string_view cursor, size_t limit, Page<fb::DeviceGroupT>* out);

  // Adds the record and brings its index entries up to date (reading the
  // stored version to drop stale entries). One PutDevice per device per batch.
  absl::Status PutDevice(const TenantId& t, const fb::DeviceT& rec, WriteBatch* b);
  absl::Status GetDevice(const TenantId& t, std::string_view id, fb::DeviceT* out);
  // Filtered listing in device-id order; `cursor` is the last id of the
  // previous page. Uses the most selective index; other criteria filter.
  absl::Status ListDevices(const TenantId& t, const DeviceFilter& f, std::string_view cursor, size_t limit,
                           Page<fb::DeviceT>* out);

  // Configuration versions (the kind: rec.kind, or is_group for records
  // written before kinds).
  void PutConfig(const TenantId& t, const fb::ConfigurationT& rec, WriteBatch* b);
  void DeleteConfig(const TenantId& t, ConfigKind kind, std::string_view target, uint64_t version, WriteBatch* b);
  // version 0 = the latest.
  absl::Status GetConfig(const TenantId& t, ConfigKind kind, std::string_view target, uint64_t version,
                         fb::ConfigurationT* out);
  // Versions newest first, from below `before` (0: the latest).
  absl::Status ListConfigs(const TenantId& t, ConfigKind kind, std::string_view target, uint64_t before, size_t limit,
                           std::vector<fb::ConfigurationT>* out);
  void PutDeviceConfig(const TenantId& t, const fb::DeviceConfigT& rec, WriteBatch* b);
  // NotFound: the device never had configuration state.
  absl::Status GetDeviceConfig(const TenantId& t, std::string_view device_id, fb::DeviceConfigT* out);
  // Effective documents by hash (canonical text), written once per hash.
  void PutConfigBlob(const TenantId& t, std::string_view hash, std::string_view canonical, WriteBatch* b);
  absl::StatusOr<std::string> GetConfigBlob(const TenantId& t, std::string_view hash);

  // A newly issued certificate: its record, indexes and transparency log entry.
  void PutCert(const TenantId& t, const fb::CertificateT& rec, WriteBatch* b);
  // The transparency log (keys::CertLog): entries as JSON text, oldest
  // first, from `cursor` (a key; empty: the start); `next_cursor` empty at the end.
  absl::Status CertLogPage(const TenantId& t, std::string_view cursor, size_t limit, std::vector<std::string>* out,
                           std::string* next_cursor);
  // Lowercase hex SHA-256 of the certificate's DER ("" without DER).
  static std::string CertSha256(const fb::CertificateT& c);
  absl::Status GetCert(const TenantId& t, std::string_view serial, fb::CertificateT* out);
  absl::Status CertsOfDevice(const TenantId& t, std::string_view device_id, std::vector<fb::CertificateT>* out);
  // Marks a serial revoked (creating a record for a serial issued outside
  // the registry) and logs it (transparency log). Idempotent: the first
  // revocation time is kept, and logged once.
  absl::Status RevokeCert(const TenantId& t, std::string_view serial, int64_t now_ms, WriteBatch* b);
  // Every revoked serial of every tenant (platform start-up: the TLS
  // context's revocation set), or of one tenant when `only` is set.
  absl::Status ForEachRevoked(const std::function<void(std::string_view tenant, const fb::CertificateT&)>& fn,
                              const TenantId* only = nullptr);

  void PutJob(const TenantId& t, const fb::JobT& rec, WriteBatch* b);
  absl::Status GetJob(const TenantId& t, std::string_view id, fb::JobT* out);
  absl::Status ListJobs(const TenantId& t, std::string_view cursor, size_t limit, Page<fb::JobT>* out);
  // Every job of every tenant (start-up: the job engine's recovery).
  absl::Status ForEachJob(const std::function<void(const TenantId& t, fb::JobT&& job)>& fn);
  absl::Status GetJobDevice(const TenantId& t, std::string_view job_id, std::string_view device_id,
                            fb::JobDeviceT* out);
  void PutJobDevice(const TenantId& t, std::string_view job_id, const fb::JobDeviceT& rec, WriteBatch* b);
  absl::Status ListJobDevices(const TenantId& t, std::string_view job_id, std::string_view cursor, size_t limit,
                              Page<fb::JobDeviceT>* out);

  // Appends to the tenant's audit log: fills seq, prev_hash and hash
  // (SHA-256 over the previous hash and the entry's fields) and the
  // by-device and by-time index entries.
  absl::Status AppendAudit(const TenantId& t, fb::AuditEntryT entry, WriteBatch* b);
  // Called after the batch holding AppendAudit failed to commit, so the
  // cached chain head is reloaded from the store.
  void ForgetAuditHead(const TenantId& t) { audit_heads_.erase(t.str()); }
  absl::Status AuditOfDevice(const TenantId& t, std::string_view device_id, std::string_view cursor, size_t limit,
                             Page<fb::AuditEntryT>* out);
  absl::Status AuditInRange(const TenantId& t, int64_t from_ms, int64_t to_ms, std::string_view cursor, size_t limit,
                            Page<fb::AuditEntryT>* out);
  // Recomputes the chain; returns DataLoss naming the first bad entry.
  absl::Status VerifyAudit(const TenantId& t, uint64_t* entries);

  static std::string AuditHash(const std::string& prev_hash, const fb::AuditEntryT& e);

 private:
  void StoreCert(const TenantId& t, const fb::CertificateT& rec, WriteBatch* b);
  void LogCert(const TenantId& t, std::string_view event, const fb::CertificateT& c, int64_t at_ms, WriteBatch* b);
  struct AuditHeadState {
    uint64_t seq = 0;
    std::string hash;
  };
  absl::Status LoadAuditHead(const TenantId& t, AuditHeadState** out);

  KvStore* kv_;
  DeviceObserver* observer_ = nullptr;
  absl::flat_hash_map<std::string, AuditHeadState> audit_heads_;
};

}  // namespace fmq::storage
