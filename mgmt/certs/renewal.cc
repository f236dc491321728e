#include "mgmt/certs/renewal.h"

#include <mbedtls/pk.h>
#include <mbedtls/x509_crt.h>

#include <algorithm>

#include "common/log.h"
#include "storage/keys.h"

namespace fmq::certs {
namespace {

using jobs::ExecState;
using storage::Family;
using storage::KeyReader;
using storage::TenantId;
namespace keys = storage::keys;

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

}  // namespace

RenewalFeature::RenewalFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock,
                               jobs::JobEngine* engine, RenewalHost host, const RenewalOptions& o)
    : kv_(kv), reg_(reg), clock_(clock), engine_(engine), host_(std::move(host)), opts_(o) {
  engine_->SetTypeHandler(fb::JobType::Renew, this);
}

// ---- device messages ----

bool RenewalFeature::SameKey(const TenantId& t, const std::string& old_serial, std::string_view new_der) const {
  fb::CertificateT old;
  if (!reg_->GetCert(t, old_serial, &old).ok() || old.der.empty()) return false;
  auto pubkey = [](const unsigned char* der, size_t n, std::string* out) {
    mbedtls_x509_crt crt;
    mbedtls_x509_crt_init(&crt);
    unsigned char buf[512];
    int len = -1;
    if (mbedtls_x509_crt_parse_der(&crt, der, n) == 0) len = mbedtls_pk_write_pubkey_der(&crt.pk, buf, sizeof buf);
    mbedtls_x509_crt_free(&crt);
    if (len <= 0) return false;
    out->assign(reinterpret_cast<const char*>(buf + sizeof buf - len), static_cast<size_t>(len));  // written at the end
    return true;
  };
  std::string a, b;
  return pubkey(old.der.data(), old.der.size(), &a) &&
         pubkey(reinterpret_cast<const unsigned char*>(new_der.data()), new_der.size(), &b) && a == b;
}

std::string RenewalFeature::Validate(std::string_view topic, const Json& j) const {
  if (topic != "certs/csr") return "unknown topic";
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (k != "job_id" && k != "attempt" && k != "csr" && k != "error" && k != "client_token") {
      return "unknown field '" + k + "'";
    }
  }
  auto id = j.find("job_id");
  if (id == j.end() || !id->is_string() || id->get_ref<const std::string&>().empty() ||
      id->get_ref<const std::string&>().size() > 128) {
    return "job_id must be a string of 1..128 bytes";
  }
  auto at = j.find("attempt");
  if (at == j.end() || !at->is_number_unsigned() || at->get<uint64_t>() < 1 || at->get<uint64_t>() > UINT32_MAX) {
    return "attempt must be an integer of at least 1";
  }
  auto csr = j.find("csr");
  auto err = j.find("error");
  if ((csr == j.end()) == (err == j.end())) return "give exactly one of csr (PEM) and error (why the device cannot)";
  if (csr != j.end()) {
    if (!csr->is_string() || csr->get_ref<const std::string&>().empty() ||
        csr->get_ref<const std::string&>().size() > opts_.max_csr_bytes) {
      return "csr must be a PEM CSR of 1.." + std::to_string(opts_.max_csr_bytes) + " bytes";
    }
  } else if (!err->is_string() || err->get_ref<const std::string&>().size() > 256) {
    return "error must be a string of at most 256 bytes";
  }
  return "";
}

void RenewalFeature::Reply(const std::string& tenant, const std::string& device, std::string_view suffix, Json body,
                           const std::string& client_token) {
  if (!client_token.empty()) body["client_token"] = client_token;
  pending_.sends.push_back(mgmt::DeviceSend{tenant, device, std::string(suffix), Dump(body), 0});
}

void RenewalFeature::Refuse(const mgmt::DeviceMessage& m, const char* code, const std::string& msg) {
  stats_.csr_refused++;
  Json body{{"error", {{"code", code}, {"message", msg}}}};
  if (m.body.contains("job_id")) body["job_id"] = m.body["job_id"];
  if (m.body.contains("attempt")) body["attempt"] = m.body["attempt"];
  Reply(m.tenant, m.device_id, "certs/csr/rejected", std::move(body), m.client_token);
}

