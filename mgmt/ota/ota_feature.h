// Firmware over the air (doc/ota.md): artifacts uploaded in chunks over the
// control plane, stored per tenant by content hash with a manifest signed
// by the tenant's firmware signer; campaigns are jobs of the one engine
// ("ota" type) that offer a device its image, follow its download, install
// and reboot through phase deadlines, and settle the execution only when
// the device comes back and reports the new version (the health-aware
// verdict). Blocks of an image are served on the worker that received the
// request (Serve), straight from the store, within a per-tenant and a
// per-device byte budget; everything else runs on the management thread.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/string_map.h"
#include "mgmt/jobs/job_engine.h"
#include "mgmt/pki/pki.h"
#include "mgmt/pki/pki_dir.h"
#include "mgmt/runtime/feature.h"
#include "storage/registry.h"

namespace fmq::ota {

using mgmt::Json;

struct Options {
  uint64_t max_artifact_bytes = 256ull << 20;  // an image at most (larger ones: a URL in the manifest)
  uint32_t chunk_bytes = 64 * 1024;            // stored chunk and upload chunk size
  uint32_t max_block_bytes = 64 * 1024;        // a device's block request at most
  uint64_t tenant_bytes_per_s = 64ull << 20;   // in-band budget per tenant on this node (0 = none)
  uint64_t device_bytes_per_s = 4ull << 20;    // and per device (0 = none)
  size_t max_uploads = 8;                      // uploads in progress per tenant
  // Phase deadlines of a campaign's devices (each campaign may set its own).
  int64_t download_timeout_ms = 3'600'000;
  int64_t install_timeout_ms = 600'000;
  int64_t reboot_timeout_ms = 300'000;  // from the disconnect after "installing" to the version report
};

// An artifact as stored (fb::FirmwareT) plus the signer chain that signed it.
struct Artifact {
  fb::FirmwareT rec;
  std::string signer_chain;
};

// The manifest text signed for an artifact (canonical JSON; doc/ota.md).
std::string ManifestText(const std::string& tenant, const fb::FirmwareT& f);

class OtaFeature : public mgmt::Feature, public jobs::TypeHandler {
 public:
  // `signer`: the tenant's firmware signer (chain and key PEM), made on first use.
  using SignerFn = std::function<absl::StatusOr<pki::Signer>(const std::string& tenant)>;
  OtaFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, jobs::JobEngine* engine, SignerFn signer,
             const Options& opts = {});
  ~OtaFeature() override;

  // --- The feature (mgmt/runtime/feature.h).
  std::string_view name() const override { return "ota"; }
  std::vector<std::string> DeviceTopics() const override { return {"ota/report", "ota/version", "ota/block"}; }
  std::string Validate(std::string_view topic, const Json& body) const override;
  // ota/block, on the worker: the bytes, or a refusal (ota/block/rejected).
  bool Serve(const mgmt::DeviceMessage& m, std::vector<mgmt::WorkerReply>* out) const override;
  void OnDeviceMessage(const mgmt::DeviceMessage& m) override;
  void OnDisconnected(const std::string& tenant, const std::string& device_id) override;
  void OnSubscribed(const std::string& tenant, const std::string& device_id) override;
  void OnOutcome(uint64_t token, bool acked, std::string_view why) override;
  void OnDeviceRetired(const storage::TenantId& t, const std::string& device_id) override;
  int64_t Pump() override;
  absl::Status Commit(mgmt::Output* out) override;
  void Counters(const std::function<void(const char*, uint64_t)>& pub) const override;

  // --- The "ota" job type.
  Started OnStart(const Exec& e) override;
  void OnEnded(const Exec& e, jobs::ExecState to) override;
  void OnResumed(const Exec& e) override;
  std::string TimeoutDetail(const Exec& e) override;
  void OnJobEnded(const std::string& tenant, const fb::JobT& job, bool rollback) override;
  bool supports_rollback() const override { return true; }
  bool cancel_in_flight_on_abort() const override { return false; }
  bool engine_audits() const override { return true; }

  // --- Artifacts (mgmt/admin/ota_commands.cc). Writes go to `b`.
  const Options& options() const { return opts_; }
  struct UploadState {
    uint64_t received = 0, size = 0;
    bool resumed = false;
  };
  absl::StatusOr<UploadState> BeginUpload(const storage::TenantId& t, const fb::FirmwareUploadT& u,
                                          storage::WriteBatch* b);
  // The next `data` at `offset` (must equal what was received).
  absl::StatusOr<UploadState> PutChunk(const storage::TenantId& t, const std::string& sha256, uint64_t offset,
                                       std::string_view data, storage::WriteBatch* b);
  // Checks the whole image against its sha256 and stores the signed
  // artifact. A mismatch discards the upload at once (written directly) and fails.
  absl::StatusOr<fb::FirmwareT> FinishUpload(const storage::TenantId& t, const std::string& sha256,
                                             const std::string& by, int64_t now_ms, storage::WriteBatch* b);
  absl::Status AbortUpload(const storage::TenantId& t, const std::string& sha256);
  absl::StatusOr<Artifact> Get(const storage::TenantId& t, const std::string& model, const std::string& version);
  // Deletes the record, and the bytes when no other artifact has them.
  absl::Status Delete(const storage::TenantId& t, const std::string& model, const std::string& version,
                      storage::WriteBatch* b);
  // Whether a job not ended offers this artifact.
  bool InUse(const std::string& tenant, const std::string& model, const std::string& version) const;
  // Everything a campaign (or rollback) job needs at creation. `rollback_of`
  // non-empty: a rollback job of that campaign — the devices it moved to a
  // new version, each back to the one it had (from kDeviceFirmware).
  absl::Status RollbackTargets(const storage::TenantId& t, const std::string& campaign,
                               std::vector<std::string>* devices);

