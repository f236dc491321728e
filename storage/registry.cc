#include "storage/registry.h"

#include <mbedtls/sha256.h>

#include <algorithm>
#include <charconv>
#include <set>

#include "common/hex.h"

namespace fmq::storage {
namespace {

using Index = keys::DeviceIndex;

// The smallest key after `key` itself.
std::string After(std::string key) {
  key.push_back('\0');
  return key;
}

// Lists records of one family under `prefix`, in key order, after the record
// whose full key is `after_key` (empty: from the start).
template <class Table, class IdFn>
absl::Status ListRecords(KvStore& kv, Family f, const std::string& prefix, const std::string& after_key, size_t limit,
                         Page<typename Table::NativeTableType>* out, IdFn id_of) {
  out->items.clear();
  out->next_cursor.clear();
  if (limit == 0) return absl::OkStatus();
  absl::Status err = absl::OkStatus();
  bool more = false;
  std::string start = after_key.empty() ? prefix : After(after_key);
  absl::Status s = kv.Scan(f, start, PrefixEnd(prefix), [&](std::string_view k, std::string_view v) {
    if (out->items.size() == limit) {
      more = true;
      return false;
    }
    typename Table::NativeTableType rec;
    err = DecodeRecord<Table>(f, k, v, &rec);
    if (!err.ok()) return false;
    out->items.push_back(std::move(rec));
    return true;
  });
  if (!s.ok()) return s;
  if (!err.ok()) return err;
  if (more) out->next_cursor = id_of(out->items.back());
  return absl::OkStatus();
}

std::string StatusKey(fb::DeviceStatus s) { return std::to_string(static_cast<int>(s)); }

std::set<std::string> IndexEntries(const TenantId& t, const fb::DeviceT& d) {
  std::set<std::string> e;
  for (const auto& g : d.group_ids) {
    e.insert(keys::DeviceIndexEntry(t, Index::kGroup, g, {}, d.device_id));
    e.insert(keys::DeviceIndexEntry(t, Index::kGroupFirmware, g, d.firmware_version, d.device_id));
  }
  e.insert(keys::DeviceIndexEntry(t, Index::kStatus, StatusKey(d.status), {}, d.device_id));
  e.insert(keys::DeviceIndexEntry(t, Index::kFirmware, d.firmware_version, {}, d.device_id));
  e.insert(keys::DeviceIndexEntry(t, Index::kModel, d.model_id, {}, d.device_id));
  if (!d.serial_number.empty()) e.insert(keys::DeviceIndexEntry(t, Index::kSerial, d.serial_number, {}, d.device_id));
  return e;
}

bool Matches(const fb::DeviceT& d, const DeviceFilter& f) {
  if (!f.group_id.empty() && std::find(d.group_ids.begin(), d.group_ids.end(), f.group_id) == d.group_ids.end()) {
    return false;
  }
  if (!f.firmware_version.empty() && d.firmware_version != f.firmware_version) return false;
  if (!f.model_id.empty() && d.model_id != f.model_id) return false;
  if (f.status && d.status != *f.status) return false;
  if (!f.serial_number.empty() && d.serial_number != f.serial_number) return false;
  return true;
}

void AppendField(std::string* s, std::string_view v) {
  uint32_t n = static_cast<uint32_t>(v.size());
  s->append(reinterpret_cast<const char*>(&n), 4);
  s->append(v);
}

}  // namespace

void Registry::PutTenant(const TenantId& t, const fb::TenantT& rec, WriteBatch* b) {
  b->Put(Family::kTenants, keys::Tenant(t), EncodeRecord<fb::Tenant>(rec));
}
absl::Status Registry::GetTenant(const TenantId& t, fb::TenantT* out) {
  return ReadRecord<fb::Tenant>(*kv_, Family::kTenants, keys::Tenant(t), out);
}
absl::Status Registry::ListTenants(std::string_view cursor, size_t limit, Page<fb::TenantT>* out) {
  std::string after = cursor.empty() ? "" : keys::Tenant(TenantId::FromAuthenticated(cursor));
  return ListRecords<fb::Tenant>(*kv_, Family::kTenants, "", after, limit, out,
                                 [](const fb::TenantT& r) { return r.tenant_id; });
}

void Registry::PutModel(const TenantId& t, const fb::DeviceModelT& rec, WriteBatch* b) {
  b->Put(Family::kModels, keys::Model(t, rec.model_id), EncodeRecord<fb::DeviceModel>(rec));
}
absl::Status Registry::GetModel(const TenantId& t, std::string_view id, fb::DeviceModelT* out) {
  return ReadRecord<fb::DeviceModel>(*kv_, Family::kModels, keys::Model(t, id), out);
}
absl::Status Registry::ListModels(const TenantId& t, std::string_view cursor, size_t limit,
                                  Page<fb::DeviceModelT>* out) {
  return ListRecords<fb::DeviceModel>(*kv_, Family::kModels, keys::TenantPrefix(t),
                                      cursor.empty() ? "" : keys::Model(t, cursor), limit, out,
                                      [](const fb::DeviceModelT& r) { return r.model_id; });
}

void Registry::PutGroup(const TenantId& t, const fb::DeviceGroupT& rec, WriteBatch* b) {
  b->Put(Family::kGroups, keys::Group(t, rec.group_id), EncodeRecord<fb::DeviceGroup>(rec));
}
absl::Status Registry::GetGroup(const TenantId& t, std::string_view id, fb::DeviceGroupT* out) {
  return ReadRecord<fb::DeviceGroup>(*kv_, Family::kGroups, keys::Group(t, id), out);
}
absl::Status Registry::ListGroups(const TenantId& t, std::string_view cursor, size_t limit,
                                  Page<fb::DeviceGroupT>* out) {
  return ListRecords<fb::DeviceGroup>(*kv_, Family::kGroups, keys::TenantPrefix(t),
                                      cursor.empty() ? "" : keys::Group(t, cursor), limit, out,
                                      [](const fb::DeviceGroupT& r) { return r.group_id; });
}

absl::Status Registry::PutDevice(const TenantId& t, const fb::DeviceT& rec, WriteBatch* b) {
  fb::DeviceT old;
  absl::Status s = GetDevice(t, rec.device_id, &old);
  std::set<std::string> stale;
  if (s.ok()) {
    stale = IndexEntries(t, old);
  } else if (!absl::IsNotFound(s)) {
    return s;
  }
  for (const std::string& k : IndexEntries(t, rec)) {
    if (stale.erase(k) == 0) b->Put(Family::kIndex, k, "");
  }
  for (const std::string& k : stale) b->Delete(Family::kIndex, k);
  b->Put(Family::kDevices, keys::Device(t, rec.device_id), EncodeRecord<fb::Device>(rec));
  if (observer_ != nullptr) observer_->OnDevicePut(t, s.ok() ? &old : nullptr, rec, b);
  return absl::OkStatus();
}

absl::Status Registry::GetDevice(const TenantId& t, std::string_view id, fb::DeviceT* out) {
  return ReadRecord<fb::Device>(*kv_, Family::kDevices, keys::Device(t, id), out);
}

absl::Status Registry::ListDevices(const TenantId& t, const DeviceFilter& f, std::string_view cursor_in, size_t limit,
                                   Page<fb::DeviceT>* out) {
  const std::string cursor(cursor_in);  // may alias out->next_cursor
  std::string prefix;
  if (!f.serial_number.empty()) {
    prefix = keys::DeviceIndexPrefix(t, Index::kSerial, f.serial_number);
  } else if (!f.group_id.empty() && !f.firmware_version.empty()) {
    prefix = keys::DeviceIndexPrefix(t, Index::kGroupFirmware, f.group_id, f.firmware_version);
  } else if (!f.group_id.empty()) {
    prefix = keys::DeviceIndexPrefix(t, Index::kGroup, f.group_id);
  } else if (!f.firmware_version.empty()) {
    prefix = keys::DeviceIndexPrefix(t, Index::kFirmware, f.firmware_version);
  } else if (!f.model_id.empty()) {
    prefix = keys::DeviceIndexPrefix(t, Index::kModel, f.model_id);
  } else if (f.status) {
    prefix = keys::DeviceIndexPrefix(t, Index::kStatus, StatusKey(*f.status));
  } else {
    return ListRecords<fb::Device>(*kv_, Family::kDevices, keys::TenantPrefix(t),
                                   cursor.empty() ? "" : keys::Device(t, cursor), limit, out,
                                   [](const fb::DeviceT& r) { return r.device_id; });
  }
  out->items.clear();
  out->next_cursor.clear();
  if (limit == 0) return absl::OkStatus();
  std::string start = prefix;
  if (!cursor.empty()) start = After(prefix + KeyBuilder().Str(cursor).key());
  absl::Status err = absl::OkStatus();
  bool more = false;
  absl::Status s = kv_->Scan(Family::kIndex, start, PrefixEnd(prefix), [&](std::string_view k, std::string_view) {
    std::string id;
    KeyReader r(k.substr(prefix.size()));
    if (!r.Str(&id)) {
      err = CorruptRecord(Family::kIndex, k, "index entry without a device id");
      return false;
    }
    fb::DeviceT d;
    absl::Status g = GetDevice(t, id, &d);
    if (absl::IsNotFound(g)) return true;  // cannot happen with atomic batches; skip
    if (!g.ok()) {
      err = g;
      return false;
    }
    if (!Matches(d, f)) return true;
    if (out->items.size() == limit) {
      more = true;
      return false;
    }
    out->items.push_back(std::move(d));
    return true;
  });
  if (!s.ok()) return s;
  if (!err.ok()) return err;
  if (more) out->next_cursor = out->items.back().device_id;
  return absl::OkStatus();
}

namespace {
ConfigKind KindOf(const fb::ConfigurationT& rec) {
  if (rec.kind != 0) return static_cast<ConfigKind>(rec.kind);
  return rec.is_group ? ConfigKind::kGroup : ConfigKind::kDevice;
}
}  // namespace

void Registry::PutConfig(const TenantId& t, const fb::ConfigurationT& rec, WriteBatch* b) {
  b->Put(Family::kConfigs, keys::Config(t, KindOf(rec), rec.target_id, rec.version),
         EncodeRecord<fb::Configuration>(rec));
}

void Registry::DeleteConfig(const TenantId& t, ConfigKind kind, std::string_view target, uint64_t version,
                            WriteBatch* b) {
  b->Delete(Family::kConfigs, keys::Config(t, kind, target, version));
}

absl::Status Registry::GetConfig(const TenantId& t, ConfigKind kind, std::string_view target, uint64_t version,
                                 fb::ConfigurationT* out) {
  if (version != 0) {
    return ReadRecord<fb::Configuration>(*kv_, Family::kConfigs, keys::Config(t, kind, target, version), out);
  }
  std::string last_key, last_value;
  // The history is bounded (config.history), so the scan is too.
  absl::Status s = kv_->ScanPrefix(Family::kConfigs, keys::ConfigPrefix(t, kind, target),
                                   [&](std::string_view k, std::string_view v) {
                                     last_key.assign(k);
                                     last_value.assign(v);
                                     return true;
                                   });
  if (!s.ok()) return s;
  if (last_key.empty()) return absl::NotFoundError("no configuration");
  return DecodeRecord<fb::Configuration>(Family::kConfigs, last_key, last_value, out);
}

absl::Status Registry::ListConfigs(const TenantId& t, ConfigKind kind, std::string_view target, uint64_t before,
                                   size_t limit, std::vector<fb::ConfigurationT>* out) {
  std::vector<std::pair<std::string, std::string>> all;
  absl::Status s = kv_->ScanPrefix(Family::kConfigs, keys::ConfigPrefix(t, kind, target),
                                   [&](std::string_view k, std::string_view v) {
                                     all.emplace_back(std::string(k), std::string(v));
                                     return true;
                                   });
  if (!s.ok()) return s;
  for (auto it = all.rbegin(); it != all.rend() && out->size() < limit; ++it) {
    fb::ConfigurationT c;
    if (absl::Status d = DecodeRecord<fb::Configuration>(Family::kConfigs, it->first, it->second, &c); !d.ok()) {
      return d;
    }
    if (before != 0 && c.version >= before) continue;
    out->push_back(std::move(c));
  }
  return absl::OkStatus();
}

void Registry::PutDeviceConfig(const TenantId& t, const fb::DeviceConfigT& rec, WriteBatch* b) {
  b->Put(Family::kDeviceConfigs, keys::DeviceConfig(t, rec.device_id), EncodeRecord<fb::DeviceConfig>(rec));
}

absl::Status Registry::GetDeviceConfig(const TenantId& t, std::string_view device_id, fb::DeviceConfigT* out) {
  return ReadRecord<fb::DeviceConfig>(*kv_, Family::kDeviceConfigs, keys::DeviceConfig(t, device_id), out);
}

void Registry::PutConfigBlob(const TenantId& t, std::string_view hash, std::string_view canonical, WriteBatch* b) {
  b->Put(Family::kConfigBlobs, keys::ConfigBlob(t, hash), std::string(canonical));
}

absl::StatusOr<std::string> Registry::GetConfigBlob(const TenantId& t, std::string_view hash) {
  return kv_->Get(Family::kConfigBlobs, keys::ConfigBlob(t, hash));
}

std::string Registry::CertSha256(const fb::CertificateT& c) {
  if (c.der.empty()) return "";
  unsigned char h[32];
  mbedtls_sha256_ret(c.der.data(), c.der.size(), h, 0);
  return HexOf(std::string_view(reinterpret_cast<const char*>(h), sizeof h));
}

void Registry::LogCert(const TenantId& t, std::string_view event, const fb::CertificateT& c, int64_t at_ms,
                       WriteBatch* b) {
  // Serials and device ids are certificate names (no quotes or escapes).
  std::string v = "{\"event\":\"" + std::string(event) + "\",\"serial\":\"" + c.serial + "\",\"device_id\":\"" +
                  c.device_id + "\",\"sha256\":\"" + CertSha256(c) +
                  "\",\"expires_at_ms\":" + std::to_string(c.expires_at_ms) + ",\"at_ms\":" + std::to_string(at_ms) +
                  "}";
  b->Put(Family::kIndex, keys::CertLog(t, at_ms, c.serial, event), v);
}

absl::Status Registry::CertLogPage(const TenantId& t, std::string_view cursor, size_t limit,
                                   std::vector<std::string>* out, std::string* next_cursor) {
  const std::string prefix = keys::CertLogPrefix(t);
  if (!cursor.empty() && cursor.substr(0, prefix.size()) != prefix) {
    return absl::InvalidArgumentError("cursor is not one of this listing's");
  }
  const std::string start = cursor.empty() ? prefix : After(std::string(cursor));
  out->clear();
  next_cursor->clear();
  return kv_->Scan(Family::kIndex, start, PrefixEnd(prefix), [&](std::string_view k, std::string_view v) {
    if (out->size() == limit) return false;
    out->emplace_back(v);
    if (out->size() == limit) *next_cursor = std::string(k);
    return true;
  });
}

void Registry::PutCert(const TenantId& t, const fb::CertificateT& rec, WriteBatch* b) {
  StoreCert(t, rec, b);
  LogCert(t, "issued", rec, rec.issued_at_ms, b);
}

void Registry::StoreCert(const TenantId& t, const fb::CertificateT& rec, WriteBatch* b) {
  b->Put(Family::kCerts, keys::Cert(t, rec.serial), EncodeRecord<fb::Certificate>(rec));
  if (!rec.device_id.empty()) b->Put(Family::kIndex, keys::CertByDevice(t, rec.device_id, rec.serial), "");
  // The expiry index holds what can still be used: a revoked certificate leaves it.
  if (rec.expires_at_ms > 0) {
    if (rec.revoked_at_ms == 0) {
      b->Put(Family::kIndex, keys::CertExpiry(t, rec.expires_at_ms, rec.serial), rec.device_id);
    } else {
      b->Delete(Family::kIndex, keys::CertExpiry(t, rec.expires_at_ms, rec.serial));
    }
  }
}

absl::Status Registry::RevokeCert(const TenantId& t, std::string_view serial, int64_t now_ms, WriteBatch* b) {
  fb::CertificateT c;
  absl::Status s = GetCert(t, serial, &c);
  if (absl::IsNotFound(s)) {
    c.serial.assign(serial);
  } else if (!s.ok()) {
    return s;
  }
  if (c.revoked_at_ms != 0) return absl::OkStatus();  // once
  c.revoked_at_ms = now_ms;
  StoreCert(t, c, b);
  LogCert(t, "revoked", c, now_ms, b);
  return absl::OkStatus();
}

absl::Status Registry::ForEachRevoked(const std::function<void(std::string_view, const fb::CertificateT&)>& fn,
                                      const TenantId* only) {
  absl::Status err = absl::OkStatus();
  absl::Status s = kv_->ScanPrefix(Family::kCerts, only ? keys::TenantPrefix(*only) : std::string(),
                                   [&](std::string_view k, std::string_view v) {
                                     std::string tenant;
                                     KeyReader r(k);
                                     fb::CertificateT c;
                                     if (!r.Str(&tenant)) {
                                       err = CorruptRecord(Family::kCerts, k, "bad key");
                                       return false;
                                     }
                                     err = DecodeRecord<fb::Certificate>(Family::kCerts, k, v, &c);
                                     if (!err.ok()) return false;
                                     if (c.revoked_at_ms != 0) fn(tenant, c);
                                     return true;
                                   });
  return s.ok() ? err : s;
}
absl::Status Registry::GetCert(const TenantId& t, std::string_view serial, fb::CertificateT* out) {
  return ReadRecord<fb::Certificate>(*kv_, Family::kCerts, keys::Cert(t, serial), out);
}
absl::Status Registry::CertsOfDevice(const TenantId& t, std::string_view device_id,
                                     std::vector<fb::CertificateT>* out) {
  out->clear();
  std::string prefix = keys::CertByDevicePrefix(t, device_id);
  absl::Status err = absl::OkStatus();
  absl::Status s = kv_->ScanPrefix(Family::kIndex, prefix, [&](std::string_view k, std::string_view) {
    std::string serial;
    KeyReader r(k.substr(prefix.size()));
    if (!r.Str(&serial)) {
      err = CorruptRecord(Family::kIndex, k, "certificate index entry without a serial");
      return false;
    }
    fb::CertificateT c;
    err = GetCert(t, serial, &c);
    if (!err.ok()) return false;
    out->push_back(std::move(c));
    return true;
  });
  return s.ok() ? err : s;
}

void Registry::PutJob(const TenantId& t, const fb::JobT& rec, WriteBatch* b) {
  b->Put(Family::kJobs, keys::Job(t, rec.job_id), EncodeRecord<fb::Job>(rec));
}
absl::Status Registry::GetJob(const TenantId& t, std::string_view id, fb::JobT* out) {
  return ReadRecord<fb::Job>(*kv_, Family::kJobs, keys::Job(t, id), out);
}
absl::Status Registry::ListJobs(const TenantId& t, std::string_view cursor, size_t limit, Page<fb::JobT>* out) {
  return ListRecords<fb::Job>(*kv_, Family::kJobs, keys::TenantPrefix(t), cursor.empty() ? "" : keys::Job(t, cursor),
                              limit, out, [](const fb::JobT& r) { return r.job_id; });
}
absl::Status Registry::ForEachJob(const std::function<void(const TenantId& t, fb::JobT&& job)>& fn) {
  absl::Status err = absl::OkStatus();
  absl::Status s = kv_->Scan(Family::kJobs, "", "", [&](std::string_view k, std::string_view v) {
    std::string tenant;
    KeyReader r(k);
    fb::JobT rec;
    if (!r.Str(&tenant)) {
      err = CorruptRecord(Family::kJobs, k, "key without a tenant");
      return false;
    }
    err = DecodeRecord<fb::Job>(Family::kJobs, k, v, &rec);
    if (!err.ok()) return false;
    fn(TenantId::FromAuthenticated(tenant), std::move(rec));
    return true;
  });
  return s.ok() ? err : s;
}
absl::Status Registry::GetJobDevice(const TenantId& t, std::string_view job_id, std::string_view device_id,
                                    fb::JobDeviceT* out) {
  return ReadRecord<fb::JobDevice>(*kv_, Family::kJobDevices, keys::JobDevice(t, job_id, device_id), out);
}
void Registry::PutJobDevice(const TenantId& t, std::string_view job_id, const fb::JobDeviceT& rec, WriteBatch* b) {
  b->Put(Family::kJobDevices, keys::JobDevice(t, job_id, rec.device_id), EncodeRecord<fb::JobDevice>(rec));
}
absl::Status Registry::ListJobDevices(const TenantId& t, std::string_view job_id, std::string_view cursor, size_t limit,
                                      Page<fb::JobDeviceT>* out) {
  return ListRecords<fb::JobDevice>(*kv_, Family::kJobDevices, keys::JobDevicePrefix(t, job_id),
                                    cursor.empty() ? "" : keys::JobDevice(t, job_id, cursor), limit, out,
                                    [](const fb::JobDeviceT& r) { return r.device_id; });
}

std::string Registry::AuditHash(const std::string& prev_hash, const fb::AuditEntryT& e) {
  std::string in;
  AppendField(&in, prev_hash);
  AppendField(&in, std::to_string(e.seq));
  AppendField(&in, std::to_string(e.time_ms));
  AppendField(&in, e.actor);
  AppendField(&in, e.action);
  AppendField(&in, e.device_id);
  AppendField(&in, e.details_json);
  AppendField(&in, e.result);
  unsigned char out[32];
  mbedtls_sha256_ret(reinterpret_cast<const unsigned char*>(in.data()), in.size(), out, 0);
  return std::string(reinterpret_cast<char*>(out), 32);
}

absl::Status Registry::LoadAuditHead(const TenantId& t, AuditHeadState** out) {
  auto it = audit_heads_.find(t.str());
  if (it != audit_heads_.end()) {
    *out = &it->second;
    return absl::OkStatus();
  }
  AuditHeadState head;
  absl::StatusOr<std::string> v = kv_->Get(Family::kMeta, keys::AuditHead(t));
  if (v.ok()) {
    KeyReader r(*v);
    if (!r.U64(&head.seq) || v->size() != 8 + 32) {
      return CorruptRecord(Family::kMeta, keys::AuditHead(t), "bad audit head");
    }
    head.hash = v->substr(8);
  } else if (!absl::IsNotFound(v.status())) {
    return v.status();
  }
  *out = &(audit_heads_[t.str()] = std::move(head));
  return absl::OkStatus();
}

absl::Status Registry::AppendAudit(const TenantId& t, fb::AuditEntryT entry, WriteBatch* b) {
  AuditHeadState* head;
  absl::Status s = LoadAuditHead(t, &head);
  if (!s.ok()) return s;
  entry.seq = head->seq + 1;
  entry.prev_hash.assign(head->hash.begin(), head->hash.end());
  std::string hash = AuditHash(head->hash, entry);
  entry.hash.assign(hash.begin(), hash.end());
  b->Put(Family::kAudit, keys::Audit(t, entry.seq), EncodeRecord<fb::AuditEntry>(entry));
  if (!entry.device_id.empty()) b->Put(Family::kIndex, keys::AuditByDevice(t, entry.device_id, entry.seq), "");
  b->Put(Family::kIndex, keys::AuditByTime(t, entry.time_ms, entry.seq), "");
  b->Put(Family::kMeta, keys::AuditHead(t), KeyBuilder().U64(entry.seq).key() + hash);
  head->seq = entry.seq;
  head->hash = hash;
  return absl::OkStatus();
}

absl::Status Registry::AuditOfDevice(const TenantId& t, std::string_view device_id, std::string_view cursor_in,
                                     size_t limit, Page<fb::AuditEntryT>* out) {
  const std::string cursor(cursor_in);  // may alias out->next_cursor
  out->items.clear();
  out->next_cursor.clear();
  uint64_t after = 0;
  if (!cursor.empty()) std::from_chars(cursor.data(), cursor.data() + cursor.size(), after);
  std::string prefix = keys::AuditByDevicePrefix(t, device_id);
  std::string start = cursor.empty() ? prefix : After(keys::AuditByDevice(t, device_id, after));
  absl::Status err = absl::OkStatus();
  bool more = false;
  absl::Status s = kv_->Scan(Family::kIndex, start, PrefixEnd(prefix), [&](std::string_view k, std::string_view) {
    if (out->items.size() == limit) {
      more = true;
      return false;
    }
    uint64_t seq;
    KeyReader r(k.substr(prefix.size()));
    if (!r.U64(&seq)) {
      err = CorruptRecord(Family::kIndex, k, "audit index entry without a seq");
      return false;
    }
    fb::AuditEntryT e;
    err = ReadRecord<fb::AuditEntry>(*kv_, Family::kAudit, keys::Audit(t, seq), &e);
    if (!err.ok()) return false;
    out->items.push_back(std::move(e));
    return true;
  });
  if (!s.ok()) return s;
  if (!err.ok()) return err;
  if (more) out->next_cursor = std::to_string(out->items.back().seq);
  return absl::OkStatus();
}

absl::Status Registry::AuditInRange(const TenantId& t, int64_t from_ms, int64_t to_ms, std::string_view cursor_in,
                                    size_t limit, Page<fb::AuditEntryT>* out) {
  const std::string cursor(cursor_in);  // may alias out->next_cursor
  out->items.clear();
  out->next_cursor.clear();
  std::string start = keys::AuditByTimeStart(t, from_ms);
  if (!cursor.empty()) {
    // cursor = "<time_ms>:<seq>" of the last entry returned.
    size_t colon = cursor.find(':');
    int64_t ct = 0;
    uint64_t cs = 0;
    if (colon == std::string_view::npos) return absl::InvalidArgumentError("bad audit cursor");
    std::from_chars(cursor.data(), cursor.data() + colon, ct);
    std::from_chars(cursor.data() + colon + 1, cursor.data() + cursor.size(), cs);
    start = After(keys::AuditByTime(t, ct, cs));
  }
  to_ms = std::min<int64_t>(to_ms, INT64_MAX - 1);               // "until the end" without overflow
  std::string limit_key = keys::AuditByTimeStart(t, to_ms + 1);  // to_ms inclusive
  std::string prefix = keys::AuditByTimeStart(t, 0).substr(0, keys::AuditByTimeStart(t, 0).size() - 8);
  absl::Status err = absl::OkStatus();
  bool more = false;
  absl::Status s = kv_->Scan(Family::kIndex, start, limit_key, [&](std::string_view k, std::string_view) {
    if (out->items.size() == limit) {
      more = true;
      return false;
    }
    int64_t tm;
    uint64_t seq;
    KeyReader r(k.substr(prefix.size()));
    if (!r.I64(&tm) || !r.U64(&seq)) {
      err = CorruptRecord(Family::kIndex, k, "bad audit time index entry");
      return false;
    }
    fb::AuditEntryT e;
    err = ReadRecord<fb::AuditEntry>(*kv_, Family::kAudit, keys::Audit(t, seq), &e);
    if (!err.ok()) return false;
    out->items.push_back(std::move(e));
    return true;
  });
  if (!s.ok()) return s;
  if (!err.ok()) return err;
  if (more) out->next_cursor = std::to_string(out->items.back().time_ms) + ":" + std::to_string(out->items.back().seq);
  return absl::OkStatus();
}

absl::Status Registry::VerifyAudit(const TenantId& t, uint64_t* entries) {
  *entries = 0;
  std::string prev;
  uint64_t expect = 1;
  absl::Status err = absl::OkStatus();
  absl::Status s = kv_->ScanPrefix(Family::kAudit, keys::AuditPrefix(t), [&](std::string_view k, std::string_view v) {
    fb::AuditEntryT e;
    err = DecodeRecord<fb::AuditEntry>(Family::kAudit, k, v, &e);
    if (!err.ok()) return false;
    std::string stored_prev(e.prev_hash.begin(), e.prev_hash.end());
    std::string stored_hash(e.hash.begin(), e.hash.end());
    if (e.seq != expect || stored_prev != prev || AuditHash(prev, e) != stored_hash) {
      err = absl::DataLossError("audit chain broken at entry " + std::to_string(expect) + " (found seq " +
                                std::to_string(e.seq) + ")");
      return false;
    }
    prev = stored_hash;
    ++expect;
    ++*entries;
    return true;
  });
  if (!s.ok()) return s;
  if (!err.ok()) return err;
  AuditHeadState* head;
  audit_heads_.erase(t.str());
  s = LoadAuditHead(t, &head);
  if (!s.ok()) return s;
  if (head->seq != *entries || head->hash != prev) {
    return absl::DataLossError("audit chain head says " + std::to_string(head->seq) + " entries, found " +
                               std::to_string(*entries));
  }
  return absl::OkStatus();
}

}  // namespace fmq::storage