void RenewalFeature::Audit(const std::string& tenant, const std::string& device, const char* action,
                           const Json& details) {
  fb::AuditEntryT a;
  a.time_ms = clock_->WallMs();
  a.actor = "broker";
  a.action = action;
  a.device_id = device;
  a.details_json = Dump(details);
  a.result = "ok";
  if (reg_->AppendAudit(TenantId::FromAuthenticated(tenant), std::move(a), &batch_).ok()) {
    if (audited_.empty() || audited_.back() != tenant) audited_.push_back(tenant);
  }
}

void RenewalFeature::OnDeviceMessage(const mgmt::DeviceMessage& m) {
  // certs/csr, valid for the schema (Validate ran on the worker).
  const std::string job = m.body["job_id"].get<std::string>();
  const auto attempt = static_cast<uint32_t>(m.body["attempt"].get<uint64_t>());
  auto it = live_.find(mgmt::JoinKey(m.tenant, m.device_id));
  // Only an answer to the request in flight is looked at: anything else
  // costs no signature (a CSR flood is refused here, counted).
  if (it == live_.end() || it->second.job_id != job) {
    return Refuse(m, "not_requested", "no certificate renewal was asked of this device in job '" + job + "'");
  }
  Live& l = it->second;
  if (l.attempt != attempt) {
    return Refuse(m, "not_requested",
                  "attempt " + std::to_string(attempt) + " is not the current one (" + std::to_string(l.attempt) + ")");
  }
  if (!l.new_serial.empty()) {
    return Refuse(m, "already_issued",
                  "a certificate was issued for this attempt already (serial " + l.new_serial + ")");
  }
  if (m.body.contains("error")) {
    const std::string why = m.body["error"].get<std::string>();
    engine_->Advance(m.tenant, job, m.device_id, ExecState::Failed, Dump(Json{{"reason", "device: " + why}}));
    return;
  }
  auto issued = host_.issue(m.tenant, m.device_id, m.body["csr"].get<std::string>());
  if (!issued.ok()) {
    stats_.csr_invalid++;
    const std::string why(issued.status().message());
    Refuse(m, absl::IsInvalidArgument(issued.status()) ? "bad_csr" : "internal", why);
    engine_->Advance(m.tenant, job, m.device_id, ExecState::Failed, Dump(Json{{"reason", "csr refused: " + why}}));
    return;
  }
  const pki::Certificate& c = issued->cert;
  if (!l.old_serial.empty() && SameKey(TenantId::FromAuthenticated(m.tenant), l.old_serial, c.der)) {
    // Not a new key: a renewal must not extend the life of the old one.
    stats_.csr_invalid++;
    Refuse(m, "key_reused", "the CSR's key is the key of the certificate being replaced: make a new one");
    engine_->Advance(m.tenant, job, m.device_id, ExecState::Failed, Dump(Json{{"reason", "csr refused: key reused"}}));
    return;
  }
  fb::CertificateT rec;
  rec.serial = c.serial;
  rec.device_id = m.device_id;
  rec.issued_at_ms = c.not_before_ms;
  rec.expires_at_ms = c.not_after_ms;
  rec.der.assign(c.der.begin(), c.der.end());
  const TenantId t = TenantId::FromAuthenticated(m.tenant);
  reg_->PutCert(t, rec, &batch_);
  issued_.push_back(Notice{m.tenant, c.serial, m.device_id, c.not_after_ms});
  Audit(m.tenant, m.device_id, "cert.renewed",
        Json{{"job_id", job},
             {"attempt", attempt},
             {"serial", c.serial},
             {"sha256", storage::Registry::CertSha256(rec)},
             {"expires_at_ms", c.not_after_ms},
             {"replaces", l.old_serial}});
  l.new_serial = c.serial;
  stats_.issued++;
  Reply(m.tenant, m.device_id, "certs/csr/accepted",
        Json{{"job_id", job},
             {"attempt", attempt},
             {"serial", c.serial},
             {"certificate_pem", c.pem},
             {"ca_chain_pem", issued->chain_pem},
             {"expires_at_ms", c.not_after_ms}},
        m.client_token);
  engine_->Advance(m.tenant, job, m.device_id, ExecState::InProgress,
                   Dump(Json{{"phase", "issued"}, {"serial", c.serial}}));
  // From now the device has the in-progress timeout to come back with it.
  fb::JobT jrec;
  int64_t in_progress_ms = 600'000;
  if (reg_->GetJob(t, job, &jrec).ok()) {
    if (auto spec = jobs::SpecFromJson(Json::parse(jrec.options_json, nullptr, false)); spec.ok()) {
      in_progress_ms = spec->in_progress_timeout_ms;
    }
  }
  engine_->Extend(m.tenant, job, m.device_id, clock_->WallMs() + in_progress_ms);
}

