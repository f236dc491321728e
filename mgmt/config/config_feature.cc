#include "mgmt/config/config_feature.h"

#include <algorithm>

#include "common/log.h"

namespace fmq::config {

using jobs::ExecState;
using storage::TenantId;

namespace {

std::string Dump(const Json& j) { return Canonical(j); }

// The hash of {} (version 0: what a device has before any configuration).
const std::string& EmptyHash() {
  static const std::string h = Hash(Json::object());
  return h;
}

bool IsHex64(const std::string& s) {
  return s.size() == 64 &&
         std::all_of(s.begin(), s.end(), [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

}  // namespace

std::string_view StateName(fb::ConfigState s) {
  switch (s) {
    case fb::ConfigState::None:
      return "NONE";
    case fb::ConfigState::Pending:
      return "PENDING";
    case fb::ConfigState::Delivered:
      return "DELIVERED";
    case fb::ConfigState::Applied:
      return "APPLIED";
    case fb::ConfigState::Rejected:
      return "REJECTED";
    case fb::ConfigState::TimedOut:
      return "TIMED_OUT";
  }
  return "?";
}

std::string_view KindName(ConfigKind k) {
  return k == ConfigKind::kGroup ? "group" : k == ConfigKind::kModel ? "model" : "device";
}

ConfigFeature::ConfigFeature(storage::KvStore* kv, storage::Registry* reg, const Clock* clock, jobs::JobEngine* engine,
                             const Options& opts)
    : kv_(kv), reg_(reg), clock_(clock), engine_(engine), opts_(opts) {
  engine_->SetTypeHandler(fb::JobType::Config, this);
}

ConfigFeature::~ConfigFeature() = default;

// ---- device messages ----

std::string ConfigFeature::Validate(std::string_view topic, const Json& j) const {
  if (topic == "config/get") {
    for (auto it = j.begin(); it != j.end(); ++it) {
      if (it.key() != "client_token") return "unknown field '" + it.key() + "'";
    }
    return "";
  }
  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& k = it.key();
    if (k != "version" && k != "status" && k != "hash" && k != "reason" && k != "client_token") {
      return "unknown field '" + k + "'";
    }
  }
  auto v = j.find("version");
  if (v == j.end() || !v->is_number_unsigned()) return "version must be an integer of at least 0";
  auto st = j.find("status");
  if (st == j.end() || !st->is_string() || (*st != "APPLIED" && *st != "REJECTED")) {
    return "status must be APPLIED or REJECTED";
  }
  auto h = j.find("hash");
  if (*st == "APPLIED" && (h == j.end() || !h->is_string() || !IsHex64(h->get<std::string>()))) {
    return "hash must be the lowercase hex SHA-256 of the applied document's canonical form";
  }
  if (h != j.end() && !h->is_string()) return "hash must be a string";
  auto r = j.find("reason");
  if (r != j.end() && (!r->is_string() || r->get_ref<const std::string&>().size() > 256)) {
    return "reason must be a string of at most 256 bytes";
  }
  return "";
}

void ConfigFeature::OnDeviceMessage(const mgmt::DeviceMessage& m) {
  if (m.topic == "config/get") {
    // The whole desired document, whatever the device is believed to have.
    Live& l = LiveOf(m.tenant, m.device_id);
    l.subscribed = true;  // it could only ask from a live connection
    l.sent = 0;
    Reconcile(m.tenant, m.device_id, true);
    return;
  }
  OnReport(m);
}

void ConfigFeature::Reply(const std::string& tenant, const std::string& device, std::string_view suffix,
                          const Json& body) {
  pending_.sends.push_back(mgmt::DeviceSend{tenant, device, std::string(suffix), Dump(body), 0});
}

void ConfigFeature::OnReport(const mgmt::DeviceMessage& m) {
  const uint64_t version = m.body["version"].get<uint64_t>();
  const bool applied = m.body["status"] == "APPLIED";
  Json base{{"version", version}};
  if (!m.client_token.empty()) base["client_token"] = m.client_token;
  auto refuse = [&](const char* code, const std::string& msg) {
    stats_.reports_refused++;
    Json body = base;
    body["error"] = Json{{"code", code}, {"message", msg}};
    Reply(m.tenant, m.device_id, "config/report/rejected", body);
  };
  const TenantId t = TenantId::FromAuthenticated(m.tenant);
  Live& l = LiveOf(m.tenant, m.device_id);
  fb::DeviceConfigT dc;
  Lookup(m.tenant, m.device_id, &dc);
  // The answer to what is in flight, with its hash: nothing to recompute
  // (the hot path of a push). Anything else is checked against what the
  // device should have now.
  const bool in_flight =
      l.sent != 0 && version == l.sent && (!applied || m.body["hash"].get_ref<const std::string&>() == l.sent_hash);
  Desired want;
  if (!in_flight) {
    fb::DeviceT d;
    if (!reg_->GetDevice(t, m.device_id, &d).ok()) {
      refuse("unknown_version", "the device is not registered");
      return;
    }
    if (absl::Status s = DesiredOf(t, d, dc, &want); !s.ok()) {
      refuse("unknown_version", "desired configuration not readable: " + std::string(s.message()));
      return;
    }
    if (version > want.version) {
      refuse("unknown_version",
             "version " + std::to_string(version) + " was never sent (desired: " + std::to_string(want.version) + ")");
      return;
    }
    if (version < want.version && version != l.sent) {
      // An older version while the documents moved on: the latest is on its
      // way, or goes out now.
      refuse("stale_version",
             "version " + std::to_string(version) + " is superseded by " + std::to_string(want.version));
      if (l.sent != want.version && l.subscribed) {
        l.sent = 0;
        Send(m.tenant, m.device_id, l, dc, want, false);
      }
      return;
    }
  }
  const std::string& expected = in_flight ? l.sent_hash : want.doc->hash;
  const int64_t now = clock_->WallMs();
  if (applied) {
    const std::string hash = m.body["hash"].get<std::string>();
    if (hash != expected) {
      if (l.repaired != version) {
        // Drift: the device's document is not what it should be; the whole
        // document repairs it (once per version).
        stats_.drift_repairs++;
        refuse("hash_mismatch", "the applied document's hash is not the desired one; the whole document follows");
        l.sent = 0;
        l.repaired = version;
        Send(m.tenant, m.device_id, l, dc, want, true);
        return;
      }
      refuse("hash_mismatch", "the hash differs again after the whole document was sent");
      dc.state = fb::ConfigState::Rejected;
      dc.state_version = version;
      dc.reason = "hash mismatch after the whole document (the device computes another canonical form)";
      dc.updated_at_ms = now;
      Put(m.tenant, dc);
      l.sent = 0;
      Audit(t, m.device_id, "config.rejected", Json{{"version", version}, {"reason", dc.reason}});
      Settle(m.tenant, m.device_id, version, ExecState::Failed, Dump(Json{{"reason", dc.reason}}));
      return;
    }
    const uint64_t from = dc.applied_version;
    MarkApplied(&dc, version, hash, "");
    dc.delivered_version = std::max(dc.delivered_version, version);
    dc.updated_at_ms = now;
    Put(m.tenant, dc);
    stats_.applied++;
    if (opts_.audit_applied) {
      Audit(t, m.device_id, "config.applied", Json{{"version", version}, {"hash", hash}, {"from_version", from}});
    }
    if (l.sent == version) l.sent = 0;
    Settle(m.tenant, m.device_id, version, ExecState::Succeeded, Dump(Json{{"version", version}}));
  } else {
    const std::string reason = m.body.value("reason", std::string("no reason given"));
    dc.state = fb::ConfigState::Rejected;
    dc.state_version = version;
    dc.reason = reason;
    dc.updated_at_ms = now;
    Put(m.tenant, dc);
    stats_.rejected++;
    Audit(t, m.device_id, "config.rejected", Json{{"version", version}, {"reason", reason}});
    if (l.sent == version) l.sent = 0;
    Settle(m.tenant, m.device_id, version, ExecState::Rejected, Dump(Json{{"reason", reason}}));
  }
  Json body = base;
  body["status"] = applied ? "APPLIED" : "REJECTED";
  Reply(m.tenant, m.device_id, "config/report/accepted", body);
  if (l.sent == 0) l.state.reset();  // answered: the store (or unsynced_) has it
  DropLiveIfIdle(m.tenant, m.device_id);
}

void ConfigFeature::MarkApplied(fb::DeviceConfigT* dc, uint64_t version, const std::string& hash, const char* reason) {
  dc->applied_version = version;
  dc->applied_hash = hash;
  dc->state = fb::ConfigState::Applied;
  dc->state_version = version;
  dc->reason = reason;
}

void ConfigFeature::Settle(const std::string& tenant, const std::string& device, uint64_t version, ExecState to,
                           const std::string& detail) {
  Live* l = FindLive(tenant, device);
  if (l == nullptr || l->waiters.empty()) return;
  std::vector<Waiter> due, keep;
  for (Waiter& w : l->waiters) (w.need <= version ? due : keep).push_back(std::move(w));
  l->waiters = std::move(keep);
  // Advance may call OnEnded, which edits the waiters: they are out already.
  for (const Waiter& w : due) engine_->Advance(tenant, w.job_id, device, to, detail);
}

void ConfigFeature::Audit(const TenantId& t, const std::string& device, const char* action, Json details) {
  fb::AuditEntryT a;
  a.time_ms = clock_->WallMs();
  a.actor = "device:" + device;
  a.action = action;
  a.device_id = device;
  a.details_json = Dump(details);
  a.result = "ok";
  audits_.emplace_back(t.str(), std::move(a));
}

// ---- connectivity ----

ConfigFeature::Live& ConfigFeature::LiveOf(const std::string& tenant, const std::string& device) {
  return live_[tenant][device];
}

ConfigFeature::Live* ConfigFeature::FindLive(const std::string& tenant, const std::string& device) {
  auto t = live_.find(tenant);
  if (t == live_.end()) return nullptr;
  auto d = t->second.find(device);
  return d == t->second.end() ? nullptr : &d->second;
}

void ConfigFeature::DropLiveIfIdle(const std::string& tenant, const std::string& device) {
  auto t = live_.find(tenant);
  if (t == live_.end()) return;
  auto d = t->second.find(device);
  if (d == t->second.end()) return;
  const Live& l = d->second;
  if (l.subscribed || l.sent != 0 || !l.waiters.empty()) return;
  t->second.erase(d);
  if (t->second.empty()) live_.erase(t);
}

void ConfigFeature::OnSubscribed(const std::string& tenant, const std::string& device) {
  Live& l = LiveOf(tenant, device);
  l.subscribed = true;
  // Catch-up: whatever it misses goes out now, before any job reaches it.
  if (l.sent == 0) Reconcile(tenant, device, false);
}

void ConfigFeature::OnDisconnected(const std::string& tenant, const std::string& device) {
  Live* l = FindLive(tenant, device);
  if (l == nullptr) return;
  l->subscribed = false;
  if (l->token != 0) tokens_.erase(l->token);
  l->token = 0;
  l->sent = 0;  // lost with the connection: sent again when it subscribes
  l->state.reset();
  DropLiveIfIdle(tenant, device);
}

void ConfigFeature::OnOutcome(uint64_t token, bool acked, std::string_view why) {
  auto it = tokens_.find(token);
  if (it == tokens_.end()) return;
  const auto [tenant, device] = std::move(it->second);
  tokens_.erase(it);
  Live* l = FindLive(tenant, device);
  if (l == nullptr || l->token != token) return;
  l->token = 0;
  if (acked) {
    // DELIVERED costs no I/O now: written a second later if the device has
    // not answered by then (most answer first, and their answer says more).
    l->delivered = l->sent;
    delivered_.push_back(Due{clock_->WallMs() + 1000, tenant, device, l->sent});
    for (const Waiter& w : l->waiters) engine_->Advance(tenant, w.job_id, device, ExecState::Delivered, "");
    return;
  }
  const uint64_t version = l->sent;
  l->sent = 0;
  if (why == "too_large") {
    fb::DeviceConfigT dc;
    Lookup(tenant, device, &dc);
    dc.state = fb::ConfigState::Rejected;
    dc.state_version = version;
    dc.reason = "the document is larger than the device's Maximum Packet Size";
    dc.updated_at_ms = clock_->WallMs();
    Put(tenant, dc);
    Settle(tenant, device, version, ExecState::Failed, Dump(Json{{"reason", dc.reason}}));
  } else if (why == "queue_full") {
    resends_.push(Due{clock_->WallMs() + 1000, tenant, device, version});
  } else {
    l->subscribed = false;  // not (or no longer) subscribed: sent when it subscribes
  }
}

void ConfigFeature::OnDeviceJoined(const TenantId& t, const fb::DeviceT& d) {
  // Registered, regrouped or taking a replaced device's place: its inputs
  // changed, so its desired version moves.
  fb::DeviceConfigT dc;
  Lookup(t.str(), d.device_id, &dc);
  dc.device_id = d.device_id;
  dc.membership_rev = NextRev(t, &batch_);
  dc.updated_at_ms = clock_->WallMs();
  Put(t.str(), dc);
  if (Live* l = FindLive(t.str(), d.device_id); l != nullptr && l->subscribed) {
    l->sent = 0;
    Reconcile(t.str(), d.device_id, false);
  }
}

void ConfigFeature::OnDeviceRetired(const TenantId& t, const std::string& device) {
  Live* l = FindLive(t.str(), device);
  if (l == nullptr) return;
  l->waiters.clear();  // the engine removes their executions itself
  l->subscribed = false;
  l->sent = 0;
  DropLiveIfIdle(t.str(), device);
}

// ---- reconciliation ----

ConfigFeature::Outcome ConfigFeature::Reconcile(const std::string& tenant, const std::string& device, bool full) {
  Outcome out;
  const TenantId t = TenantId::FromAuthenticated(tenant);
  fb::DeviceT d;
  if (!reg_->GetDevice(t, device, &d).ok() || storage::IsRetired(d.status)) return out;
  fb::DeviceConfigT dc;
  Lookup(tenant, device, &dc);
  Desired want;
  if (absl::Status s = DesiredOf(t, d, dc, &want); !s.ok()) {
    FMQ_LOG_ERROR("configuration of '%s' (tenant '%s') not computed: %s", device.c_str(), tenant.c_str(),
                  std::string(s.message()).c_str());
    out.reason = std::string(s.message());
    return out;
  }
  out.version = want.version;
  Live& l = LiveOf(tenant, device);
  const std::string& applied_hash = dc.applied_hash.empty() ? EmptyHash() : dc.applied_hash;
  if (!full) {
    if (dc.applied_version == want.version || applied_hash == want.doc->hash) {
      if (dc.applied_version != want.version) {
        // Same document under a newer version (e.g. a change masked by the
        // device's own document): in sync without a message.
        dc.device_id = device;
        MarkApplied(&dc, want.version, want.doc->hash, "unchanged document");
        dc.updated_at_ms = clock_->WallMs();
        Put(tenant, dc);
      }
      out.result = Result::kInSync;
      return out;
    }
    if (dc.state == fb::ConfigState::Rejected && dc.state_version == want.version) {
      out.result = Result::kRejected;
      out.reason = dc.reason;
      return out;
    }
    if (l.sent == want.version) {
      out.result = Result::kWaiting;
      return out;
    }
  }
  if (!l.subscribed) {
    out.result = Result::kWaiting;  // sent when it subscribes
    return out;
  }
  Send(tenant, device, l, dc, want, full);
  out.result = Result::kSent;
  return out;
}

void ConfigFeature::ReconcileNow(const TenantId& t, const std::string& device, bool full) {
  Live* l = FindLive(t.str(), device);
  if (l == nullptr || !l->subscribed) return;
  l->sent = 0;
  Reconcile(t.str(), device, full);
}

void ConfigFeature::Send(const std::string& tenant, const std::string& device, Live& l, const fb::DeviceConfigT& dc,
                         const Desired& want, bool full) {
  const TenantId t = TenantId::FromAuthenticated(tenant);
  const Effective& to = *want.doc;
  std::string p = "{\"version\":" + std::to_string(want.version) + ",\"hash\":\"" + to.hash + "\"";
  bool patched = false;
  if (!full) {
    const std::string& from_hash = dc.applied_hash.empty() ? EmptyHash() : dc.applied_hash;
    auto from = Blob(t, from_hash);
    if (from.ok()) {
      std::string diff = DiffText(**from, to);
      if (diff.size() < to.canonical.size()) {
        p += ",\"base_version\":" + std::to_string(dc.applied_version) + ",\"base_hash\":\"" + from_hash +
             "\",\"patch\":" + diff + "}";
        patched = true;
      }
    }
  }
  if (!patched) p += ",\"document\":" + to.canonical + "}";
  // What the device will apply is kept by its hash, for the next diff.
  std::string bk = mgmt::JoinKey(tenant, to.hash);
  if (!stored_blobs_.contains(bk)) {
    if (stored_blobs_.size() >= opts_.cache_entries) stored_blobs_.clear();
    reg_->PutConfigBlob(t, to.hash, to.canonical, &batch_);
    stored_blobs_.insert(std::move(bk));
  }
  if (l.token != 0) tokens_.erase(l.token);
  l.token = TokenOf(next_token_++);
  tokens_.emplace(l.token, std::make_pair(tenant, device));
  l.sent = want.version;
  l.delivered = 0;
  if (!l.state) l.state = std::make_unique<fb::DeviceConfigT>(dc);
  l.sent_hash = to.hash;
  timeouts_.push(Due{clock_->WallMs() + opts_.ack_timeout_ms, tenant, device, want.version});
  stats_.sends++;
  (patched ? stats_.patches : stats_.full)++;
  pending_.sends.push_back(mgmt::DeviceSend{tenant, device, "config/desired", std::move(p), l.token});
}

std::string ConfigFeature::DiffText(const Effective& from, const Effective& to) {
  std::string k = mgmt::JoinKey(from.hash, to.hash);
  if (auto it = diffs_.find(k); it != diffs_.end()) return it->second;
  if (diffs_.size() >= opts_.cache_entries) diffs_.clear();
  std::string d = Dump(MergeDiff(from.doc, to.doc));
  diffs_.emplace(std::move(k), d);
  return d;
}

absl::StatusOr<std::shared_ptr<const Effective>> ConfigFeature::Blob(const TenantId& t, const std::string& hash) {
  std::string k = mgmt::JoinKey(t.str(), hash);
  if (auto it = blobs_.find(k); it != blobs_.end()) return it->second;
  auto e = std::make_shared<Effective>();
  if (hash == EmptyHash()) {
    e->doc = Json::object();
  } else {
    auto text = reg_->GetConfigBlob(t, hash);
    if (!text.ok()) return text.status();
    e->doc = Json::parse(*text, nullptr, false);
    if (e->doc.is_discarded()) return absl::DataLossError("stored configuration " + hash + " is not JSON");
  }
  e->canonical = Dump(e->doc);
  e->hash = hash;
  if (blobs_.size() >= opts_.cache_entries) blobs_.clear();
  blobs_.emplace(std::move(k), e);
  return std::shared_ptr<const Effective>(e);
}

absl::StatusOr<std::shared_ptr<const ConfigFeature::Head>> ConfigFeature::HeadOf(const TenantId& t, ConfigKind kind,
                                                                                 const std::string& id) {
  std::string k = mgmt::JoinKey(t.str(), std::string(1, static_cast<char>('0' + static_cast<int>(kind))) + id);
  if (auto it = heads_.find(k); it != heads_.end()) return it->second;
  auto hp = std::make_shared<Head>();
  Head& h = *hp;
  h.id = id;
  std::string text;
  absl::Status s;
  if (kind == ConfigKind::kGroup) {
    fb::DeviceGroupT g;
    s = reg_->GetGroup(t, id, &g);
    if (s.ok()) {
      h.exists = true;
      h.version = g.config_version;
      h.rev = g.config_rev;
      h.priority = g.config_priority;
      text = g.config_template_json;
    }
  } else {
    fb::DeviceModelT m;
    s = reg_->GetModel(t, id, &m);
    if (s.ok()) {
      h.exists = true;
      h.version = m.config_version;
      h.rev = m.config_rev;
      text = m.default_config_json;
    }
  }
  if (!s.ok() && !absl::IsNotFound(s)) return s;
  h.doc = text.empty() ? Json::object() : Json::parse(text, nullptr, false);
  if (!h.doc.is_object()) h.doc = Json::object();  // written before documents were checked
  if (heads_.size() >= opts_.cache_entries) heads_.clear();
  heads_.emplace(std::move(k), hp);
  return std::shared_ptr<const Head>(hp);
}

absl::StatusOr<std::shared_ptr<const Effective>> ConfigFeature::Merge(const std::string& key,
                                                                      const std::vector<const Json*>& docs) {
  if (!key.empty()) {
    if (auto it = merged_.find(key); it != merged_.end()) return it->second;
  }
  auto e = std::make_shared<Effective>();
  e->doc = Json::object();
  for (const Json* d : docs) e->doc = ApplyMergePatch(std::move(e->doc), *d);
  e->canonical = Dump(e->doc);
  e->hash = HashText(e->canonical);
  if (!key.empty()) {
    if (merged_.size() >= opts_.cache_entries) merged_.clear();
    merged_.emplace(key, e);
  }
  return std::shared_ptr<const Effective>(e);
}

absl::Status ConfigFeature::DesiredOf(const TenantId& t, const fb::DeviceT& d, const fb::DeviceConfigT& dc,
                                      Desired* out) {
  // Merge order: the model's default, the groups by ascending priority (then
  // id), the device's own document; later ones win (RFC 7386).
  std::vector<const Json*> docs;
  std::string key = t.str();
  uint64_t version = std::max(dc.membership_rev, dc.override_rev);
  out->inputs = Json::array();
  std::vector<std::shared_ptr<const Head>> held;  // what `docs` points into
  auto add = [&](const std::shared_ptr<const Head>& h, ConfigKind kind) {
    held.push_back(h);
    version = std::max(version, h->rev);
    if (h->version == 0) return;
    docs.push_back(&h->doc);
    key += '\0';
    key += KindName(kind);
    key += ':' + h->id + '@' + std::to_string(h->version);
    out->inputs.push_back(Json{{"kind", KindName(kind)}, {"id", h->id}, {"version", h->version}});
  };
  if (!d.model_id.empty()) {
    auto h = HeadOf(t, ConfigKind::kModel, d.model_id);
    if (!h.ok()) return h.status();
    add(*h, ConfigKind::kModel);
  }
  std::vector<std::shared_ptr<const Head>> groups;
  for (const std::string& g : d.group_ids) {
    auto h = HeadOf(t, ConfigKind::kGroup, g);
    if (!h.ok()) return h.status();
    if ((*h)->exists) groups.push_back(*h);
  }
  std::sort(groups.begin(), groups.end(), [](const auto& a, const auto& b) {
    return a->priority != b->priority ? a->priority < b->priority : a->id < b->id;
  });
  for (const auto& h : groups) add(h, ConfigKind::kGroup);
  Json own;
  if (dc.override_version != 0) {
    fb::ConfigurationT c;
    if (absl::Status s = reg_->GetConfig(t, ConfigKind::kDevice, d.device_id, dc.override_version, &c); !s.ok()) {
      return s;
    }
    own = Json::parse(c.config_json, nullptr, false);
    if (!own.is_object()) return absl::DataLossError("device document of '" + d.device_id + "' is not an object");
    docs.push_back(&own);
    key.clear();  // one device's own: not worth caching
    out->inputs.push_back(Json{{"kind", "device"}, {"id", d.device_id}, {"version", dc.override_version}});
  }
  auto e = Merge(key, docs);
  if (!e.ok()) return e.status();
  out->doc = *e;
  out->version = version;
  return absl::OkStatus();
}

fb::ConfigState ConfigFeature::Shown(const fb::DeviceConfigT& dc, const Desired& want) {
  const uint64_t desired = want.version;
  const std::string& applied_hash = dc.applied_hash.empty() ? EmptyHash() : dc.applied_hash;
  if (dc.applied_version == desired || applied_hash == want.doc->hash) {
    const bool never = dc.applied_hash.empty() && want.doc->hash == EmptyHash();
    return never ? fb::ConfigState::None : fb::ConfigState::Applied;
  }
  if (dc.state_version == desired && (dc.state == fb::ConfigState::Rejected || dc.state == fb::ConfigState::TimedOut)) {
    return dc.state;
  }
  return dc.delivered_version >= desired ? fb::ConfigState::Delivered : fb::ConfigState::Pending;
}

absl::Status ConfigFeature::StateOf(const TenantId& t, const std::string& device, fb::DeviceConfigT* out) {
  Lookup(t.str(), device, out);
  // A PUBACK not written yet (WriteDelivered) is shown all the same.
  if (const Live* l = FindLive(t.str(), device); l != nullptr && l->delivered > out->delivered_version) {
    out->delivered_version = l->delivered;
  }
  return absl::OkStatus();
}

// ---- the store ----

bool ConfigFeature::Lookup(const std::string& tenant, const std::string& device, fb::DeviceConfigT* out) {
  if (auto it = unsynced_.find(mgmt::JoinKey(tenant, device)); it != unsynced_.end()) {
    *out = it->second.rec;
    return true;
  }
  if (const Live* l = FindLive(tenant, device); l != nullptr && l->state) {
    *out = *l->state;
    return true;
  }
  absl::Status s = reg_->GetDeviceConfig(TenantId::FromAuthenticated(tenant), device, out);
  if (!s.ok()) {
    *out = fb::DeviceConfigT();
    out->device_id = device;
    if (!absl::IsNotFound(s)) {
      FMQ_LOG_ERROR("configuration state of '%s' not read: %s", device.c_str(), std::string(s.message()).c_str());
    }
    return false;
  }
  return true;
}

void ConfigFeature::Put(const std::string& tenant, fb::DeviceConfigT rec) {
  if (Live* l = FindLive(tenant, rec.device_id); l != nullptr && l->state) *l->state = rec;
  Unsynced& u = unsynced_[mgmt::JoinKey(tenant, rec.device_id)];
  u.tenant = tenant;
  u.rec = std::move(rec);
}

void ConfigFeature::WriteDelivered(int64_t now) {
  while (!delivered_.empty() && delivered_.front().at <= now) {
    const Due d = std::move(delivered_.front());
    delivered_.pop_front();
    Live* l = FindLive(d.tenant, d.device);
    if (l == nullptr || l->sent != d.version || l->delivered != d.version) continue;  // answered or superseded
    fb::DeviceConfigT dc;
    Lookup(d.tenant, d.device, &dc);
    if (dc.delivered_version >= d.version) continue;
    dc.device_id = d.device;
    dc.delivered_version = d.version;
    if (dc.applied_version < d.version) {
      dc.state = fb::ConfigState::Delivered;
      dc.state_version = d.version;
    }
    dc.updated_at_ms = now;
    Put(d.tenant, dc);
  }
}

uint64_t ConfigFeature::NextRev(const TenantId& t, storage::WriteBatch* b) {
  auto it = revs_.find(t.str());
  if (it == revs_.end()) {
    uint64_t last = 0;
    auto v = kv_->Get(storage::Family::kMeta, storage::keys::ConfigRev(t));
    if (v.ok() && v->size() == 8) {
      for (int i = 0; i < 8; ++i) last = (last << 8) | static_cast<uint8_t>((*v)[i]);
    }
    it = revs_.emplace(t.str(), last).first;
  }
  const uint64_t rev = ++it->second;
  std::string enc(8, '\0');
  for (int i = 0; i < 8; ++i) enc[i] = static_cast<char>(rev >> (8 * (7 - i)));
  b->Put(storage::Family::kMeta, storage::keys::ConfigRev(t), std::move(enc));
  return rev;
}

absl::StatusOr<ConfigFeature::Change> ConfigFeature::NewVersion(const TenantId& t, ConfigKind kind,
                                                                const std::string& target, const Json& current,
                                                                uint64_t current_version, const Json& next,
                                                                const std::string& author, storage::WriteBatch* b) {
  // Stored as given: a level's document is a merge patch over the levels
  // below it, so a null member deletes an inherited key (RFC 7386).
  const Json& doc = next;
  if (std::string e = CheckDocument(doc, opts_.limits); !e.empty()) return absl::InvalidArgumentError(e);
  Change c;
  c.version = current_version + 1;
  c.rev = NextRev(t, b);
  c.patch = MergeDiff(current, doc);
  c.hash = Hash(doc);
  fb::ConfigurationT rec;
  rec.target_id = target;
  rec.kind = static_cast<uint8_t>(kind);
  rec.is_group = kind == ConfigKind::kGroup;
  rec.version = c.version;
  rec.rev = c.rev;
  rec.config_json = Dump(doc);
  rec.patch_json = Dump(c.patch);
  rec.created_by = author;
  rec.created_at_ms = clock_->WallMs();
  reg_->PutConfig(t, rec, b);
  if (c.version > opts_.history) reg_->DeleteConfig(t, kind, target, c.version - opts_.history, b);
  c.doc = doc;
  return c;
}

absl::Status ConfigFeature::SetOverride(const TenantId& t, const std::string& device, const Change& c,
                                        storage::WriteBatch* b) {
  fb::DeviceConfigT dc;
  Lookup(t.str(), device, &dc);
  dc.device_id = device;
  dc.override_version = c.version;
  dc.override_rev = c.rev;
  dc.updated_at_ms = clock_->WallMs();
  reg_->PutDeviceConfig(t, dc, b);
  unsynced_.erase(mgmt::JoinKey(t.str(), device));  // the command's batch carries the latest
  if (Live* l = FindLive(t.str(), device); l != nullptr && l->state) *l->state = dc;
  return absl::OkStatus();
}

absl::Status ConfigFeature::OverrideOf(const TenantId& t, const std::string& device, Json* doc, uint64_t* version) {
  fb::DeviceConfigT dc;
  Lookup(t.str(), device, &dc);
  *version = dc.override_version;
  *doc = Json::object();
  if (dc.override_version == 0) return absl::OkStatus();
  fb::ConfigurationT c;
  if (absl::Status s = reg_->GetConfig(t, ConfigKind::kDevice, device, dc.override_version, &c); !s.ok()) return s;
  *doc = Json::parse(c.config_json, nullptr, false);
  if (!doc->is_object()) return absl::DataLossError("device document of '" + device + "' is not an object");
  return absl::OkStatus();
}

absl::Status ConfigFeature::CarryOver(const TenantId& t, const std::string& from, const std::string& to,
                                      const std::string& author, storage::WriteBatch* b) {
  Json doc;
  uint64_t version = 0;
  if (absl::Status s = OverrideOf(t, from, &doc, &version); !s.ok()) return s;
  if (version == 0) return absl::OkStatus();
  Json cur;
  uint64_t cur_version = 0;
  if (absl::Status s = OverrideOf(t, to, &cur, &cur_version); !s.ok()) return s;
  auto c = NewVersion(t, ConfigKind::kDevice, to, cur, cur_version, doc, author, b);
  if (!c.ok()) return c.status();
  return SetOverride(t, to, *c, b);
}

void ConfigFeature::Forget(const TenantId& t, ConfigKind kind, const std::string& target) {
  heads_.erase(mgmt::JoinKey(t.str(), std::string(1, static_cast<char>('0' + static_cast<int>(kind))) + target));
}

// ---- the "config" job type ----

ConfigFeature::Started ConfigFeature::OnStart(const Exec& e) {
  const Json doc = Json::parse(e.job.document_json, nullptr, false);
  const uint64_t need = doc.is_object() ? doc.value("rev", uint64_t{0}) : 0;
  const bool full = doc.is_object() && doc.value("full", false);
  Live& l = LiveOf(e.tenant, e.device);
  if (full) l.sent = 0;
  Outcome o = Reconcile(e.tenant, e.device, full);
  Started st;
  switch (o.result) {
    case Result::kGone:
      st.kind = Started::kDone;
      st.state = ExecState::Failed;
      st.detail = Dump(Json{{"reason", o.reason.empty() ? "device not registered or retired" : o.reason}});
      break;
    case Result::kInSync:
      st.kind = Started::kDone;
      st.state = ExecState::Succeeded;
      st.detail = Dump(Json{{"version", o.version}, {"in_sync", true}});
      break;
    case Result::kRejected:
      st.kind = Started::kDone;
      st.state = ExecState::Rejected;
      st.detail = Dump(Json{{"version", o.version}, {"reason", o.reason}});
      break;
    case Result::kSent:
    case Result::kWaiting:
      LiveOf(e.tenant, e.device).waiters.push_back(Waiter{e.job.job_id, full ? o.version : std::min(need, o.version)});
      break;
  }
  DropLiveIfIdle(e.tenant, e.device);
  return st;
}

void ConfigFeature::OnEnded(const Exec& e, ExecState /*to*/) {
  Live* l = FindLive(e.tenant, e.device);
  if (l == nullptr) return;
  auto& w = l->waiters;
  w.erase(std::remove_if(w.begin(), w.end(), [&](const Waiter& x) { return x.job_id == e.job.job_id; }), w.end());
  DropLiveIfIdle(e.tenant, e.device);
}

void ConfigFeature::Counters(const std::function<void(const char*, uint64_t)>& pub) const {
  pub("config/sends", stats_.sends);
  pub("config/patches", stats_.patches);
  pub("config/whole_documents", stats_.full);
  pub("config/applied", stats_.applied);
  pub("config/rejected", stats_.rejected);
  pub("config/reports_refused", stats_.reports_refused);
  pub("config/drift_repairs", stats_.drift_repairs);
  pub("config/timed_out", stats_.timed_out);
  pub("config/commits_failed", stats_.commits_failed);
}

// ---- deadlines and commit ----

int64_t ConfigFeature::Pump() {
  const int64_t now = clock_->WallMs();
  while (!timeouts_.empty() && timeouts_.top().at <= now) {
    Due d = timeouts_.top();
    timeouts_.pop();
    Live* l = FindLive(d.tenant, d.device);
    if (l == nullptr || l->sent != d.version) continue;
    fb::DeviceConfigT dc;
    Lookup(d.tenant, d.device, &dc);
    if (dc.applied_version >= d.version) continue;
    dc.device_id = d.device;
    dc.state = fb::ConfigState::TimedOut;
    dc.state_version = d.version;
    dc.reason = "no APPLIED or REJECTED within config.ack_timeout_s";
    dc.updated_at_ms = now;
    Put(d.tenant, dc);
    stats_.timed_out++;
    l->sent = 0;  // sent again on the next subscribe, push or job
    DropLiveIfIdle(d.tenant, d.device);
  }
  while (!resends_.empty() && resends_.top().at <= now) {
    Due d = resends_.top();
    resends_.pop();
    if (Live* l = FindLive(d.tenant, d.device); l != nullptr && l->subscribed && l->sent == 0) {
      Reconcile(d.tenant, d.device, false);
    }
  }
  int64_t next = INT64_MAX;
  if (!timeouts_.empty()) next = std::min(next, timeouts_.top().at);
  if (!resends_.empty()) next = std::min(next, resends_.top().at);
  if (!delivered_.empty()) next = std::min(next, delivered_.front().at);
  return next;
}

absl::Status ConfigFeature::Commit(mgmt::Output* out) {
  WriteDelivered(clock_->WallMs());
  for (auto& [key, u] : unsynced_) reg_->PutDeviceConfig(TenantId::FromAuthenticated(u.tenant), u.rec, &batch_);
  unsynced_.clear();
  // Chained now, not when they happened: another feature's batch of this
  // turn (the job engine's, committed before) is then either in the store or
  // forgotten, so the tenant's hash chain never points at an entry that
  // failed to commit.
  for (auto& [tenant, a] : audits_) {
    const std::string action = a.action, device = a.device_id;
    if (absl::Status s = reg_->AppendAudit(TenantId::FromAuthenticated(tenant), std::move(a), &batch_); !s.ok()) {
      FMQ_LOG_ERROR("audit of %s by '%s' not written: %s", action.c_str(), device.c_str(),
                    std::string(s.message()).c_str());
    }
    if (touched_tenants_.empty() || touched_tenants_.back() != tenant) touched_tenants_.push_back(tenant);
  }
  audits_.clear();
  absl::Status s = absl::OkStatus();
  if (!batch_.empty()) {
    s = reg_->Commit(batch_, true);
    batch_.Clear();
  }
  if (!s.ok()) {
    stats_.commits_failed++;
    for (const std::string& t : touched_tenants_) reg_->ForgetAuditHead(TenantId::FromAuthenticated(t));
    stored_blobs_.clear();
    revs_.clear();
    FMQ_LOG_ERROR("configuration state not written (%s): %zu device messages withheld",
                  std::string(s.message()).c_str(), pending_.sends.size());
    pending_ = mgmt::Output{};
  } else {
    for (auto& m : pending_.sends) out->sends.push_back(std::move(m));
    for (auto& e : pending_.events) out->events.push_back(std::move(e));
    pending_ = mgmt::Output{};
  }
  touched_tenants_.clear();
  return s;
}

}  // namespace fmq::config
