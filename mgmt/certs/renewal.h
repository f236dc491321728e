// Certificate renewal over MQTT (doc/certificate-profile.md "Renewal",
// doc/device-api.md "Certificate renewal"): the "renew" job type of the one
// job engine. An execution asks the device on its channel (certs/renew);
// the device makes a new EC P-256 key and sends a CSR (certs/csr); the
// broker checks it like device.provision — for the identity of the
// connection that sent it, never one the CSR names — and returns the
// certificate and chain (certs/csr/accepted). The execution succeeds when
// the device connects with the new certificate; the old one is revoked a
// grace period later (stored, so a restart keeps it). A certificate issued
// that the device never used is revoked when its attempt ends.
//
// Automatic renewal: when a device's current certificate reaches its expiry
// notice (mgmt/certs/expiry.h), the device is enrolled in its tenant's
// "auto-renew" job (an enrolment job: one per tenant, created on first use,
// throttled by its rollout rate, never ending); an offline device is renewed
// when it next connects. Operators force renewals with cert.renew (a job of
// the same type). Management thread only.
#pragma once

#include <cstdint>
#include <functional>
#include <queue>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock.h"
#include "common/string_map.h"
#include "mgmt/jobs/job_engine.h"
#include "mgmt/pki/pki.h"
#include "mgmt/runtime/feature.h"
#include "storage/registry.h"

namespace fmq::certs {

using Json = nlohmann::json;

struct RenewalOptions {
  bool auto_renew = true;
  int64_t grace_ms = 3'600'000;           // old certificate revoked this long after the new one was used
  double auto_rate_per_s = 20;            // the auto-renew jobs' rollout rate (one ECDSA signature each)
  uint32_t auto_max_in_flight = 100;      // and their executions in flight at once
  size_t max_csr_bytes = 4096;            // a CSR (PEM) at most
  int64_t notice_ms = 30 * 86'400'000LL;  // the renewal point (the expiry notice): certificates inside it at start-up
  size_t enrol_per_turn = 1000;           // automatic enrolments per management turn
};

// A certificate the tenant CA issued from a device's CSR.
struct Issued {
  pki::Certificate cert;
  std::string chain_pem;  // tenant CA, then root
};

struct RenewalHost {
  // Issues for (tenant, device) from `csr`: the subject is the device's,
  // whatever the CSR says (a CN or O naming another is refused).
  std::function<absl::StatusOr<Issued>(const std::string& tenant, const std::string& device, std::string_view csr)>
      issue;
  // The serial of the certificate the device's live connection presented ("" if none).
  std::function<std::string(const std::string& tenant, const std::string& device)> serial_of;
  // A certificate was stored (its expiry index is written): after the commit.
  std::function<void(const std::string& tenant, const std::string& serial, const std::string& device,
                     int64_t expires_ms)>
      issued;
};

inline constexpr char kAutoRenewJob[] = "auto-renew";

class RenewalFeature : public mgmt::Feature, public jobs::TypeHandler {
 public:
  RenewalFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, jobs::JobEngine* engine,
                 RenewalHost host, const RenewalOptions& o = {});

  // --- The feature.
  std::string_view name() const override { return "renewal"; }
  std::vector<std::string> DeviceTopics() const override { return {"certs/csr"}; }
  std::string Validate(std::string_view topic, const Json& body) const override;
  absl::Status Recover() override;
  void OnConnected(const std::string& tenant, const std::string& device_id) override;
  void OnDisconnected(const std::string& tenant, const std::string& device_id) override;
  void OnSubscribed(const std::string& tenant, const std::string& device_id) override;
  void OnDeviceMessage(const mgmt::DeviceMessage& m) override;
  void OnOutcome(uint64_t token, bool acked, std::string_view why) override;
  int64_t Pump() override;
  absl::Status Commit(mgmt::Output* out) override;
  void Counters(const std::function<void(const char*, uint64_t)>& pub) const override;

  // --- The "renew" job type.
  Started OnStart(const Exec& e) override;
  void OnEnded(const Exec& e, jobs::ExecState to) override;
  void OnResumed(const Exec& e) override;
  std::string TimeoutDetail(const Exec& e) override;

  // An expiry notice (ExpiryFeature): the device is renewed automatically
  // when `serial` is still its current certificate.
  void OnNotice(const std::string& tenant, const std::string& serial, const std::string& device, int64_t expires_ms);

  struct Stats {
    uint64_t requested = 0, issued = 0, renewed = 0, old_revoked = 0, unused_revoked = 0;
    uint64_t csr_refused = 0;  // not asked for, another attempt, or a bad CSR
    uint64_t csr_invalid = 0;  // of those: the CSR itself failed the checks
    uint64_t enrolled = 0;     // automatic renewals started
    uint64_t commits_failed = 0;
  };
  const Stats& stats() const { return stats_; }

 private:
  // A device with a renewal in flight.
  struct Live {
    std::string job_id;
    uint32_t attempt = 0;
    std::string old_serial;  // the certificate being replaced
    std::string new_serial;  // issued, not yet seen in use ("" before the CSR)
    uint64_t token = 0;
    bool subscribed = false;  // to its channel, on this connection
    bool reasked = false;     // asked again on this connection already
  };
  struct Revoke {
    int64_t at;
    std::string tenant, serial, device;
    bool operator>(const Revoke& o) const { return at > o.at; }
  };
  struct Enrol {
    std::string tenant, device;
  };

  void Reply(const std::string& tenant, const std::string& device, std::string_view suffix, Json body,
             const std::string& client_token);
  void Refuse(const mgmt::DeviceMessage& m, const char* code, const std::string& msg);
  void Audit(const std::string& tenant, const std::string& device, const char* action, const Json& details);
  void RevokeNow(const std::string& tenant, const std::string& serial, const std::string& device, const char* why);
  void Used(const std::string& tenant, const std::string& device, Live& l);
  void Ask(const std::string& tenant, const std::string& device, Live& l);
  bool EnrolNow(const Enrol& e);
  // Whether the certificate `new_der` has the public key of the stored `old_serial`.
  bool SameKey(const storage::TenantId& t, const std::string& old_serial, std::string_view new_der) const;

  storage::KvStore* kv_;
  storage::Registry* reg_;
  const Clock* clock_;
  jobs::JobEngine* engine_;
  RenewalHost host_;
  RenewalOptions opts_;
  StringMap<Live> live_;                               // tenant \0 device
  absl::flat_hash_map<uint64_t, std::string> tokens_;  // → tenant \0 device
  uint64_t next_token_ = 1;
  std::priority_queue<Revoke, std::vector<Revoke>, std::greater<Revoke>> revokes_;
  std::vector<Enrol> enrol_;                               // automatic renewals to start
  std::vector<std::pair<std::string, fb::JobT>> created_;  // auto-renew jobs in batch_: activated at Commit
  StringMap<bool> creating_;                               // tenants whose auto-renew job is in created_
  StringMap<bool> warned_;  // tenants whose auto-renew job was found ended (logged once per run)
  struct Notice {
    std::string tenant, serial, device;
    int64_t expires;
  };
  std::vector<Notice> issued_;     // for host_.issued, after the commit
  std::vector<Notice> recovered_;  // inside the renewal window at start-up: checked in Pump
  storage::WriteBatch batch_;
  std::vector<std::string> audited_;
  mgmt::Output pending_;
  Stats stats_;
};

}  // namespace fmq::certs