  struct Stats {
    uint64_t offers = 0, skipped = 0, verified = 0, failed = 0, rolled_back = 0, came_back_old = 0;
    uint64_t reports_refused = 0;
    uint64_t versions = 0;          // ota/version reports
    uint64_t versions_refused = 0;  // a version never offered, during an update
    uint64_t rollback_jobs = 0;
    uint64_t commits_failed = 0;
  };
  // Worker-side counters (Serve), atomics.
  struct BlockStats {
    std::atomic<uint64_t> blocks{0}, bytes{0}, refused{0}, busy{0}, corrupt{0};
  };
  const Stats& stats() const { return stats_; }
  const BlockStats& block_stats() const { return *blocks_; }

 private:
  // A device with an OTA execution in flight.
  struct Live {
    std::string job_id;
    uint32_t attempt = 0;
    std::string target, from, sha256, phase = "offered";
    uint64_t size = 0, offset = 0, reported_offset = 0;
    int64_t reported_ms = 0;
    uint64_t token = 0;
    std::string offer;  // the ota/notify payload (sent again after a reconnect)
  };
  struct Doc {  // a campaign's document, parsed
    std::string model, version, sha256, rollback_of;
    int64_t download_ms = 0, install_ms = 0, reboot_ms = 0;
  };
  // What a worker may serve a device: one artifact at a time.
  struct Assignment {
    std::string sha256;
    uint64_t size = 0;
    uint32_t chunk_bytes = 0;
  };
  struct Bucket {
    double tokens = 0;
    int64_t last_ms = 0;
  };

  void Assign(const std::string& tenant, const std::string& device, const Assignment* a);
  void Settle(const std::string& tenant, const std::string& device, jobs::ExecState to, const Json& detail);
  void OnReport(const mgmt::DeviceMessage& m);
  void OnVersion(const mgmt::DeviceMessage& m);
  void Reply(const std::string& tenant, const std::string& device, std::string_view suffix, const Json& body);
  void Offer(const std::string& tenant, const std::string& device, Live& l);
  absl::Status WriteChunk(const storage::TenantId& t, const std::string& sha256, uint64_t index, std::string_view data,
                          storage::WriteBatch* b);
  absl::StatusOr<std::string> ReadChunk(const storage::TenantId& t, const std::string& sha256, uint64_t index) const;
  // Takes `n` bytes from a bucket at `rate` (1 s of burst); false: over budget.
  static bool Take(Bucket& b, uint64_t rate, uint64_t n, int64_t now_ms, int64_t* retry_ms);

  storage::KvStore* kv_;
  storage::Registry* reg_;
  const Clock* clock_;
  jobs::JobEngine* engine_;
  SignerFn signer_;
  Options opts_;
  StringMap<Live> live_;                               // tenant \0 device
  absl::flat_hash_map<uint64_t, std::string> tokens_;  // → tenant \0 device
  uint64_t next_token_ = 1;
  StringMap<std::shared_ptr<const Doc>> docs_;  // tenant \0 job id
  struct Hashing;
  StringMap<std::unique_ptr<Hashing>> hashing_;                 // tenant \0 sha256: the upload's running hash
  std::vector<std::pair<std::string, std::string>> rollbacks_;  // (tenant, campaign) to roll back at the next Pump
  std::vector<std::pair<std::string, fb::JobT>> created_;       // rollback jobs written in batch_: activated at Commit
  // Firmware versions reported: written at Commit onto the fresh device record.
  struct VersionChange {
    std::string tenant, device, version, job;
  };
  std::vector<VersionChange> versions_;
  storage::WriteBatch batch_;
  mgmt::Output pending_;
  Stats stats_;
  std::unique_ptr<BlockStats> blocks_;

  // Shared with the workers (Serve).
  mutable std::shared_mutex assign_mu_;
  absl::flat_hash_map<std::string, Assignment> assigned_;  // tenant \0 device
  mutable std::mutex bucket_mu_;
  mutable absl::flat_hash_map<std::string, Bucket> tenant_buckets_, device_buckets_;
};

}  // namespace fmq::ota
