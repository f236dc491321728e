#include "mgmt/certs/expiry.h"

#include <algorithm>

#include "common/log.h"
#include "common/mgmt_topics.h"
#include "storage/keys.h"

namespace fmq::certs {
namespace {

using storage::Family;
using storage::KeyBuilder;
using storage::KeyReader;
using storage::TenantId;
namespace keys = storage::keys;

constexpr int64_t kDay = 86'400'000;
constexpr char kIndexedFlag[] = "cert.exp.indexed";  // Family::kMeta, store-wide: the index was filled

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

// (expiry, serial) of an index key of `t`.
bool ParseIndex(std::string_view key, int64_t* expires, std::string* serial) {
  KeyReader r(key);
  std::string tenant, kind;
  return r.Str(&tenant) && r.Str(&kind) && r.I64(expires) && r.Str(serial) && r.done();
}

}  // namespace

ExpiryFeature::ExpiryFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, const Options& o)
    : kv_(kv), reg_(reg), clock_(clock), opts_(o) {}

int64_t ExpiryFeature::Cursor(const TenantId& t) {
  auto v = kv_->Get(Family::kMeta, keys::CertNoticeCursor(t));
  int64_t c = 0;
  if (v.ok() && !KeyReader(*v).I64(&c)) c = 0;  // damaged: notices again rather than never
  return c;
}

absl::Status ExpiryFeature::Recover() {
  if (absl::IsNotFound(kv_->Get(Family::kMeta, kIndexedFlag).status())) {
    // Certificates stored before the index: indexed once.
    storage::WriteBatch b;
    absl::Status s = kv_->ScanPrefix(Family::kCerts, "", [&](std::string_view k, std::string_view v) {
      KeyReader r(k);
      std::string tenant;
      fb::CertificateT c;
      if (!r.Str(&tenant) || !storage::DecodeRecord<fb::Certificate>(Family::kCerts, k, v, &c).ok())
        return true;  // skipped, logged
      if (c.revoked_at_ms == 0 && c.expires_at_ms > 0) {
        b.Put(Family::kIndex, keys::CertExpiry(TenantId::FromAuthenticated(tenant), c.expires_at_ms, c.serial),
              c.device_id);
        stats_.backfilled++;
      }
      return true;
    });
    if (!s.ok()) return s;
    b.Put(Family::kMeta, kIndexedFlag, "1");
    if (absl::Status w = kv_->Write(b, true); !w.ok()) return w;
    if (stats_.backfilled)
      FMQ_LOG_INFO("certificate expiry index: %llu certificates indexed",
                   static_cast<unsigned long long>(stats_.backfilled));
  }
  std::string cursor;
  while (true) {
    storage::Page<fb::TenantT> page;
    if (absl::Status s = reg_->ListTenants(cursor, 1000, &page); !s.ok()) return s;
    for (const fb::TenantT& t : page.items) Due(t.tenant_id, 0);  // its first notice time found at the first turn
    if (page.next_cursor.empty()) break;
    cursor = page.next_cursor;
  }
  return absl::OkStatus();
}

void ExpiryFeature::Due(const std::string& tenant, int64_t at) { due_.emplace(at, tenant); }

void ExpiryFeature::OnIssued(const std::string& tenant, const std::string& serial, const std::string& device_id,
                             int64_t expires_ms) {
  // Inside the window already: noticed at the next turn on its own (the
  // cursor may be past its expiry); else when its notice is due (the cursor
  // never passes now + notice, so the scan then finds it).
  if (expires_ms - opts_.notice_ms <= clock_->WallMs()) {
    immediate_.push_back({tenant, serial, device_id, expires_ms});
  } else {
    Due(tenant, expires_ms - opts_.notice_ms);
  }
}

void ExpiryFeature::Notice(const std::string& tenant, const std::string& serial, const std::string& device,
                           int64_t expires, int64_t now) {
  const TenantId t = TenantId::FromAuthenticated(tenant);
  Json ev{{"serial", serial},
          {"device_id", device},
          {"expires_at_ms", expires},
          {"days_left", (expires - now) / kDay},
          {"expired", expires <= now}};
  fb::AuditEntryT a;
  a.time_ms = now;
  a.actor = "broker";
  a.action = "cert.expiring";
  a.device_id = device;
  a.details_json = Dump(ev);
  a.result = "ok";
  if (reg_->AppendAudit(t, std::move(a), &batch_).ok()) audited_.push_back(tenant);
  pending_.events.push_back(mgmt::Event{tenant, std::string(topics::kCertEventsExpiring), Dump(ev), false});
  stats_.notices++;
  if (listener_) listener_(tenant, serial, device, expires);
}