void RenewalFeature::OnOutcome(uint64_t token, bool acked, std::string_view /*why*/) {
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return;
  const std::string key = std::move(it->second);
  tokens_.erase(it);
  auto l = live_.find(key);
  if (l == live_.end() || l->second.token != token) return;
  l->second.token = 0;
  const size_t z = key.find('\0');
  const std::string tenant = key.substr(0, z), device = key.substr(z + 1);
  if (acked) {
    engine_->Advance(tenant, l->second.job_id, device, ExecState::Delivered, "");
    return;
  }
  // Not delivered: it had not subscribed yet (asked again once it has), or
  // it subscribed meanwhile (asked again now, once per connection).
  if (l->second.subscribed && !l->second.reasked) {
    l->second.reasked = true;
    Ask(tenant, device, l->second);
  }
}

void RenewalFeature::OnSubscribed(const std::string& tenant, const std::string& device) {
  auto it = live_.find(mgmt::JoinKey(tenant, device));
  if (it == live_.end()) return;
  Live& l = it->second;
  l.subscribed = true;
  // Asked, no CSR yet and nothing on its way: asked again on this connection.
  if (l.new_serial.empty() && l.token == 0 && !l.reasked) {
    l.reasked = true;
    Ask(tenant, device, l);
  }
}

void RenewalFeature::OnDisconnected(const std::string& tenant, const std::string& device) {
  auto it = live_.find(mgmt::JoinKey(tenant, device));
  if (it == live_.end()) return;
  it->second.subscribed = false;
  it->second.reasked = false;
  if (it->second.token != 0) tokens_.erase(it->second.token);
  it->second.token = 0;
}

void RenewalFeature::OnConnected(const std::string& tenant, const std::string& device) {
  auto it = live_.find(mgmt::JoinKey(tenant, device));
  if (it == live_.end()) return;
  Live& l = it->second;
  const std::string serial = host_.serial_of(tenant, device);
  if (!l.new_serial.empty() && serial == l.new_serial) Used(tenant, device, l);
}

void RenewalFeature::Used(const std::string& tenant, const std::string& device, Live& l) {
  const TenantId t = TenantId::FromAuthenticated(tenant);
  const int64_t now = clock_->WallMs();
  fb::DeviceT d;
  if (reg_->GetDevice(t, device, &d).ok()) {
    d.cert_serial = l.new_serial;  // its current certificate from now
    if (absl::Status s = reg_->PutDevice(t, d, &batch_); !s.ok()) {
      FMQ_LOG_ERROR("device '%s': renewed certificate not recorded: %s", device.c_str(),
                    std::string(s.message()).c_str());
    }
  }
  const int64_t at = now + opts_.grace_ms;
  Json detail{{"serial", l.new_serial}};
  if (!l.old_serial.empty() && l.old_serial != l.new_serial) {
    detail["replaced"] = l.old_serial;
    detail["old_revoked_at_ms"] = at;
    batch_.Put(Family::kIndex, keys::CertRevokeDue(t, at, l.old_serial), device);
    revokes_.push(Revoke{at, tenant, l.old_serial, device});
  }
  stats_.renewed++;
  const std::string job = l.job_id;
  live_.erase(mgmt::JoinKey(tenant, device));
  engine_->Advance(tenant, job, device, ExecState::Succeeded, Dump(detail));
}

