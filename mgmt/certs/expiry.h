// Certificate expiry (doc/certificate-profile.md, "Expiry"): every
// certificate the tenant CA issued and nobody revoked sits in an index by
// expiry (storage/keys.h CertExpiry, kept by Registry::PutCert). A notice
// goes out `notice_days` before each expiry — an audit entry of the device
// (action cert.expiring) and an event on the tenant's
// $SYS/fleetmq/events/v1/certs/expiring — driven by deadlines, not by a scan
// of the fleet: per tenant, a stored cursor says up to which expiry notices
// were sent, and a heap holds each tenant's next due time. A certificate
// issued inside the notice window already (short-lived) is noticed at once.
// Management thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <queue>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "mgmt/runtime/feature.h"
#include "storage/registry.h"

namespace fmq::certs {

using Json = nlohmann::json;

struct Options {
  int64_t notice_ms = 30 * 86'400'000LL;  // notices this long before expiry
  size_t notices_per_turn = 1000;         // per management turn (the rest next turn)
};

class ExpiryFeature : public mgmt::Feature {
 public:
  ExpiryFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, const Options& o = {});

  std::string_view name() const override { return "certs"; }
  // Fills the index once for certificates stored before it existed, then
  // loads each tenant's next due time.
  absl::Status Recover() override;
  int64_t Pump() override;
  absl::Status Commit(mgmt::Output* out) override;
  void Counters(const std::function<void(const char*, uint64_t)>& pub) const override;

  // Told of every notice as it is made (automatic renewal), in Pump.
  using NoticeFn = std::function<void(const std::string& tenant, const std::string& serial, const std::string& device,
                                      int64_t expires_ms)>;
  void SetNoticeListener(NoticeFn fn) { listener_ = std::move(fn); }

  // A certificate was issued (after its batch committed).
  void OnIssued(const std::string& tenant, const std::string& serial, const std::string& device_id, int64_t expires_ms);

  // cert.expiring: certificates not revoked expiring in [now, now + within_ms),
  // soonest first, from `cursor` (an opaque key position), at most `limit`.
  struct Entry {
    std::string serial, device_id;
    int64_t expires_at_ms = 0;
  };
  absl::Status Expiring(const storage::TenantId& t, int64_t within_ms, const std::string& cursor, size_t limit,
                        std::vector<Entry>* out, std::string* next_cursor);
  // The expiry histogram: certificates expiring in each of the next `weeks`
  // weeks (and how many already expired, not revoked).
  absl::Status Histogram(const storage::TenantId& t, int weeks, std::vector<uint64_t>* per_week, uint64_t* expired);

 private:
  void Due(const std::string& tenant, int64_t at);
  void Notice(const std::string& tenant, const std::string& serial, const std::string& device, int64_t expires,
              int64_t now);
  // Notices for the tenant's certificates expiring up to now + notice (what
  // the turn's budget leaves is due again at once).
  void Notify(const std::string& tenant, int64_t now);
  int64_t Cursor(const storage::TenantId& t);

  storage::KvStore* kv_;
  storage::Registry* reg_;
  const Clock* clock_;
  Options opts_;
  using Item = std::pair<int64_t, std::string>;  // (due wall ms, tenant)
  struct Issued {
    std::string tenant, serial, device;
    int64_t expires;
  };
  std::vector<Issued> immediate_;  // issued inside the notice window: noticed at the next turn
  std::priority_queue<Item, std::vector<Item>, std::greater<>> due_;
  storage::WriteBatch batch_;
  std::vector<std::string> audited_;  // tenants with an audit entry in the batch
  mgmt::Output pending_;
  size_t budget_ = 0;
  NoticeFn listener_;
  struct Stats {
    uint64_t notices = 0, commits_failed = 0, backfilled = 0;
  } stats_;
};

}  // namespace fmq::certs