void ExpiryFeature::Notify(const std::string& tenant, int64_t now) {
  const TenantId t = TenantId::FromAuthenticated(tenant);
  const int64_t cursor = Cursor(t), until = now + opts_.notice_ms;
  int64_t reached = cursor;
  bool done = true;
  // Entries with expiry in (cursor, until]; the first one after `until`
  // sets the next due time.
  int64_t next = INT64_MAX;
  struct Hit {
    int64_t expires;
    std::string serial, device;
  };
  std::vector<Hit> hits;
  absl::Status s = kv_->Scan(Family::kIndex, keys::CertExpiryFrom(t, cursor + 1), keys::CertExpiryFrom(t, INT64_MAX),
                             [&](std::string_view k, std::string_view v) {
                               int64_t exp = 0;
                               std::string serial;
                               if (!ParseIndex(k, &exp, &serial)) return true;
                               if (exp > until) {
                                 next = exp - opts_.notice_ms;
                                 return false;
                               }
                               // Out of budget: stop, but never inside one expiry (the cursor is an
                               // expiry, so the rest of its certificates would be skipped).
                               if (budget_ == 0 && (hits.empty() || hits.back().expires != exp)) {
                                 done = false;
                                 return false;
                               }
                               if (budget_ > 0) --budget_;
                               hits.push_back({exp, std::move(serial), std::string(v)});
                               return true;
                             });
  if (!s.ok()) {
    FMQ_LOG_ERROR("certificate expiry index of tenant '%s' not read: %s", tenant.c_str(),
                  std::string(s.message()).c_str());
    Due(tenant, now + 60'000);
    return;
  }
  for (Hit& h : hits) {
    reached = std::max(reached, h.expires);
    Notice(tenant, h.serial, h.device, h.expires, now);
  }
  if (reached != cursor) batch_.Put(Family::kMeta, keys::CertNoticeCursor(t), KeyBuilder().I64(reached).Take());
  if (!done) {
    Due(tenant, now);  // the rest next turn
  } else if (next != INT64_MAX) {
    Due(tenant, std::max(next, now + 1));
  }
}

int64_t ExpiryFeature::Pump() {
  const int64_t now = clock_->WallMs();
  budget_ = opts_.notices_per_turn;
  for (const Issued& i : immediate_) {
    const TenantId t = TenantId::FromAuthenticated(i.tenant);
    if (!kv_->Get(Family::kIndex, keys::CertExpiry(t, i.expires, i.serial)).ok()) continue;  // revoked since
    if (i.expires <= Cursor(t)) {
      Notice(i.tenant, i.serial, i.device, i.expires, now);  // behind the cursor: the scan would not see it
    } else {
      Due(i.tenant, now);  // the scan finds it
    }
  }
  immediate_.clear();
  std::vector<std::string> seen;
  while (!due_.empty() && due_.top().first <= now && budget_ > 0) {
    std::string tenant = due_.top().second;
    due_.pop();
    if (std::find(seen.begin(), seen.end(), tenant) != seen.end()) continue;  // once per turn
    seen.push_back(tenant);
    Notify(tenant, now);
  }
  return due_.empty() ? INT64_MAX : std::max(due_.top().first, now + 1);
}

absl::Status ExpiryFeature::Commit(mgmt::Output* out) {
  absl::Status s = absl::OkStatus();
  if (!batch_.empty()) {
    s = reg_->Commit(batch_, true);
    batch_.Clear();
  }
  if (!s.ok()) {
    stats_.commits_failed++;
    for (const std::string& t : audited_) {
      reg_->ForgetAuditHead(TenantId::FromAuthenticated(t));
      Due(t, clock_->WallMs() + 1000);  // the cursor did not move: again
    }
    audited_.clear();
    pending_ = mgmt::Output{};
    FMQ_LOG_ERROR("certificate expiry notices not written (%s)", std::string(s.message()).c_str());
    return s;
  }
  audited_.clear();
  for (auto& e : pending_.events) out->events.push_back(std::move(e));
  pending_ = mgmt::Output{};
  return s;
}

void ExpiryFeature::Counters(const std::function<void(const char*, uint64_t)>& pub) const {
  pub("certs/expiry_notices", stats_.notices);
  pub("certs/commits_failed", stats_.commits_failed);
}

absl::Status ExpiryFeature::Expiring(const TenantId& t, int64_t within_ms, const std::string& cursor, size_t limit,
                                     std::vector<Entry>* out, std::string* next_cursor) {
  const int64_t now = clock_->WallMs();
  std::string start = cursor.empty() ? keys::CertExpiryFrom(t, now) : cursor;
  if (!cursor.empty() && start.compare(0, keys::CertExpiryPrefix(t).size(), keys::CertExpiryPrefix(t)) != 0) {
    return absl::InvalidArgumentError("cursor is not one of this listing's");
  }
  next_cursor->clear();
  return kv_->Scan(Family::kIndex, start, keys::CertExpiryFrom(t, now + within_ms),
                   [&](std::string_view k, std::string_view v) {
                     Entry e;
                     if (!ParseIndex(k, &e.expires_at_ms, &e.serial)) return true;
                     if (out->size() == limit) {
                       *next_cursor = std::string(k);
                       return false;
                     }
                     e.device_id = std::string(v);
                     out->push_back(std::move(e));
                     return true;
                   });
}

absl::Status ExpiryFeature::Histogram(const TenantId& t, int weeks, std::vector<uint64_t>* per_week,
                                      uint64_t* expired) {
  const int64_t now = clock_->WallMs();
  per_week->assign(static_cast<size_t>(weeks), 0);
  *expired = 0;
  return kv_->Scan(Family::kIndex, keys::CertExpiryPrefix(t), keys::CertExpiryFrom(t, now + weeks * 7 * kDay),
                   [&](std::string_view k, std::string_view) {
                     int64_t exp = 0;
                     std::string serial;
                     if (!ParseIndex(k, &exp, &serial)) return true;
                     if (exp <= now) {
                       ++*expired;
                     } else {
                       (*per_week)[static_cast<size_t>((exp - now) / (7 * kDay))]++;
                     }
                     return true;
                   });
}

}  // namespace fmq::certs
