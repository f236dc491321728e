#include "mgmt/ota/ota_feature.h"

#include <mbedtls/base64.h>
#include <mbedtls/sha256.h>

#include <algorithm>
#include <cmath>

#include "common/hex.h"
#include "common/log.h"
#include "storage/records.h"

namespace fmq::ota {

using jobs::ExecState;
using storage::Family;
using storage::TenantId;
namespace keys = storage::keys;

namespace {

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

bool IsSha256Hex(const std::string& s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

std::string Base64(std::string_view bytes) {
  size_t n = 0;
  mbedtls_base64_encode(nullptr, 0, &n, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  std::string out(n, '\0');
  mbedtls_base64_encode(reinterpret_cast<unsigned char*>(out.data()), out.size(), &n,
                        reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size());
  out.resize(n);
  return out;
}

// Checks the fields of a device message: every key known, each of its type.
std::string Fields(const Json& j, std::initializer_list<std::string_view> known) {
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (std::find(known.begin(), known.end(), it.key()) == known.end() && it.key() != "client_token") {
      return "unknown field '" + it.key() + "'";
    }
  }
  return "";
}
bool Str(const Json& j, const char* k, size_t lo, size_t hi) {
  auto it = j.find(k);
  return it != j.end() && it->is_string() && it->get_ref<const std::string&>().size() >= lo &&
         it->get_ref<const std::string&>().size() <= hi;
}
bool UInt(const Json& j, const char* k) {
  auto it = j.find(k);
  return it != j.end() && it->is_number_unsigned();
}

}  // namespace

struct OtaFeature::Hashing {
  mbedtls_sha256_context ctx;
  uint64_t at = 0;  // bytes hashed
  Hashing() {
    mbedtls_sha256_init(&ctx);
    mbedtls_sha256_starts_ret(&ctx, 0);
  }
  ~Hashing() { mbedtls_sha256_free(&ctx); }
};

std::string ManifestText(const std::string& tenant, const fb::FirmwareT& f) {
  Json m{{"tenant", tenant},
         {"model", f.model_id},
         {"version", f.version},
         {"size", f.size},
         {"sha256", f.sha256},
         {"created_ms", f.created_at_ms},
         {"format", "fleetmq-firmware-manifest/1"}};
  if (!f.url.empty()) m["url"] = f.url;
  return Dump(m);  // keys sorted, no spaces: the signed bytes
}

OtaFeature::OtaFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, jobs::JobEngine* engine,
                       SignerFn signer, const Options& opts)
    : kv_(kv),
      reg_(reg),
      clock_(clock),
      engine_(engine),
      signer_(std::move(signer)),
      opts_(opts),
      blocks_(std::make_unique<BlockStats>()) {
  engine_->SetTypeHandler(fb::JobType::Ota, this);
}

OtaFeature::~OtaFeature() = default;

// ---- device messages ----

std::string OtaFeature::Validate(std::string_view topic, const Json& j) const {
  if (topic == "ota/block") {
    if (std::string e = Fields(j, {"sha256", "offset", "length"}); !e.empty()) return e;
    if (!Str(j, "sha256", 64, 64)) return "sha256 must be the artifact's 64 hex digits";
    if (!UInt(j, "offset")) return "offset must be a non-negative integer";
    if (!UInt(j, "length") || j["length"].get<uint64_t>() == 0 || j["length"].get<uint64_t>() > opts_.max_block_bytes) {
      return "length must be within 1.." + std::to_string(opts_.max_block_bytes);
    }
    return "";
  }
  if (topic == "ota/report") {
    if (std::string e = Fields(j, {"job_id", "attempt", "phase", "offset", "reason"}); !e.empty()) return e;
    if (!Str(j, "job_id", 1, 128)) return "job_id must be a string of 1..128 bytes";
    if (!UInt(j, "attempt") || j["attempt"].get<uint64_t>() == 0 || j["attempt"].get<uint64_t>() > UINT32_MAX) {
      return "attempt must be an integer >= 1";
    }
    static constexpr std::string_view kPhases[] = {"downloading", "installing", "failed", "rejected"};
    auto ph = j.find("phase");
    if (ph == j.end() || !ph->is_string() ||
        std::find(std::begin(kPhases), std::end(kPhases), ph->get_ref<const std::string&>()) == std::end(kPhases)) {
      return "phase must be downloading, installing, failed or rejected";
    }
    if (j.contains("offset") && !UInt(j, "offset")) return "offset must be a non-negative integer";
    if (j.contains("reason") && !Str(j, "reason", 0, 256)) return "reason must be a string of at most 256 bytes";
    return "";
  }
  if (topic == "ota/version") {
    if (std::string e = Fields(j, {"version", "rolled_back"}); !e.empty()) return e;
    if (!Str(j, "version", 1, 64)) return "version must be a string of 1..64 bytes";
    if (j.contains("rolled_back") && !j["rolled_back"].is_boolean()) return "rolled_back must be true or false";
    return "";
  }
  return "unknown topic";
}

bool OtaFeature::Take(Bucket& b, uint64_t rate, uint64_t n, int64_t now_ms, int64_t* retry_ms) {
  if (rate == 0) return true;
  const double r = static_cast<double>(rate);
  if (b.last_ms == 0) {
    b.tokens = r;  // one second of burst to start with
  } else if (now_ms > b.last_ms) {
    b.tokens = std::min(r, b.tokens + r * static_cast<double>(now_ms - b.last_ms) / 1000.0);
  }
  b.last_ms = std::max(b.last_ms, now_ms);
  if (b.tokens >= static_cast<double>(n)) {
    b.tokens -= static_cast<double>(n);
    return true;
  }
  *retry_ms = static_cast<int64_t>(std::ceil((static_cast<double>(n) - b.tokens) * 1000.0 / r));
  return false;
}

bool OtaFeature::Serve(const mgmt::DeviceMessage& m, std::vector<mgmt::WorkerReply>* out) const {
  if (m.topic != "ota/block") return false;
  const std::string sha = m.body["sha256"].get<std::string>();
  const uint64_t offset = m.body["offset"].get<uint64_t>();
  uint64_t length = m.body["length"].get<uint64_t>();
  auto refuse = [&](const char* code, const std::string& msg, int64_t retry_ms = 0) {
    Json body{{"sha256", sha}, {"offset", offset}, {"error", {{"code", code}, {"message", msg}}}};
    if (retry_ms > 0) body["retry_after_ms"] = retry_ms;
    if (!m.client_token.empty()) body["client_token"] = m.client_token;
    out->push_back(mgmt::WorkerReply{"ota/block/rejected", Dump(body), false});
    return true;
  };
  Assignment a;
  {
    std::shared_lock<std::shared_mutex> l(assign_mu_);
    auto it = assigned_.find(mgmt::JoinKey(m.tenant, m.device_id));
    if (it != assigned_.end()) a = it->second;
  }
  if (a.sha256.empty() || a.sha256 != sha) {
    blocks_->refused.fetch_add(1, std::memory_order_relaxed);
    return refuse("not_assigned", "no firmware with this sha256 is offered to this device");
  }
  if (offset >= a.size) {
    blocks_->refused.fetch_add(1, std::memory_order_relaxed);
    return refuse("out_of_range",
                  "offset " + std::to_string(offset) + " is past the image's " + std::to_string(a.size) + " bytes");
  }
  length = std::min(length, a.size - offset);
  int64_t retry = 0;
  {
    std::lock_guard<std::mutex> l(bucket_mu_);
    const int64_t now = clock_->NowMs();
    Bucket& dev = device_buckets_[mgmt::JoinKey(m.tenant, m.device_id)];
    if (!Take(dev, opts_.device_bytes_per_s, length, now, &retry)) {
      blocks_->busy.fetch_add(1, std::memory_order_relaxed);
      return refuse("busy", "over this device's download budget", retry);
    }
    if (!Take(tenant_buckets_[m.tenant], opts_.tenant_bytes_per_s, length, now, &retry)) {
      dev.tokens += static_cast<double>(length);  // not spent
      blocks_->busy.fetch_add(1, std::memory_order_relaxed);
      return refuse("busy", "over the tenant's download budget", retry);
    }
  }
  const TenantId t = TenantId::FromAuthenticated(m.tenant);
  std::string data;
  data.reserve(length);
  for (uint64_t at = offset; at < offset + length;) {
    const uint64_t index = at / a.chunk_bytes, within = at % a.chunk_bytes;
    auto chunk = ReadChunk(t, sha, index);
    if (!chunk.ok()) {
      blocks_->corrupt.fetch_add(1, std::memory_order_relaxed);
      FMQ_LOG_ERROR("firmware %s of tenant '%s', chunk %llu: %s", sha.c_str(), m.tenant.c_str(),
                    static_cast<unsigned long long>(index), std::string(chunk.status().message()).c_str());
      return refuse("unavailable", "the image cannot be read on the broker (logged); try again later", 10'000);
    }
    if (within >= chunk->size()) {
      blocks_->corrupt.fetch_add(1, std::memory_order_relaxed);
      return refuse("unavailable", "the stored image is shorter than its size (logged)", 10'000);
    }
    const uint64_t n = std::min<uint64_t>(offset + length - at, chunk->size() - within);
    data.append(*chunk, within, n);
    at += n;
  }
  blocks_->blocks.fetch_add(1, std::memory_order_relaxed);
  blocks_->bytes.fetch_add(data.size(), std::memory_order_relaxed);
  out->push_back(mgmt::WorkerReply{"ota/data/" + std::to_string(offset), std::move(data), true});
  return true;
}

void OtaFeature::OnDeviceMessage(const mgmt::DeviceMessage& m) {
  if (m.topic == "ota/report") {
    OnReport(m);
  } else if (m.topic == "ota/version") {
    OnVersion(m);
  }
}

void OtaFeature::Reply(const std::string& tenant, const std::string& device, std::string_view suffix,
                       const Json& body) {
  pending_.sends.push_back(mgmt::DeviceSend{tenant, device, std::string(suffix), Dump(body), 0});
}

void OtaFeature::OnReport(const mgmt::DeviceMessage& m) {
  const std::string job = m.body["job_id"].get<std::string>();
  const auto attempt = static_cast<uint32_t>(m.body["attempt"].get<uint64_t>());
  const std::string phase = m.body["phase"].get<std::string>();
  Json base{{"job_id", job}, {"attempt", attempt}, {"phase", phase}};
  if (!m.client_token.empty()) base["client_token"] = m.client_token;
  auto it = live_.find(mgmt::JoinKey(m.tenant, m.device_id));
  if (it == live_.end() || it->second.job_id != job || it->second.attempt != attempt) {
    stats_.reports_refused++;
    Json body = base;
    const bool other = it != live_.end() && it->second.job_id == job;
    body["error"] = Json{{"code", other ? "stale_attempt" : "not_found"},
                         {"message", other ? "attempt " + std::to_string(attempt) + " is not the current attempt " +
                                                 std::to_string(it->second.attempt)
                                           : "no firmware update of job '" + job + "' in flight for this device"}};
    Reply(m.tenant, m.device_id, "ota/report/rejected", body);
    return;
  }
  Live& l = it->second;
  const int64_t now = clock_->WallMs();
  const std::string reason = m.body.value("reason", "");
  if (phase == "downloading") {
    const uint64_t off = std::min<uint64_t>(m.body.value("offset", uint64_t{0}), l.size);
    const bool first = l.phase != "downloading";
    l.offset = off;
    // Progress is kept at phase changes, every tenth of the image and every
    // 10 s: a device reporting each block costs no write per block.
    if (first || off >= l.reported_offset + std::max<uint64_t>(1, l.size / 10) || now - l.reported_ms >= 10'000) {
      l.reported_offset = off;
      l.reported_ms = now;
      engine_->Advance(m.tenant, job, m.device_id, ExecState::InProgress,
                       Dump(Json{{"phase", "downloading"}, {"offset", off}, {"size", l.size}}));
    }
    if (first) {
      l.phase = "downloading";
      auto doc = docs_.find(mgmt::JoinKey(m.tenant, job));
      const int64_t ms = doc != docs_.end() ? doc->second->download_ms : opts_.download_timeout_ms;
      engine_->Extend(m.tenant, job, m.device_id, now + ms);
    }
  } else if (phase == "installing") {
    if (l.phase != "installing") {
      l.phase = "installing";
      engine_->Advance(m.tenant, job, m.device_id, ExecState::InProgress,
                       Dump(Json{{"phase", "installing"}, {"to", l.target}}));
      auto doc = docs_.find(mgmt::JoinKey(m.tenant, job));
      const int64_t ms = doc != docs_.end() ? doc->second->install_ms : opts_.install_timeout_ms;
      engine_->Extend(m.tenant, job, m.device_id, now + ms);
      // Already gone (its disconnect was seen first): rebooting.
      if (!engine_->Online(m.tenant, m.device_id)) OnDisconnected(m.tenant, m.device_id);
    }
  } else {
    Json detail{{"phase", l.phase}, {"reason", reason.empty() ? phase : reason}, {"to", l.target}};
    if (phase == "failed") stats_.failed++;
    Settle(m.tenant, m.device_id, phase == "failed" ? ExecState::Failed : ExecState::Rejected, detail);
  }
  Json body = base;
  body["status"] = "accepted";
  Reply(m.tenant, m.device_id, "ota/report/accepted", body);
}

void OtaFeature::OnVersion(const mgmt::DeviceMessage& m) {
  stats_.versions++;
  const std::string version = m.body["version"].get<std::string>();
  const bool rolled_back = m.body.value("rolled_back", false);
  auto it = live_.find(mgmt::JoinKey(m.tenant, m.device_id));
  if (it != live_.end() && version != it->second.target && version != it->second.from && !rolled_back) {
    // Neither what it was offered nor what it ran: refused, nothing changes
    // (the execution runs on to its verdict or deadline).
    stats_.versions_refused++;
    Json body{{"version", version},
              {"error",
               {{"code", "unexpected_version"},
                {"message", "version " + version + " was never offered: the update in flight is " + it->second.from +
                                " -> " + it->second.target}}}};
    if (!m.client_token.empty()) body["client_token"] = m.client_token;
    Reply(m.tenant, m.device_id, "ota/version/rejected", body);
    return;
  }
  // The campaign that moved it, if one did (kept for its rollback).
  versions_.push_back(VersionChange{m.tenant, m.device_id, version,
                                    it != live_.end() && it->second.target == version ? it->second.job_id : ""});
  if (it == live_.end()) return;
  Live& l = it->second;
  if (version == l.target) {
    stats_.verified++;
    Settle(m.tenant, m.device_id, ExecState::Succeeded,
           Json{{"phase", "verified"}, {"from", l.from}, {"to", l.target}});
    return;
  }
  if (rolled_back) {
    stats_.rolled_back++;
    Settle(m.tenant, m.device_id, ExecState::RolledBack,
           Json{{"phase", l.phase}, {"reason", "device-side rollback"}, {"running", version}, {"to", l.target}});
    return;
  }
  if (l.phase == "installing" || l.phase == "rebooting") {
    stats_.came_back_old++;
    Settle(m.tenant, m.device_id, ExecState::Failed,
           Json{{"phase", l.phase}, {"reason", "came back running " + version}, {"to", l.target}});
  }
}

void OtaFeature::Settle(const std::string& tenant, const std::string& device, ExecState to, const Json& detail) {
  auto it = live_.find(mgmt::JoinKey(tenant, device));
  if (it == live_.end()) return;
  const std::string job = it->second.job_id;
  // The engine calls OnEnded, which drops the live state and the assignment.
  if (!engine_->Advance(tenant, job, device, to, Dump(detail))) {
    Assign(tenant, device, nullptr);
    live_.erase(mgmt::JoinKey(tenant, device));
  }
}

void OtaFeature::OnDisconnected(const std::string& tenant, const std::string& device) {
  auto it = live_.find(mgmt::JoinKey(tenant, device));
  if (it == live_.end() || it->second.phase != "installing") return;
  // The reboot of the contract: the verdict waits for the version report.
  Live& l = it->second;
  l.phase = "rebooting";
  engine_->Advance(tenant, l.job_id, device, ExecState::InProgress,
                   Dump(Json{{"phase", "rebooting"}, {"to", l.target}}));
  auto doc = docs_.find(mgmt::JoinKey(tenant, l.job_id));
  const int64_t ms = doc != docs_.end() ? doc->second->reboot_ms : opts_.reboot_timeout_ms;
  engine_->Extend(tenant, l.job_id, device, clock_->WallMs() + ms);
}

void OtaFeature::OnSubscribed(const std::string& tenant, const std::string& device) {
  // A device back during its download resumes it: the offer again (the
  // same job and attempt), and it carries on from the bytes it has.
  auto it = live_.find(mgmt::JoinKey(tenant, device));
  if (it == live_.end() || it->second.offer.empty()) return;
  if (it->second.phase == "offered" || it->second.phase == "downloading") Offer(tenant, device, it->second);
}

void OtaFeature::OnOutcome(uint64_t token, bool acked, std::string_view why) {
  auto t = tokens_.find(token);
  if (t == tokens_.end()) return;
  const std::string key = std::move(t->second);
  tokens_.erase(t);
  auto it = live_.find(key);
  if (it == live_.end() || it->second.token != token) return;
  Live& l = it->second;
  l.token = 0;
  const std::string tenant = key.substr(0, key.find('\0')), device = key.substr(key.find('\0') + 1);
  if (acked) {
    engine_->Advance(tenant, l.job_id, device, ExecState::Delivered, "");
  } else if (why == "too_large") {
    Settle(tenant, device, ExecState::Failed, Json{{"reason", "the offer is larger than the device accepts"}});
  }
  // Offline: offered again when it subscribes (OnSubscribed).
}

void OtaFeature::OnDeviceRetired(const TenantId& t, const std::string& device) {
  Assign(t.str(), device, nullptr);
  live_.erase(mgmt::JoinKey(t.str(), device));  // the engine REMOVEs its executions
}

// ---- the job type ----

void OtaFeature::Assign(const std::string& tenant, const std::string& device, const Assignment* a) {
  const std::string key = mgmt::JoinKey(tenant, device);
  {
    std::unique_lock<std::shared_mutex> l(assign_mu_);
    if (a != nullptr) {
      assigned_[key] = *a;
    } else {
      assigned_.erase(key);
    }
  }
  if (a == nullptr) {
    std::lock_guard<std::mutex> l(bucket_mu_);
    device_buckets_.erase(key);
  }
}

void OtaFeature::Offer(const std::string& tenant, const std::string& device, Live& l) {
  if (l.token != 0) tokens_.erase(l.token);
  l.token = TokenOf(next_token_++);
  tokens_.emplace(l.token, mgmt::JoinKey(tenant, device));
  stats_.offers++;
  pending_.sends.push_back(mgmt::DeviceSend{tenant, device, "ota/notify", l.offer, l.token});
}

jobs::TypeHandler::Started OtaFeature::OnStart(const Exec& e) {
  const TenantId t = TenantId::FromAuthenticated(e.tenant);
  auto fail = [&](ExecState st, const std::string& why) {
    Started s;
    s.kind = Started::kDone;
    s.state = st;
    s.detail = Dump(Json{{"reason", why}});
    return s;
  };
  const std::string dkey = mgmt::JoinKey(e.tenant, e.job.job_id);
  auto d = docs_.find(dkey);
  if (d == docs_.end()) {
    Json j = Json::parse(e.job.document_json, nullptr, false);
    if (!j.is_object()) return fail(ExecState::Failed, "the campaign's document does not parse");
    auto doc = std::make_shared<Doc>();
    doc->model = j.value("model_id", "");
    doc->version = j.value("version", "");
    doc->rollback_of = j.value("rollback_of", "");
    const Json to = j.value("timeouts", Json::object());
    doc->download_ms = static_cast<int64_t>(to.value("download_s", opts_.download_timeout_ms / 1000.0) * 1000);
    doc->install_ms = static_cast<int64_t>(to.value("install_s", opts_.install_timeout_ms / 1000.0) * 1000);
    doc->reboot_ms = static_cast<int64_t>(to.value("reboot_s", opts_.reboot_timeout_ms / 1000.0) * 1000);
    d = docs_.emplace(dkey, std::move(doc)).first;
  }
  const Doc& doc = *d->second;
  fb::DeviceT dev;
  if (absl::Status s = reg_->GetDevice(t, e.device, &dev); !s.ok()) {
    return fail(ExecState::Failed, "device not readable: " + std::string(s.message()));
  }
  fb::DeviceFirmwareT fw;
  std::string running = dev.firmware_version;
  if (storage::ReadRecord<fb::DeviceFirmware>(*kv_, Family::kDeviceFirmware, keys::DeviceFirmware(t, e.device), &fw)
          .ok() &&
      !fw.version.empty()) {
    running = fw.version;
  }
  std::string target = doc.version, model = doc.model.empty() ? dev.model_id : doc.model;
  if (!doc.rollback_of.empty()) {
    if (fw.job_id != doc.rollback_of || fw.previous_version.empty()) {
      return fail(ExecState::Rejected, "campaign '" + doc.rollback_of + "' did not change this device's firmware");
    }
    target = fw.previous_version;
    model = dev.model_id;
  }
  if (dev.model_id != model) {
    return fail(ExecState::Rejected, "model '" + dev.model_id + "' is not the artifact's model '" + model + "'");
  }
  if (running == target) {
    stats_.skipped++;
    Started s;
    s.kind = Started::kDone;
    s.state = ExecState::Succeeded;
    s.detail = Dump(Json{{"skipped", "already running " + target}});
    return s;
  }
  auto art = Get(t, model, target);
  if (!art.ok())
    return fail(ExecState::Failed, "no artifact " + model + " " + target + ": " + std::string(art.status().message()));
  Live& l = live_[mgmt::JoinKey(e.tenant, e.device)];
  l = Live{};
  l.job_id = e.job.job_id;
  l.attempt = e.attempt;
  l.target = target;
  l.from = running;
  l.sha256 = art->rec.sha256;
  l.size = art->rec.size;
  Json offer{{"job_id", e.job.job_id},
             {"attempt", e.attempt},
             {"version", target},
             {"from", running},
             {"size", art->rec.size},
             {"sha256", art->rec.sha256},
             {"manifest", art->rec.manifest},
             {"signature", art->rec.signature},
             {"signer", art->signer_chain},
             {"block_max", opts_.max_block_bytes},
             {"timeouts",
              {{"download_s", doc.download_ms / 1000.0},
               {"install_s", doc.install_ms / 1000.0},
               {"reboot_s", doc.reboot_ms / 1000.0}}}};
  if (!art->rec.url.empty()) offer["url"] = art->rec.url;
  if (!doc.rollback_of.empty()) offer["rollback_of"] = doc.rollback_of;
  l.offer = Dump(offer);
  Assignment a{art->rec.sha256, art->rec.size, art->rec.chunk_bytes};
  Assign(e.tenant, e.device, &a);
  Offer(e.tenant, e.device, l);
  return Started{};
}

void OtaFeature::OnEnded(const Exec& e, ExecState to) {
  const std::string key = mgmt::JoinKey(e.tenant, e.device);
  auto it = live_.find(key);
  if (it != live_.end() && it->second.job_id == e.job.job_id) {
    if (it->second.token != 0) tokens_.erase(it->second.token);
    live_.erase(it);
    Assign(e.tenant, e.device, nullptr);
  }
  if (to == ExecState::Canceled) {
    Reply(e.tenant, e.device, "ota/cancel", Json{{"job_id", e.job.job_id}, {"attempt", e.attempt}});
  }
}

std::string OtaFeature::TimeoutDetail(const Exec& e) {
  auto it = live_.find(mgmt::JoinKey(e.tenant, e.device));
  if (it == live_.end() || it->second.job_id != e.job.job_id) return "";
  const Live& l = it->second;
  static constexpr std::pair<std::string_view, std::string_view> kWhy[] = {
      {"offered", "no answer to the offer within step_s"},
      {"downloading", "download not finished within download_s"},
      {"installing", "no reboot within install_s"},
      {"rebooting", "did not come back with the new version within reboot_s"},
  };
  std::string why = "timed out";
  for (const auto& [phase, text] : kWhy) {
    if (phase == l.phase) why = std::string(text);
  }
  Json d{{"phase", l.phase}, {"reason", why}, {"to", l.target}};
  if (l.phase == "downloading") d["offset"] = l.offset;
  return Dump(d);
}

void OtaFeature::OnResumed(const Exec& e) {
  // After a restart: the device was downloading, installing or rebooting.
  // The offer is rebuilt by OnStart's path when it is started again; here the
  // execution is in flight, so it gets its state back and one more full
  // phase to finish (the engine's in-progress deadline already runs).
  Started s = OnStart(e);
  if (s.kind == Started::kDone) {
    engine_->Advance(e.tenant, e.job.job_id, e.device, s.state, s.detail);
    return;
  }
  auto it = live_.find(mgmt::JoinKey(e.tenant, e.device));
  if (it != live_.end()) it->second.phase = "downloading";
}

void OtaFeature::OnJobEnded(const std::string& tenant, const fb::JobT& job, bool rollback) {
  docs_.erase(mgmt::JoinKey(tenant, job.job_id));
  if (rollback) rollbacks_.emplace_back(tenant, job.job_id);
}

absl::Status OtaFeature::RollbackTargets(const TenantId& t, const std::string& campaign,
                                         std::vector<std::string>* devices) {
  std::string cursor;
  while (true) {
    storage::Page<fb::JobDeviceT> page;
    if (absl::Status s = reg_->ListJobDevices(t, campaign, cursor, 1000, &page); !s.ok()) return s;
    for (const auto& e : page.items) {
      fb::DeviceFirmwareT fw;
      if (storage::ReadRecord<fb::DeviceFirmware>(*kv_, Family::kDeviceFirmware, keys::DeviceFirmware(t, e.device_id),
                                                  &fw)
              .ok() &&
          fw.job_id == campaign && !fw.previous_version.empty()) {
        devices->push_back(e.device_id);
      }
    }
    if (page.next_cursor.empty()) break;
    cursor = page.next_cursor;
  }
  return absl::OkStatus();
}

int64_t OtaFeature::Pump() {
  // Campaigns aborted with the rollback action: a job per campaign returning
  // the devices it changed to their previous version.
  // Versions reported this turn are stored first (at Commit): the rollback
  // reads which devices the campaign moved.
  if (!rollbacks_.empty() && !versions_.empty()) return clock_->WallMs();
  std::vector<std::pair<std::string, std::string>> due;
  due.swap(rollbacks_);
  for (const auto& [tenant, campaign] : due) {
    const TenantId t = TenantId::FromAuthenticated(tenant);
    jobs::JobEngine::NewJob nj;
    nj.job_id = campaign + "-rollback";
    nj.type = fb::JobType::Ota;
    nj.created_by = "broker";
    fb::JobT rec;
    if (reg_->GetJob(t, campaign, &rec).ok()) {
      Json doc = Json::parse(rec.document_json, nullptr, false);
      Json next{{"rollback_of", campaign}};
      if (doc.is_object() && doc.contains("timeouts")) next["timeouts"] = doc["timeouts"];
      nj.document_json = Dump(next);
      auto spec = jobs::SpecFromJson(Json::parse(rec.options_json, nullptr, false));
      if (spec.ok()) {
        nj.spec.rate_per_s = spec->rate_per_s;
        nj.spec.max_in_flight = spec->max_in_flight;
        nj.spec.step_timeout_ms = spec->step_timeout_ms;
        nj.spec.in_progress_timeout_ms = spec->in_progress_timeout_ms;
      }
    }
    if (absl::Status s = RollbackTargets(t, campaign, &nj.target.device_ids); !s.ok()) {
      FMQ_LOG_ERROR("rollback of campaign '%s' not created: %s", campaign.c_str(), std::string(s.message()).c_str());
      continue;
    }
    if (nj.target.device_ids.empty()) {
      FMQ_LOG_INFO("campaign '%s' of tenant '%s' aborted: no device to roll back", campaign.c_str(), tenant.c_str());
      continue;
    }
    fb::JobT out;
    if (absl::Status s = engine_->Create(t, nj, &batch_, &out); !s.ok()) {
      FMQ_LOG_ERROR("rollback of campaign '%s' not created: %s", campaign.c_str(), std::string(s.message()).c_str());
      continue;
    }
    FMQ_LOG_WARN("campaign '%s' of tenant '%s' aborted: rollback job '%s' for %zu devices", campaign.c_str(),
                 tenant.c_str(), out.job_id.c_str(), nj.target.device_ids.size());
    stats_.rollback_jobs++;
    created_.emplace_back(tenant, std::move(out));
  }
  return INT64_MAX;
}

absl::Status OtaFeature::Commit(mgmt::Output* out) {
  // Reported versions onto the device records, read now (no command of this
  // turn is overwritten), and kDeviceFirmware with the version before.
  std::vector<std::string> audited;
  for (const VersionChange& v : versions_) {
    const TenantId t = TenantId::FromAuthenticated(v.tenant);
    fb::DeviceFirmwareT fw;
    const std::string key = keys::DeviceFirmware(t, v.device);
    absl::Status g = storage::ReadRecord<fb::DeviceFirmware>(*kv_, Family::kDeviceFirmware, key, &fw);
    if (!g.ok() && !absl::IsNotFound(g)) continue;
    if (fw.version == v.version) continue;
    fb::DeviceT dev;
    if (!reg_->GetDevice(t, v.device, &dev).ok()) continue;
    const std::string& job = v.job;
    fw.device_id = v.device;
    fw.previous_version = fw.version.empty() ? dev.firmware_version : fw.version;
    fw.version = v.version;
    fw.job_id = job;
    fw.updated_at_ms = clock_->WallMs();
    batch_.Put(Family::kDeviceFirmware, key, storage::EncodeRecord<fb::DeviceFirmware>(fw));
    if (dev.firmware_version != v.version) {
      dev.firmware_version = v.version;
      if (absl::Status s = reg_->PutDevice(t, dev, &batch_); !s.ok()) continue;
    }
    fb::AuditEntryT a;
    a.time_ms = fw.updated_at_ms;
    a.actor = "device:" + v.device;
    a.action = "firmware.version";
    a.device_id = v.device;
    a.details_json = Dump(Json{{"from", fw.previous_version}, {"to", v.version}, {"job_id", job}});
    a.result = "ok";
    if (reg_->AppendAudit(t, std::move(a), &batch_).ok()) audited.push_back(v.tenant);
  }
  versions_.clear();
  absl::Status s = absl::OkStatus();
  if (!batch_.empty()) {
    s = reg_->Commit(batch_, true);
    batch_.Clear();
  }
  if (!s.ok()) {
    stats_.commits_failed++;
    for (const std::string& t : audited) reg_->ForgetAuditHead(TenantId::FromAuthenticated(t));
    created_.clear();
    FMQ_LOG_ERROR("firmware state not written (%s)", std::string(s.message()).c_str());
    pending_ = mgmt::Output{};
    return s;
  }
  for (auto& [tenant, rec] : created_) engine_->Activate(TenantId::FromAuthenticated(tenant), std::move(rec));
  created_.clear();
  for (auto& m : pending_.sends) out->sends.push_back(std::move(m));
  pending_ = mgmt::Output{};
  return s;
}

void OtaFeature::Counters(const std::function<void(const char*, uint64_t)>& pub) const {
  pub("ota/offers", stats_.offers);
  pub("ota/skipped", stats_.skipped);
  pub("ota/verified", stats_.verified);
  pub("ota/failed", stats_.failed);
  pub("ota/rolled_back", stats_.rolled_back);
  pub("ota/came_back_old", stats_.came_back_old);
  pub("ota/reports_refused", stats_.reports_refused);
  pub("ota/version_reports", stats_.versions);
  pub("ota/version_reports_refused", stats_.versions_refused);
  pub("ota/rollback_jobs", stats_.rollback_jobs);
  pub("ota/commits_failed", stats_.commits_failed);
  pub("ota/blocks_served", blocks_->blocks.load(std::memory_order_relaxed));
  pub("ota/bytes_served", blocks_->bytes.load(std::memory_order_relaxed));
  pub("ota/blocks_refused", blocks_->refused.load(std::memory_order_relaxed));
  pub("ota/blocks_busy", blocks_->busy.load(std::memory_order_relaxed));
  pub("ota/blocks_unreadable", blocks_->corrupt.load(std::memory_order_relaxed));
}

// ---- artifacts ----

absl::Status OtaFeature::WriteChunk(const TenantId& t, const std::string& sha256, uint64_t index, std::string_view data,
                                    storage::WriteBatch* b) {
  std::string v(data);
  const uint32_t crc = storage::Crc32c(data);
  for (int i = 0; i < 4; ++i) v.push_back(static_cast<char>(crc >> (8 * i)));
  b->Put(Family::kFirmwareChunks, keys::FirmwareChunk(t, sha256, index), std::move(v));
  return absl::OkStatus();
}

absl::StatusOr<std::string> OtaFeature::ReadChunk(const TenantId& t, const std::string& sha256, uint64_t index) const {
  const std::string key = keys::FirmwareChunk(t, sha256, index);
  auto v = kv_->Get(Family::kFirmwareChunks, key);
  if (!v.ok()) return v.status();
  if (v->size() < 4) return storage::CorruptRecord(Family::kFirmwareChunks, key, "too short");
  uint32_t want = 0;
  const size_t n = v->size() - 4;
  for (int i = 0; i < 4; ++i) want |= uint32_t{static_cast<uint8_t>((*v)[n + i])} << (8 * i);
  if (storage::Crc32c(std::string_view(*v).substr(0, n)) != want) {
    return storage::CorruptRecord(Family::kFirmwareChunks, key, "checksum mismatch");
  }
  v->resize(n);
  return v;
}

absl::StatusOr<OtaFeature::UploadState> OtaFeature::BeginUpload(const TenantId& t, const fb::FirmwareUploadT& u,
                                                                storage::WriteBatch* b) {
  if (!IsSha256Hex(u.sha256)) return absl::InvalidArgumentError("sha256 must be 64 lowercase hex digits");
  if (u.size == 0) return absl::InvalidArgumentError("size must be at least 1 byte");
  if (u.size > opts_.max_artifact_bytes) {
    return absl::InvalidArgumentError("size " + std::to_string(u.size) + " exceeds ota.max_artifact_bytes (" +
                                      std::to_string(opts_.max_artifact_bytes) +
                                      "); give larger images a url for devices to fetch them from");
  }
  fb::FirmwareT existing;
  if (storage::ReadRecord<fb::Firmware>(*kv_, Family::kFirmware, keys::Firmware(t, u.model_id, u.version), &existing)
          .ok()) {
    return absl::AlreadyExistsError("firmware " + u.model_id + " " + u.version + " exists");
  }
  fb::FirmwareUploadT cur;
  const std::string key = keys::FirmwareUpload(t, u.sha256);
  if (storage::ReadRecord<fb::FirmwareUpload>(*kv_, Family::kFirmware, key, &cur).ok()) {
    if (cur.model_id != u.model_id || cur.version != u.version || cur.size != u.size) {
      return absl::FailedPreconditionError("an upload of these bytes as " + cur.model_id + " " + cur.version +
                                           " is in progress (firmware.upload.abort it first)");
    }
    return UploadState{cur.received, cur.size, true};
  }
  size_t n = 0;
  if (absl::Status s = kv_->ScanPrefix(Family::kFirmware, keys::FirmwareUploadPrefix(t),
                                       [&](std::string_view, std::string_view) {
                                         ++n;
                                         return true;
                                       });
      !s.ok()) {
    return s;
  }
  if (n >= opts_.max_uploads) {
    return absl::ResourceExhaustedError("at most " + std::to_string(opts_.max_uploads) +
                                        " uploads in progress per tenant (ota.max_uploads)");
  }
  fb::FirmwareUploadT rec = u;
  rec.received = 0;
  b->Put(Family::kFirmware, key, storage::EncodeRecord<fb::FirmwareUpload>(rec));
  hashing_.erase(mgmt::JoinKey(t.str(), u.sha256));
  return UploadState{0, u.size, false};
}

absl::StatusOr<OtaFeature::UploadState> OtaFeature::PutChunk(const TenantId& t, const std::string& sha256,
                                                             uint64_t offset, std::string_view data,
                                                             storage::WriteBatch* b) {
  fb::FirmwareUploadT u;
  const std::string key = keys::FirmwareUpload(t, sha256);
  if (absl::Status s = storage::ReadRecord<fb::FirmwareUpload>(*kv_, Family::kFirmware, key, &u); !s.ok()) {
    return absl::IsNotFound(s) ? absl::NotFoundError("no upload of sha256 " + sha256 + " (firmware.upload.begin)") : s;
  }
  if (offset != u.received) {
    return absl::FailedPreconditionError("offset " + std::to_string(offset) + " is not the next byte " +
                                         std::to_string(u.received) + " (resume from there)");
  }
  const uint64_t want = std::min<uint64_t>(opts_.chunk_bytes, u.size - u.received);
  if (data.size() != want) {
    return absl::InvalidArgumentError("a chunk is " + std::to_string(opts_.chunk_bytes) +
                                      " bytes (the last one: what is left); this one expected " + std::to_string(want) +
                                      ", got " + std::to_string(data.size()));
  }
  if (absl::Status s = WriteChunk(t, sha256, u.received / opts_.chunk_bytes, data, b); !s.ok()) return s;
  // The running hash follows the chunks in order; without it (a restart
  // mid-upload) FinishUpload hashes the stored chunks instead.
  const std::string hkey = mgmt::JoinKey(t.str(), sha256);
  if (u.received == 0) hashing_[hkey] = std::make_unique<Hashing>();
  auto h = hashing_.find(hkey);
  if (h != hashing_.end() && h->second && h->second->at == u.received) {
    mbedtls_sha256_update_ret(&h->second->ctx, reinterpret_cast<const unsigned char*>(data.data()), data.size());
    h->second->at += data.size();
  } else if (h != hashing_.end()) {
    hashing_.erase(h);
  }
  u.received += data.size();
  b->Put(Family::kFirmware, key, storage::EncodeRecord<fb::FirmwareUpload>(u));
  return UploadState{u.received, u.size, false};
}

absl::Status OtaFeature::AbortUpload(const TenantId& t, const std::string& sha256) {
  fb::FirmwareUploadT u;
  const std::string key = keys::FirmwareUpload(t, sha256);
  if (absl::Status s = storage::ReadRecord<fb::FirmwareUpload>(*kv_, Family::kFirmware, key, &u); !s.ok()) {
    return absl::IsNotFound(s) ? absl::NotFoundError("no upload of sha256 " + sha256) : s;
  }
  storage::WriteBatch b;
  b.Delete(Family::kFirmware, key);
  // The bytes go too, unless a stored artifact has the same content.
  bool shared = false;
  if (absl::Status s = kv_->ScanPrefix(Family::kFirmware, keys::FirmwarePrefix(t),
                                       [&](std::string_view k, std::string_view v) {
                                         fb::FirmwareT f;
                                         if (storage::DecodeRecord<fb::Firmware>(Family::kFirmware, k, v, &f).ok() &&
                                             f.sha256 == sha256) {
                                           shared = true;
                                         }
                                         return !shared;
                                       });
      !s.ok()) {
    return s;
  }
  if (!shared) {
    for (uint64_t i = 0; i * opts_.chunk_bytes < std::max<uint64_t>(u.received, 1); ++i) {
      b.Delete(Family::kFirmwareChunks, keys::FirmwareChunk(t, sha256, i));
    }
  }
  hashing_.erase(mgmt::JoinKey(t.str(), sha256));
  return reg_->Commit(b, true);
}

absl::StatusOr<fb::FirmwareT> OtaFeature::FinishUpload(const TenantId& t, const std::string& sha256,
                                                       const std::string& by, int64_t now_ms, storage::WriteBatch* b) {
  fb::FirmwareUploadT u;
  const std::string key = keys::FirmwareUpload(t, sha256);
  if (absl::Status s = storage::ReadRecord<fb::FirmwareUpload>(*kv_, Family::kFirmware, key, &u); !s.ok()) {
    return absl::IsNotFound(s) ? absl::NotFoundError("no upload of sha256 " + sha256) : s;
  }
  if (u.received != u.size) {
    return absl::FailedPreconditionError("upload incomplete: " + std::to_string(u.received) + " of " +
                                         std::to_string(u.size) + " bytes");
  }
  unsigned char digest[32];
  auto h = hashing_.find(mgmt::JoinKey(t.str(), sha256));
  if (h != hashing_.end() && h->second && h->second->at == u.size) {
    mbedtls_sha256_finish_ret(&h->second->ctx, digest);
  } else {
    Hashing full;  // after a restart mid-upload: from the stored chunks
    for (uint64_t i = 0; i * opts_.chunk_bytes < u.size; ++i) {
      auto c = ReadChunk(t, sha256, i);
      if (!c.ok()) return c.status();
      mbedtls_sha256_update_ret(&full.ctx, reinterpret_cast<const unsigned char*>(c->data()), c->size());
    }
    mbedtls_sha256_finish_ret(&full.ctx, digest);
  }
  hashing_.erase(mgmt::JoinKey(t.str(), sha256));
  const std::string got = HexOf(digest, sizeof digest);
  if (got != sha256) {
    if (absl::Status s = AbortUpload(t, sha256); !s.ok()) {
      FMQ_LOG_ERROR("corrupt upload %s not discarded: %s", sha256.c_str(), std::string(s.message()).c_str());
    }
    return absl::InvalidArgumentError("the uploaded bytes hash to " + got + ", not " + sha256 +
                                      ": upload discarded, nothing stored");
  }
  auto signer = signer_(t.str());
  if (!signer.ok()) return signer.status();
  auto key_pem = pki::Key::FromPem(signer->key_pem);
  if (!key_pem.ok()) return key_pem.status();
  fb::FirmwareT f;
  f.model_id = u.model_id;
  f.version = u.version;
  f.size = u.size;
  f.sha256 = sha256;
  f.notes = u.notes;
  f.url = u.url;
  f.created_at_ms = now_ms;
  f.created_by = by;
  f.chunk_bytes = opts_.chunk_bytes;
  f.manifest = ManifestText(t.str(), f);
  pki::Rng rng;
  auto sig = pki::SignData(rng, *key_pem, f.manifest);
  if (!sig.ok()) return sig.status();
  f.signature = Base64(*sig);
  b->Delete(Family::kFirmware, key);
  b->Put(Family::kFirmware, keys::Firmware(t, f.model_id, f.version), storage::EncodeRecord<fb::Firmware>(f));
  return f;
}

absl::StatusOr<Artifact> OtaFeature::Get(const TenantId& t, const std::string& model, const std::string& version) {
  Artifact a;
  if (absl::Status s =
          storage::ReadRecord<fb::Firmware>(*kv_, Family::kFirmware, keys::Firmware(t, model, version), &a.rec);
      !s.ok()) {
    return absl::IsNotFound(s) ? absl::NotFoundError("no firmware " + model + " " + version) : s;
  }
  auto signer = signer_(t.str());
  if (!signer.ok()) return signer.status();
  a.signer_chain = signer->chain_pem;
  return a;
}

bool OtaFeature::InUse(const std::string& tenant, const std::string& model, const std::string& version) const {
  bool used = false;
  engine_->ForEachActive(tenant, [&](const fb::JobT& j) {
    if (j.type != fb::JobType::Ota) return;
    Json d = Json::parse(j.document_json, nullptr, false);
    if (d.is_object() &&
        (d.contains("rollback_of") || (d.value("model_id", "") == model && d.value("version", "") == version))) {
      used = true;
    }
  });
  return used;
}

absl::Status OtaFeature::Delete(const TenantId& t, const std::string& model, const std::string& version,
                                storage::WriteBatch* b) {
  fb::FirmwareT f;
  const std::string key = keys::Firmware(t, model, version);
  if (absl::Status s = storage::ReadRecord<fb::Firmware>(*kv_, Family::kFirmware, key, &f); !s.ok()) {
    return absl::IsNotFound(s) ? absl::NotFoundError("no firmware " + model + " " + version) : s;
  }
  if (InUse(t.str(), model, version)) {
    return absl::FailedPreconditionError("firmware " + model + " " + version +
                                         " is offered by a campaign not ended (cancel it first)");
  }
  b->Delete(Family::kFirmware, key);
  bool shared = false;
  absl::Status scan =
      kv_->ScanPrefix(Family::kFirmware, keys::FirmwarePrefix(t), [&](std::string_view k, std::string_view v) {
        fb::FirmwareT o;
        if (storage::DecodeRecord<fb::Firmware>(Family::kFirmware, k, v, &o).ok() && o.sha256 == f.sha256 &&
            !(o.model_id == model && o.version == version)) {
          shared = true;
        }
        return !shared;
      });
  if (!scan.ok()) return scan;
  if (!shared) {
    for (uint64_t i = 0; i * f.chunk_bytes < f.size; ++i)
      b->Delete(Family::kFirmwareChunks, keys::FirmwareChunk(t, f.sha256, i));
  }
  return absl::OkStatus();
}

}  // namespace fmq::ota