void RenewalFeature::RevokeNow(const std::string& tenant, const std::string& serial, const std::string& device,
                               const char* why) {
  const TenantId t = TenantId::FromAuthenticated(tenant);
  fb::CertificateT c;
  if (reg_->GetCert(t, serial, &c).ok() && c.revoked_at_ms != 0) return;
  if (absl::Status s = reg_->RevokeCert(t, serial, clock_->WallMs(), &batch_); !s.ok()) {
    FMQ_LOG_ERROR("certificate %s of '%s' not revoked: %s", serial.c_str(), device.c_str(),
                  std::string(s.message()).c_str());
    return;
  }
  Audit(tenant, device, "cert.revoked",
        Json{{"serial", serial}, {"sha256", storage::Registry::CertSha256(c)}, {"reason", why}});
  pending_.revoked.emplace_back(tenant, serial);
}

// ---- the "renew" job type ----

RenewalFeature::Started RenewalFeature::OnStart(const Exec& e) {
  Started st;
  const TenantId t = TenantId::FromAuthenticated(e.tenant);
  fb::DeviceT d;
  if (!reg_->GetDevice(t, e.device, &d).ok() || storage::IsRetired(d.status)) {
    st.kind = Started::kDone;
    st.state = ExecState::Failed;
    st.detail = Dump(Json{{"reason", "device not registered or retired"}});
    return st;
  }
  Live& l = live_[mgmt::JoinKey(e.tenant, e.device)];
  if (!l.job_id.empty() && l.job_id != e.job.job_id && engine_->AttemptOf(e.tenant, l.job_id, e.device) != 0) {
    // Another renewal of this device is in flight: one at a time.
    st.kind = Started::kDone;
    st.state = ExecState::Rejected;
    st.detail = Dump(Json{{"reason", "a renewal of this device is in progress in job '" + l.job_id + "'"}});
    return st;
  }
  if (l.token != 0) tokens_.erase(l.token);
  l = Live{};
  l.job_id = e.job.job_id;
  l.attempt = e.attempt;
  l.old_serial = d.cert_serial;
  Ask(e.tenant, e.device, l);
  return st;  // kWait: the CSR, then the device connecting with the new certificate
}

void RenewalFeature::Ask(const std::string& tenant, const std::string& device, Live& l) {
  const TenantId t = TenantId::FromAuthenticated(tenant);
  fb::CertificateT cur;
  int64_t expires = 0;
  if (!l.old_serial.empty() && reg_->GetCert(t, l.old_serial, &cur).ok()) expires = cur.expires_at_ms;
  if (l.token != 0) tokens_.erase(l.token);
  l.token = TokenOf(next_token_++);
  tokens_.emplace(l.token, mgmt::JoinKey(tenant, device));
  Json body{{"job_id", l.job_id}, {"attempt", l.attempt}, {"serial", l.old_serial}, {"key", "EC P-256"}};
  if (expires != 0) body["expires_at_ms"] = expires;
  pending_.sends.push_back(mgmt::DeviceSend{tenant, device, "certs/renew", Dump(body), l.token});
  stats_.requested++;
}

void RenewalFeature::OnEnded(const Exec& e, ExecState /*to*/) {
  auto it = live_.find(mgmt::JoinKey(e.tenant, e.device));
  if (it == live_.end() || it->second.job_id != e.job.job_id) return;
  Live& l = it->second;
  if (l.token != 0) tokens_.erase(l.token);
  // Issued and never used (timed out, canceled): nobody may use it later.
  if (!l.new_serial.empty()) {
    RevokeNow(e.tenant, l.new_serial, e.device, "renewal ended before the device used it");
    stats_.unused_revoked++;
  }
  live_.erase(it);
}

void RenewalFeature::OnResumed(const Exec& e) {
  // IN_PROGRESS after a restart: issued, waiting for the device to use it.
  fb::JobDeviceT x;
  const TenantId t = TenantId::FromAuthenticated(e.tenant);
  Live l;
  l.job_id = e.job.job_id;
  l.attempt = e.attempt;
  if (reg_->GetJobDevice(t, e.job.job_id, e.device, &x).ok()) {
    Json d = Json::parse(x.detail, nullptr, false);
    if (d.is_object() && d.contains("serial") && d["serial"].is_string()) l.new_serial = d["serial"].get<std::string>();
  }
  fb::DeviceT dev;
  if (reg_->GetDevice(t, e.device, &dev).ok()) l.old_serial = dev.cert_serial;
  live_[mgmt::JoinKey(e.tenant, e.device)] = std::move(l);
}

