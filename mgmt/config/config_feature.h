// Remote configuration (doc/configuration-management.md): versioned
// documents per model, group and device; each device's effective document
// is their merge, and the feature reconciles what a device should have
// (derived from those documents: nothing is written per device when a
// group changes) with what it reported it applied. It sends the difference
// (a merge patch, or the whole document when that is smaller) when the
// device subscribes to its channel, when its own document or membership
// changes, and when a configuration job (the job engine's "config" type,
// for group and model changes) starts its execution; it settles those
// executions from the device's acknowledgements.
//
// Runs on the management thread only (admin::Service owns it), like the job
// engine; Validate runs on any worker thread.
#pragma once

#include <cstdint>
#include <deque>
#include <memory>
#include <queue>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/string_map.h"
#include "mgmt/config/document.h"
#include "mgmt/jobs/job_engine.h"
#include "mgmt/runtime/feature.h"
#include "storage/registry.h"

namespace fmq::config {

using storage::ConfigKind;

struct Options {
  DocLimits limits;
  size_t history = 100;             // versions kept per target (older ones are deleted)
  int64_t ack_timeout_ms = 60'000;  // a device's APPLIED/REJECTED after a send, else TIMED_OUT
  size_t cache_entries = 4096;      // effective documents, applied documents and diffs kept in memory
  bool audit_applied = true;        // an audit entry per APPLIED answer (refusals are always audited)
};

// "NONE", "PENDING", ... as operators see them.
std::string_view StateName(fb::ConfigState s);
std::string_view KindName(ConfigKind k);  // "device", "group", "model"

// What a device should have now.
struct Desired {
  uint64_t version = 0;  // the greatest revision among its inputs
  std::shared_ptr<const struct Effective> doc;
  Json inputs = Json::array();  // [{"kind","id","version"}] in merge order
};
struct Effective {
  Json doc;
  std::string canonical, hash;
};

class ConfigFeature : public mgmt::Feature, public jobs::TypeHandler {
 public:
  ConfigFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, jobs::JobEngine* engine,
                const Options& opts = {});
  ~ConfigFeature() override;

  // --- The feature (mgmt/runtime/feature.h).
  std::string_view name() const override { return "config"; }
  std::vector<std::string> DeviceTopics() const override { return {"config/report", "config/get"}; }
  std::string Validate(std::string_view topic, const Json& body) const override;
  void OnDeviceMessage(const mgmt::DeviceMessage& m) override;
  void OnDisconnected(const std::string& tenant, const std::string& device_id) override;
  void OnSubscribed(const std::string& tenant, const std::string& device_id) override;
  void OnOutcome(uint64_t token, bool acked, std::string_view why) override;
  void OnDeviceJoined(const storage::TenantId& t, const fb::DeviceT& d) override;
  void OnDeviceRetired(const storage::TenantId& t, const std::string& device_id) override;
  int64_t Pump() override;
  absl::Status Commit(mgmt::Output* out) override;
  void Counters(const std::function<void(const char*, uint64_t)>& pub) const override;

  // --- The "config" job type (jobs::TypeHandler).
  Started OnStart(const Exec& e) override;
  void OnEnded(const Exec& e, jobs::ExecState to) override;
  bool engine_audits() const override { return false; }  // config.applied / config.rejected entries instead

  // --- Commands (mgmt/admin/config_commands.cc). Writes go to the command's
  // batch; `Forget`/`Reconcile` once it committed.
  const Options& options() const { return opts_; }
  struct Change {
    uint64_t version = 0, rev = 0;
    Json doc, patch;  // the new whole document, and the change from the previous one
    std::string hash;
  };
  // A new version of a target's document (validated, history bounded). The
  // caller updates the target's head (group or model record, or the
  // device's override through SetOverride) in the same batch.
  absl::StatusOr<Change> NewVersion(const storage::TenantId& t, ConfigKind kind, const std::string& target,
                                    const Json& current, uint64_t current_version, const Json& next,
                                    const std::string& author, storage::WriteBatch* b);
  // The device's override document head (and its revision) in `b`.
  absl::Status SetOverride(const storage::TenantId& t, const std::string& device, const Change& c,
                           storage::WriteBatch* b);
  // The latest version of a device's own document ({} and 0 when none).
  absl::Status OverrideOf(const storage::TenantId& t, const std::string& device, Json* doc, uint64_t* version);
  // A replaced device's own document goes to its successor (in `b`).
  absl::Status CarryOver(const storage::TenantId& t, const std::string& from, const std::string& to,
                         const std::string& author, storage::WriteBatch* b);
  // The tenant's next configuration revision (cached; written into `b`).
  uint64_t NextRev(const storage::TenantId& t, storage::WriteBatch* b);
  // After a committed change: cached heads dropped; the device (or nothing) reconciled now.
  void Forget(const storage::TenantId& t, ConfigKind kind, const std::string& target);
  void ReconcileNow(const storage::TenantId& t, const std::string& device, bool full);
  // What a device should have, and its stored state (NONE when never seen).
  absl::Status DesiredOf(const storage::TenantId& t, const fb::DeviceT& d, const fb::DeviceConfigT& dc, Desired* out);
  absl::Status StateOf(const storage::TenantId& t, const std::string& device, fb::DeviceConfigT* out);
  // The state shown: APPLIED/REJECTED/TIMED_OUT when they are about the
  // desired version, else DELIVERED/PENDING (a desired version above the applied one).
  // NONE: nothing was ever desired ({} at version 0 and never anything else).
  static fb::ConfigState Shown(const fb::DeviceConfigT& dc, const Desired& desired);
  // An applied document by its hash ({} for the empty hash).
  absl::StatusOr<std::shared_ptr<const Effective>> Blob(const storage::TenantId& t, const std::string& hash);