std::string RenewalFeature::TimeoutDetail(const Exec& e) {
  auto it = live_.find(mgmt::JoinKey(e.tenant, e.device));
  if (it == live_.end()) return "";
  return Dump(
      Json{{"reason", it->second.new_serial.empty()
                          ? "no CSR within the step timeout"
                          : "the device did not connect with its new certificate within the in-progress timeout"}});
}

// ---- automatic renewal ----

void RenewalFeature::OnNotice(const std::string& tenant, const std::string& serial, const std::string& device,
                              int64_t expires_ms) {
  if (!opts_.auto_renew || device.empty() || expires_ms <= clock_->WallMs()) return;  // expired: too late over MQTT
  fb::DeviceT d;
  if (!reg_->GetDevice(TenantId::FromAuthenticated(tenant), device, &d).ok() || storage::IsRetired(d.status) ||
      d.cert_serial != serial) {
    return;  // not its current certificate (renewed, re-provisioned) or gone
  }
  enrol_.push_back(Enrol{tenant, device});
}

bool RenewalFeature::EnrolNow(const Enrol& e) {
  auto r = engine_->Enroll(e.tenant, kAutoRenewJob, e.device);
  if (r.ok()) {
    if (*r) stats_.enrolled++;
    return true;
  }
  if (!absl::IsNotFound(r.status())) {
    FMQ_LOG_ERROR("automatic renewal of '%s' not started: %s", e.device.c_str(),
                  std::string(r.status().message()).c_str());
    return true;  // dropped: the job is in a state that takes none
  }
  if (creating_.contains(e.tenant)) return false;  // activated at this turn's commit
  const TenantId t = TenantId::FromAuthenticated(e.tenant);
  fb::JobT existing;
  if (reg_->GetJob(t, kAutoRenewJob, &existing).ok()) {
    if (warned_.contains(e.tenant)) return true;
    warned_[e.tenant] = true;  // once per tenant and run: a wave would repeat it per device
    FMQ_LOG_WARN("tenant '%s': job '%s' exists but is not running (%s): automatic renewals skipped (first: '%s')",
                 e.tenant.c_str(), kAutoRenewJob, std::string(jobs::JobName(existing.status)).c_str(),
                 e.device.c_str());
    return true;
  }
  jobs::JobEngine::NewJob nj;
  nj.job_id = kAutoRenewJob;
  nj.type = fb::JobType::Renew;
  nj.created_by = "broker";
  nj.target.continuous = true;  // an enrolment job
  nj.spec.rate_per_s = opts_.auto_rate_per_s;
  nj.spec.max_in_flight = opts_.auto_max_in_flight;
  nj.spec.max_attempts = 3;
  nj.spec.backoff_ms = 60'000;
  nj.document_json = "{\"automatic\":true}";
  fb::JobT rec;
  if (absl::Status s = engine_->Create(t, nj, &batch_, &rec); !s.ok()) {
    FMQ_LOG_ERROR("tenant '%s': automatic renewal job not created: %s", e.tenant.c_str(),
                  std::string(s.message()).c_str());
    return true;
  }
  created_.emplace_back(e.tenant, std::move(rec));
  creating_[e.tenant] = true;
  return false;
}

// ---- recovery, deadlines, commit ----

absl::Status RenewalFeature::Recover() {
  std::string cursor;
  while (true) {
    storage::Page<fb::TenantT> page;
    if (absl::Status s = reg_->ListTenants(cursor, 1000, &page); !s.ok()) return s;
    for (const fb::TenantT& tr : page.items) {
      const TenantId t = TenantId::FromAuthenticated(tr.tenant_id);
      const std::string prefix = keys::CertRevokeDuePrefix(t);
      absl::Status s = kv_->ScanPrefix(Family::kIndex, prefix, [&](std::string_view k, std::string_view v) {
        KeyReader r(k.substr(prefix.size()));
        Revoke x;
        if (r.I64(&x.at) && r.Str(&x.serial) && r.done()) {
          x.tenant = tr.tenant_id;
          x.device = std::string(v);
          revokes_.push(std::move(x));
        }
        return true;
      });
      if (!s.ok()) return s;
      // Certificates past their renewal point already (a notice given while
      // automatic renewal was off, or an enrolment lost to a crash): each
      // device whose current certificate it is gets enrolled (once).
      if (opts_.auto_renew) {
        const int64_t now = clock_->WallMs();
        s = kv_->Scan(Family::kIndex, keys::CertExpiryFrom(t, now + 1), keys::CertExpiryFrom(t, now + opts_.notice_ms),
                      [&](std::string_view k, std::string_view v) {
                        KeyReader r(k);
                        std::string tenant, kind, serial;
                        int64_t exp = 0;
                        if (r.Str(&tenant) && r.Str(&kind) && r.I64(&exp) && r.Str(&serial)) {
                          recovered_.push_back(Notice{tr.tenant_id, serial, std::string(v), exp});
                        }
                        return true;
                      });
        if (!s.ok()) return s;
      }
    }
    if (page.next_cursor.empty()) break;
    cursor = page.next_cursor;
  }
  return absl::OkStatus();
}