  struct Stats {
    uint64_t sends = 0, patches = 0, full = 0;
    uint64_t applied = 0, rejected = 0;
    uint64_t reports_refused = 0;  // unknown or stale version, hash mismatch
    uint64_t drift_repairs = 0;    // full documents sent after a hash mismatch
    uint64_t timed_out = 0;
    uint64_t commits_failed = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  struct Waiter {
    std::string job_id;
    uint64_t need = 0;  // settled by an APPLIED/REJECTED of at least this version
  };
  // A device the feature is talking to (subscribed, or awaited by a job).
  struct Live {
    bool subscribed = false;
    uint64_t sent = 0;       // version in flight (0: none)
    uint64_t delivered = 0;  // the version the device acknowledged with PUBACK
    std::string sent_hash;
    uint64_t token = 0;
    uint64_t repaired = 0;  // the version a whole document was sent again for (drift repair)
    std::vector<Waiter> waiters;
    // The device's state while a send is in flight, so its answer needs no
    // read (every write of the state goes through Put or SetOverride, which
    // keep it current).
    std::unique_ptr<fb::DeviceConfigT> state;
  };
  enum class Result : uint8_t { kInSync, kRejected, kSent, kWaiting, kGone };
  struct Outcome {
    Result result = Result::kGone;
    uint64_t version = 0;
    std::string reason;
  };
  struct Due {
    int64_t at;
    std::string tenant, device;
    uint64_t version;
    bool operator>(const Due& o) const { return at > o.at; }
  };
  struct Head {
    uint64_t version = 0, rev = 0;
    int32_t priority = 0;
    std::string id;
    Json doc;
    bool exists = false;
  };

  Live& LiveOf(const std::string& tenant, const std::string& device);
  Live* FindLive(const std::string& tenant, const std::string& device);
  void DropLiveIfIdle(const std::string& tenant, const std::string& device);
  Outcome Reconcile(const std::string& tenant, const std::string& device, bool full);
  void Send(const std::string& tenant, const std::string& device, Live& l, const fb::DeviceConfigT& dc,
            const Desired& want, bool full);
  // The device holds `version` with `hash` (reported, or the same document found in sync).
  static void MarkApplied(fb::DeviceConfigT* dc, uint64_t version, const std::string& hash, const char* reason);
  void Settle(const std::string& tenant, const std::string& device, uint64_t version, jobs::ExecState to,
              const std::string& detail);
  void OnReport(const mgmt::DeviceMessage& m);
  void Reply(const std::string& tenant, const std::string& device, std::string_view suffix, const Json& body);
  void Audit(const storage::TenantId& t, const std::string& device, const char* action, Json details);
  // A device's state: changed in this turn (not yet written), else stored.
  bool Lookup(const std::string& tenant, const std::string& device, fb::DeviceConfigT* out);
  void Put(const std::string& tenant, fb::DeviceConfigT rec);
  // DELIVERED states due to be written (PUBACKed a second ago, no answer yet).
  void WriteDelivered(int64_t now);
  absl::StatusOr<std::shared_ptr<const Head>> HeadOf(const storage::TenantId& t, ConfigKind kind,
                                                     const std::string& id);
  absl::StatusOr<std::shared_ptr<const Effective>> Merge(const std::string& key, const std::vector<const Json*>& docs);
  std::string DiffText(const Effective& from, const Effective& to);

  storage::KvStore* kv_;
  storage::Registry* reg_;
  const Clock* clock_;
  jobs::JobEngine* engine_;
  Options opts_;
  StringMap<StringMap<Live>> live_;                                            // tenant → device
  absl::flat_hash_map<uint64_t, std::pair<std::string, std::string>> tokens_;  // → (tenant, device)
  uint64_t next_token_ = 1;
  std::priority_queue<Due, std::vector<Due>, std::greater<Due>> timeouts_, resends_;
  StringMap<uint64_t> revs_;                            // tenant → last revision handed out
  StringMap<std::shared_ptr<const Head>> heads_;        // tenant \0 kind id → group/model document head
  StringMap<std::shared_ptr<const Effective>> merged_;  // merge inputs → effective document
  StringMap<std::shared_ptr<const Effective>> blobs_;   // tenant \0 hash → applied document
  StringMap<std::string> diffs_;                        // from hash \0 to hash → merge patch text
  absl::flat_hash_set<std::string> stored_blobs_;       // tenant \0 hash known to be stored
  struct Unsynced {
    std::string tenant;
    fb::DeviceConfigT rec;
  };
  StringMap<Unsynced> unsynced_;  // tenant \0 device: written at the next Commit
  std::deque<Due> delivered_;     // PUBACKs by time, for WriteDelivered
  storage::WriteBatch batch_;
  std::vector<std::pair<std::string, fb::AuditEntryT>> audits_;  // (tenant, entry): appended to the chain at Commit
  mgmt::Output pending_;
  std::vector<std::string> touched_tenants_;
  Stats stats_;
};

}  // namespace fmq::config