int64_t RenewalFeature::Pump() {
  const int64_t now = clock_->WallMs();
  while (!revokes_.empty() && revokes_.top().at <= now) {
    Revoke r = revokes_.top();
    revokes_.pop();
    RevokeNow(r.tenant, r.serial, r.device, "renewed: the device uses its new certificate");
    batch_.Delete(Family::kIndex, keys::CertRevokeDue(TenantId::FromAuthenticated(r.tenant), r.at, r.serial));
    stats_.old_revoked++;
  }
  // Start-up's certificates inside the window, checked a turn's worth at a time.
  while (!recovered_.empty() && enrol_.size() < opts_.enrol_per_turn) {
    const Notice n = std::move(recovered_.back());
    recovered_.pop_back();
    OnNotice(n.tenant, n.serial, n.device, n.expires);
  }
  std::vector<Enrol> later;
  size_t budget = opts_.enrol_per_turn;
  for (Enrol& e : enrol_) {
    if (budget == 0 || !EnrolNow(e)) {
      later.push_back(std::move(e));
    } else {
      --budget;
    }
  }
  enrol_ = std::move(later);
  int64_t next = revokes_.empty() ? INT64_MAX : revokes_.top().at;
  if (!enrol_.empty() || !recovered_.empty()) next = now + 1;  // the rest next turn
  return next;
}

absl::Status RenewalFeature::Commit(mgmt::Output* out) {
  absl::Status s = absl::OkStatus();
  if (!batch_.empty()) {
    s = reg_->Commit(batch_, true);
    batch_.Clear();
  }
  std::vector<std::pair<std::string, fb::JobT>> created = std::move(created_);
  created_.clear();
  creating_.clear();
  if (!s.ok()) {
    stats_.commits_failed++;
    for (const std::string& t : audited_) reg_->ForgetAuditHead(TenantId::FromAuthenticated(t));
    audited_.clear();
    issued_.clear();
    FMQ_LOG_ERROR("certificate renewal state not written (%s): %zu device messages withheld",
                  std::string(s.message()).c_str(), pending_.sends.size());
    pending_ = mgmt::Output{};
    return s;
  }
  audited_.clear();
  for (auto& [tenant, rec] : created) engine_->Activate(TenantId::FromAuthenticated(tenant), std::move(rec));
  for (const Notice& n : issued_) {
    if (host_.issued) host_.issued(n.tenant, n.serial, n.device, n.expires);
  }
  issued_.clear();
  for (auto& m : pending_.sends) out->sends.push_back(std::move(m));
  for (auto& e : pending_.events) out->events.push_back(std::move(e));
  for (auto& r : pending_.revoked) out->revoked.push_back(std::move(r));
  pending_ = mgmt::Output{};
  return s;
}

void RenewalFeature::Counters(const std::function<void(const char*, uint64_t)>& pub) const {
  pub("certs/renewals_requested", stats_.requested);
  pub("certs/renewals_issued", stats_.issued);
  pub("certs/renewals_completed", stats_.renewed);
  pub("certs/renewals_enrolled", stats_.enrolled);
  pub("certs/renewal_csrs_refused", stats_.csr_refused);
  pub("certs/renewal_csrs_invalid", stats_.csr_invalid);
  pub("certs/renewal_old_revoked", stats_.old_revoked);
  pub("certs/renewal_unused_revoked", stats_.unused_revoked);
  pub("certs/renewal_commits_failed", stats_.commits_failed);
}

}  // namespace fmq::certs
