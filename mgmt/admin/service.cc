#include "mgmt/admin/service.h"

#include <dirent.h>

#include <algorithm>

#include "common/log.h"
#include "common/mgmt_topics.h"
#include "mgmt/admin/commands.h"
#include "mgmt/pki/pki_dir.h"

namespace fmq::admin {
namespace {

using storage::TenantId;
using storage::WriteBatch;

Json ErrorJson(std::string_view code, std::string_view message) {
  return Json{{"status", "error"}, {"error", Json{{"code", code}, {"message", message}}}};
}

std::string Dump(const Json& j) { return j.dump(-1, ' ', false, Json::error_handler_t::replace); }

bool TypeOk(ArgType t, const Json& v) {
  switch (t) {
    case ArgType::kString:
      return v.is_string();
    case ArgType::kInt:
      return v.is_number_integer();
    case ArgType::kBool:
      return v.is_boolean();
    case ArgType::kObject:
      return v.is_object();
    case ArgType::kNumber:
      return v.is_number();
    case ArgType::kStringList:
      return v.is_array() && std::all_of(v.begin(), v.end(), [](const Json& e) { return e.is_string(); });
  }
  return false;
}

// Deepest nesting of a JSON text, counted without parsing (strings skipped).
size_t NestingDepth(std::string_view s) {
  size_t depth = 0, max_depth = 0;
  bool in_str = false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (in_str) {
      if (c == '\\')
        ++i;
      else if (c == '"')
        in_str = false;
    } else if (c == '"') {
      in_str = true;
    } else if (c == '{' || c == '[') {
      max_depth = std::max(max_depth, ++depth);
    } else if ((c == '}' || c == ']') && depth > 0) {
      --depth;
    }
  }
  return max_depth;
}

}  // namespace

std::string_view RoleName(Role r) {
  switch (r) {
    case Role::kDevice:
      return "device";
    case Role::kOperator:
      return "operator";
    case Role::kAdmin:
      return "platform admin";
  }
  return "?";
}

std::string Actor::Label() const {
  return std::string(role == Role::kAdmin ? "admin:" : role == Role::kOperator ? "operator:" : "device:") + name;
}

Service::Service(storage::KvStore* kv, const Clock* clock, ServiceOptions opts)
    : kv_(kv), clock_(clock), opts_(std::move(opts)), registry_(kv) {
  jobs::Host host;
  host.online = [this](const std::string& tenant, std::string_view device) {
    const Connectivity* c = ConnectivityOf(tenant, device);
    return c != nullptr && c->online;
  };
  jobs_ = std::make_unique<jobs::JobEngine>(kv_, &registry_, clock_, std::move(host), opts_.jobs);
  runtime_.Add(jobs_.get());
  config_ = std::make_unique<config::ConfigFeature>(kv_, &registry_, clock_, jobs_.get(), opts_.config);
  runtime_.Add(config_.get());
  auto signer = [this](const std::string& tenant) -> absl::StatusOr<pki::Signer> {
    if (auto it = signers_.find(tenant); it != signers_.end()) return it->second;
    auto s = pki::EnsureTenantSigner(opts_.pki_dir, tenant, clock_->WallMs());
    if (!s.ok())
      return absl::UnavailableError("firmware signer of tenant '" + tenant + "': " + std::string(s.status().message()));
    signers_.emplace(tenant, *s);
    return *s;
  };
  ota_ = std::make_unique<ota::OtaFeature>(kv_, &registry_, clock_, jobs_.get(), std::move(signer), opts_.ota);
  runtime_.Add(ota_.get());
  health_ = std::make_unique<health::HealthFeature>(kv_, clock_, opts_.health);
  runtime_.Add(health_.get());
  registry_.SetObserver(health_.get());  // the roll-ups follow the registry
  alerts_ = std::make_unique<health::AlertFeature>(
      kv_, &registry_, clock_,
      [this](const std::string& tenant, const std::string& device) {
        const Connectivity* c = ConnectivityOf(tenant, device);
        return c != nullptr && c->online;
      },
      opts_.alerts);
  runtime_.Add(alerts_.get());
  health_->SetReportListener([a = alerts_.get()](const std::string& tenant, const std::string& device,
                                                 const std::vector<std::string>& scopes, const health::Values& v,
                                                 int64_t time_ms) { a->OnReport(tenant, device, scopes, v, time_ms); });
  health_->SetScopesListener([a = alerts_.get()](const std::string& tenant, const std::string& device,
                                                 const std::vector<std::string>& before,
                                                 const std::vector<std::string>& after) {
    a->OnScopesChanged(tenant, device, before, after);
  });
  certs_ = std::make_unique<certs::ExpiryFeature>(kv_, &registry_, clock_, opts_.certs);
  runtime_.Add(certs_.get());
  certs::RenewalHost rh;
  rh.issue = [this](const std::string& tenant, const std::string& device,
                    std::string_view csr) -> absl::StatusOr<certs::Issued> {
    auto ca = TenantCa(tenant);
    if (!ca.ok()) return absl::InternalError(std::string(ca.status().message()));
    auto cert = (*ca)->IssueFromCsr(rng_, csr, pki::Subject{tenant, device, pki::Role::kDevice}, clock_->WallMs(),
                                    opts_.device_validity_ms);
    if (!cert.ok()) return absl::InvalidArgumentError(std::string(cert.status().message()));
    auto root = RootCa();
    return certs::Issued{std::move(*cert), (*ca)->cert().pem + (root.ok() ? (*root)->cert().pem : std::string())};
  };
  rh.serial_of = [this](const std::string& tenant, const std::string& device) {
    const Connectivity* c = ConnectivityOf(tenant, device);
    return c != nullptr && c->online ? c->cert_serial : std::string();
  };
  rh.issued = [this](const std::string& tenant, const std::string& serial, const std::string& device, int64_t expires) {
    certs_->OnIssued(tenant, serial, device, expires);
  };
  certs::RenewalOptions ro = opts_.renewal;
  ro.notice_ms = opts_.certs.notice_ms;
  if (ro.auto_renew && opts_.device_validity_ms <= opts_.certs.notice_ms) {
    // Every renewed certificate would be due again at once.
    FMQ_LOG_WARN(
        "automatic certificate renewal is off: certs.device_validity_days is not longer than "
        "certs.expiry_notice_days");
    ro.auto_renew = false;
  }
  renewal_ = std::make_unique<certs::RenewalFeature>(kv_, &registry_, clock_, jobs_.get(), std::move(rh), ro);
  runtime_.Add(renewal_.get());
  certs_->SetNoticeListener([r = renewal_.get()](const std::string& tenant, const std::string& serial,
                                                 const std::string& device,
                                                 int64_t expires) { r->OnNotice(tenant, serial, device, expires); });
}

void Service::ApplyRevoked(Effects* fx) {
  if (fx->features.revoked.empty()) return;
  std::vector<std::string> tenants;
  for (auto& r : fx->features.revoked) {
    tenants.push_back(r.first);
    fx->revoked.push_back(std::move(r));
  }
  fx->features.revoked.clear();
  for (auto& tn : tenants) crl_due_.insert(std::move(tn));
}

int64_t Service::SignDueCrls(Effects* fx) {
  // The revocations themselves are live at once (fx->revoked); the CRL file
  // follows within kCrlCoalesceMs, so a wave of renewals' revocations costs
  // one signature (and one scan of the tenant's certificates) per tenant per
  // interval, not one per management turn.
  const int64_t now = clock_->WallMs();
  int64_t next = INT64_MAX;
  for (auto it = crl_due_.begin(); it != crl_due_.end();) {
    const std::string tn = *it;
    auto at = crl_signed_at_.find(tn);
    const int64_t due = at == crl_signed_at_.end() ? now : at->second + kCrlCoalesceMs;
    if (due > now) {
      next = std::min(next, due);
      ++it;
      continue;
    }
    crl_due_.erase(it++);
    if (absl::Status c = RegenerateCrl(tn, fx); !c.ok()) {
      FMQ_LOG_ERROR("CRL of tenant '%s' not regenerated: %s", tn.c_str(), std::string(c.message()).c_str());
    }
  }
  return next;
}

Service::~Service() = default;

absl::StatusOr<pki::CertificateAuthority*> Service::RootCa() {
  if (!root_) {
    auto ca = pki::CertificateAuthority::Load(pki::ReadFile(opts_.pki_dir + "/root.crt"),
                                              pki::ReadFile(opts_.pki_dir + "/root.key"));
    if (!ca.ok()) return absl::InternalError("root CA: " + std::string(ca.status().message()));
    root_ = std::make_unique<pki::CertificateAuthority>(std::move(*ca));
  }
  return root_.get();
}

absl::StatusOr<pki::CertificateAuthority*> Service::TenantCa(const std::string& tenant) {
  auto it = cas_.find(tenant);
  if (it != cas_.end()) return it->second.get();
  const std::string dir = opts_.pki_dir + "/tenants/" + tenant;
  auto ca = pki::CertificateAuthority::Load(pki::ReadFile(dir + "/ca.crt"), pki::ReadFile(dir + "/ca.key"));
  if (!ca.ok()) return absl::InternalError("CA of tenant '" + tenant + "': " + std::string(ca.status().message()));
  auto* p = new pki::CertificateAuthority(std::move(*ca));
  cas_[tenant].reset(p);
  return p;
}

absl::Status Service::CreateTenantPki(const std::string& tenant, std::string* ca_pem) {
  auto pem = pki::EnsureTenantCa(opts_.pki_dir, tenant, clock_->WallMs());
  if (!pem.ok()) return absl::InternalError("tenant CA: " + std::string(pem.status().message()));
  *ca_pem = *pem;
  return absl::OkStatus();
}

absl::Status Service::RegenerateCrl(const std::string& tenant, Effects* fx) {
  auto ca = TenantCa(tenant);
  if (!ca.ok()) return ca.status();
  std::vector<pki::Revoked> revoked;
  const TenantId t = TenantId::FromAuthenticated(tenant);
  absl::Status s = registry_.ForEachRevoked(
      [&](std::string_view, const fb::CertificateT& c) {
        revoked.push_back({c.serial, c.revoked_at_ms});
      },
      &t);
  if (!s.ok()) return s;
  const int64_t now = clock_->WallMs();
  // CRL numbers only grow: seconds since the epoch, bumped past the last.
  uint64_t number = static_cast<uint64_t>(now / 1000);
  auto crl = (*ca)->WriteCrl(rng_, revoked, number, now, now + opts_.crl_validity_ms);
  if (!crl.ok()) return crl.status();
  const std::string path = opts_.pki_dir + "/tenants/" + tenant + "/crl.der";
  if (absl::Status w = pki::WriteFileAtomic(path, *crl, 0644); !w.ok()) return w;
  crl_signed_at_[tenant] = now;
  fx->publishes.push_back({tenant, std::string(topics::kCrl), *crl, true});
  FMQ_LOG_INFO("CRL of tenant '%s' written (%zu revoked) to %s", tenant.c_str(), revoked.size(), path.c_str());
  return absl::OkStatus();
}

absl::Status Service::LoadOrRegenerateCrl(const std::string& tenant, Effects* fx) {
  // Start-up with thousands of tenants must not sign thousands of CRLs: the
  // CRL on disk is kept when it lists exactly the tenant's revoked serials
  // and is not yet due for re-signing (Tick's rule); otherwise it is re-signed.
  const std::string path = opts_.pki_dir + "/tenants/" + tenant + "/crl.der";
  const std::string der = pki::ReadFile(path);
  auto info = der.empty() ? absl::StatusOr<pki::CrlInfo>(absl::NotFoundError(path)) : pki::ReadCrl(der);
  const int64_t now = clock_->WallMs();
  if (info.ok() && now >= info->this_update_ms && now - info->this_update_ms <= opts_.crl_validity_ms / 2 &&
      now < info->next_update_ms) {
    std::vector<std::string> revoked;
    const TenantId t = TenantId::FromAuthenticated(tenant);
    absl::Status s =
        registry_.ForEachRevoked([&](std::string_view, const fb::CertificateT& c) { revoked.push_back(c.serial); }, &t);
    if (!s.ok()) return s;
    std::sort(revoked.begin(), revoked.end());
    if (revoked == info->serials) {
      crl_signed_at_[tenant] = info->this_update_ms;
      fx->publishes.push_back({tenant, std::string(topics::kCrl), der, true});
      return absl::OkStatus();
    }
  }
  return RegenerateCrl(tenant, fx);
}

absl::Status Service::Init(Effects* fx) {
  if (!rng_.status().ok()) return rng_.status();
  std::vector<std::string> tenants;
  if (DIR* d = opendir((opts_.pki_dir + "/tenants").c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") tenants.push_back(name);
    }
    closedir(d);
  }
  std::sort(tenants.begin(), tenants.end());
  WriteBatch b;
  for (const std::string& name : tenants) {
    const TenantId t = TenantId::FromAuthenticated(name);
    fb::TenantT rec;
    absl::Status g = registry_.GetTenant(t, &rec);
    if (absl::IsNotFound(g)) {  // a CA made by the first run or fleetmq-pki
      rec.tenant_id = name;
      rec.name = name;
      rec.created_at_ms = clock_->WallMs();
      registry_.PutTenant(t, rec, &b);
    } else if (!g.ok()) {
      return g;
    }
    fx->quotas.push_back({name, rec.max_connections, rec.max_publish_rate, rec.server_keepalive});
    if (absl::Status s = LoadOrRegenerateCrl(name, fx); !s.ok()) {
      FMQ_LOG_ERROR("CRL of tenant '%s' not written: %s", name.c_str(), std::string(s.message()).c_str());
    }
    for (auto st : {fb::DeviceStatus::Suspended, fb::DeviceStatus::Decommissioned, fb::DeviceStatus::Replaced}) {
      storage::DeviceFilter f;
      f.status = st;
      std::string cursor;
      do {
        storage::Page<fb::DeviceT> page;
        if (absl::Status s = registry_.ListDevices(t, f, cursor, 1000, &page); !s.ok()) return s;
        for (const auto& d : page.items) fx->blocks.push_back({name, d.device_id, true});
        cursor = page.next_cursor;
      } while (!cursor.empty());
    }
  }
  if (!b.empty()) {
    if (absl::Status s = registry_.Commit(b); !s.ok()) return s;
  }
  for (mgmt::Feature* f : runtime_.features()) {
    if (absl::Status s = f->Recover(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

std::string Service::Handle(const Actor& actor, std::string_view request, Effects* fx) {
  if (request.size() > opts_.max_request_bytes) {
    AuditDenied(actor, "request", "", "request larger than max_request_bytes");
    return Dump(ErrorJson("too_large", "request of " + std::to_string(request.size()) + " bytes exceeds the limit of " +
                                           std::to_string(opts_.max_request_bytes)));
  }
  if (NestingDepth(request) > 32) return Dump(ErrorJson("bad_request", "JSON nested deeper than 32 levels"));
  Json req = Json::parse(request, nullptr, /*allow_exceptions=*/false);
  if (req.is_discarded()) return Dump(ErrorJson("bad_request", "request is not valid JSON"));
  if (!req.is_object()) return Dump(ErrorJson("bad_request", "request must be a JSON object"));
  auto cmds = req.find("commands");
  if (cmds == req.end() || !cmds->is_array() || cmds->empty()) {
    return Dump(ErrorJson("bad_request", "request needs a non-empty \"commands\" array"));
  }
  if (cmds->size() > opts_.max_commands) {
    return Dump(ErrorJson("too_large", "at most " + std::to_string(opts_.max_commands) + " commands per request"));
  }
  Json responses = Json::array();
  for (const Json& cmd : *cmds) responses.push_back(RunOne(actor, cmd, fx));
  return Dump(Json{{"responses", responses}});
}

Json Service::RunOne(const Actor& actor, const Json& cmd, Effects* fx) {
  if (!cmd.is_object()) return ErrorJson("bad_request", "each command must be a JSON object");
  auto name_it = cmd.find("command");
  if (name_it == cmd.end() || !name_it->is_string()) {
    return ErrorJson("bad_request", "each command needs a \"command\" string");
  }
  const std::string name = name_it->get<std::string>();
  Json reply;
  auto finish = [&](Json r) {
    r["command"] = name;
    if (auto id = cmd.find("id"); id != cmd.end() && (id->is_string() || id->is_number_integer())) r["id"] = *id;
    return r;
  };
  const CommandSpec* spec = FindCommand(name);
  if (spec == nullptr) return finish(ErrorJson("unknown_command", "unknown command '" + name + "'"));
  if (spec->role != actor.role) {
    const std::string why = "command '" + name + "' needs the " + std::string(RoleName(spec->role)) +
                            " role; the certificate is a " + std::string(RoleName(actor.role));
    AuditDenied(actor, name,
                cmd.contains("device_id") && cmd["device_id"].is_string() ? cmd["device_id"].get<std::string>() : "",
                why);
    return finish(ErrorJson("forbidden", why));
  }
  Json args = Json::object();
  for (auto it = cmd.begin(); it != cmd.end(); ++it) {
    if (it.key() == "command" || it.key() == "id") continue;
    const ArgSpec* a = nullptr;
    for (const auto& s : spec->args) {
      if (it.key() == s.name) a = &s;
    }
    if (a == nullptr) return finish(ErrorJson("invalid_argument", "unknown argument '" + it.key() + "' for " + name));
    if (!TypeOk(a->type, it.value())) {
      return finish(
          ErrorJson("invalid_argument", "argument '" + it.key() + "' must be a " + std::string(ArgTypeName(a->type))));
    }
    args[it.key()] = it.value();
  }
  for (const auto& a : spec->args) {
    if (a.required && !args.contains(a.name)) {
      return finish(ErrorJson("missing_argument", "missing argument '" + std::string(a.name) + "' for " + name));
    }
  }
  // Commands read the store: every change the features made so far is in it.
  for (mgmt::Feature* f : runtime_.features()) {
    if (absl::Status s = f->Commit(&fx->features); !s.ok()) {
      return finish(
          ErrorJson("storage_error", std::string(f->name()) + " state not written: " + std::string(s.message())));
    }
  }
  ApplyRevoked(fx);
  Json data = Json::object();
  Effects local;
  WriteBatch batch;
  const int64_t now = clock_->WallMs();
  Ctx ctx{*this, actor, args, data, local, batch, now, {}, {}, {}, {}, Json(), Json()};
  absl::Status st = spec->handler(ctx);
  if (!spec->mutating) {
    if (!st.ok()) return finish(ErrorJson(ErrorCodeOf(st), std::string(st.message())));
    return finish(Json{{"status", "ok"}, {"data", data}});
  }
  // Audited: the entry travels in the change's batch; a failed command
  // writes its entry alone.
  if (!st.ok()) batch.Clear();
  Json details = args;
  if (details.contains("csr")) details["csr"] = "<" + std::to_string(args["csr"].get<std::string>().size()) + " bytes>";
  if (!ctx.audit_change.is_null()) details["change"] = ctx.audit_change;
  if (st.ok() && !ctx.certificates.is_null()) details["certificates"] = ctx.certificates;
  fb::AuditEntryT e;
  e.time_ms = now;
  e.actor = actor.Label();
  e.action = name;
  e.device_id = ctx.device_id;
  e.details_json = Dump(details);
  e.result = st.ok() ? "ok" : std::string(ErrorCodeOf(st)) + ": " + std::string(st.message());
  const TenantId t = TenantId::FromAuthenticated(actor.tenant);
  // The same entry in the history of every other device the command
  // changed (the newcomer of a replace), in the same batch.
  std::vector<fb::AuditEntryT> more;
  if (st.ok()) {
    for (const std::string& other : ctx.other_devices) {
      more.push_back(e);
      more.back().device_id = other;
    }
  }
  absl::Status a = registry_.AppendAudit(t, std::move(e), &batch);
  for (size_t i = 0; a.ok() && i < more.size(); ++i) a = registry_.AppendAudit(t, std::move(more[i]), &batch);
  if (a.ok()) a = registry_.Commit(batch);
  if (!a.ok()) {
    registry_.ForgetAuditHead(t);
    if (name == "tenant.create" && args.contains("tenant_id")) {
      registry_.ForgetAuditHead(TenantId::FromAuthenticated(args["tenant_id"].get<std::string>()));
    }
    FMQ_LOG_ERROR("admin %s by %s not committed: %s", name.c_str(), actor.Label().c_str(),
                  std::string(a.message()).c_str());
    return finish(ErrorJson("storage_error", "not committed: " + std::string(a.message())));
  }
  if (!st.ok()) return finish(ErrorJson(ErrorCodeOf(st), std::string(st.message())));
  for (auto& fn : ctx.on_commit) fn();
  std::sort(ctx.crl_tenants.begin(), ctx.crl_tenants.end());
  ctx.crl_tenants.erase(std::unique(ctx.crl_tenants.begin(), ctx.crl_tenants.end()), ctx.crl_tenants.end());
  for (const auto& tn : ctx.crl_tenants) {
    if (absl::Status c = RegenerateCrl(tn, &local); !c.ok()) {
      FMQ_LOG_ERROR("CRL of tenant '%s' not regenerated: %s", tn.c_str(), std::string(c.message()).c_str());
    }
  }
  auto append = [](auto& to, auto& from) { to.insert(to.end(), from.begin(), from.end()); };
  append(fx->kicks, local.kicks);
  append(fx->revoked, local.revoked);
  append(fx->blocks, local.blocks);
  append(fx->regroups, local.regroups);
  append(fx->quotas, local.quotas);
  append(fx->trusted_cas, local.trusted_cas);
  append(fx->publishes, local.publishes);
  return finish(Json{{"status", "ok"}, {"data", data}});
}

void Service::AuditDenied(const Actor& actor, std::string_view action, std::string_view device_id,
                          std::string_view why) {
  if (actor.tenant.empty()) return;  // anonymous clients have no tenant log
  WriteBatch b;
  fb::AuditEntryT e;
  e.time_ms = clock_->WallMs();
  e.actor = actor.Label();
  e.action = std::string(action);
  e.device_id = std::string(device_id);
  e.result = "denied: " + std::string(why);
  const TenantId t = TenantId::FromAuthenticated(actor.tenant);
  absl::Status s = registry_.AppendAudit(t, std::move(e), &b);
  if (s.ok()) s = registry_.Commit(b);
  if (!s.ok()) {
    registry_.ForgetAuditHead(t);
    FMQ_LOG_ERROR("audit of a denied %.*s not written: %s", static_cast<int>(action.size()), action.data(),
                  std::string(s.message()).c_str());
  }
}

const Connectivity* Service::ConnectivityOf(const std::string& tenant, std::string_view device_id) const {
  auto t = conn_.find(tenant);
  if (t == conn_.end()) return nullptr;
  auto d = t->second.find(device_id);
  return d == t->second.end() ? nullptr : &d->second;
}

void Service::OnConnectivity(const std::vector<ConnEvent>& events) {
  WriteBatch b;
  struct Pending {
    fb::DeviceT rec;
    std::string tenant;
  };
  StringMap<Pending> devices;  // tenant \0 device → record changed in this batch
  std::vector<std::string> touched;
  absl::Status err = absl::OkStatus();
  for (const ConnEvent& ev : events) {
    const TenantId t = TenantId::FromAuthenticated(ev.tenant);
    if (ev.counters_only) {
      health_->OnLink(t, ev.device_id, {health::LinkEvent::Kind::kCounters, ev.wall_ms, ev.counters, "", ""});
      continue;
    }
    Connectivity& c = conn_[ev.tenant][ev.device_id];
    const bool was_online = c.online;
    c.online = ev.connected;
    c.last_seen_ms = ev.wall_ms;
    if (ev.connected) {
      c.connected_since_ms = ev.wall_ms;
      c.cert_serial = ev.serial;
      for (mgmt::Feature* f : runtime_.features()) f->OnConnected(ev.tenant, ev.device_id);
    } else {
      c.last_disconnect_reason = ev.reason;
      for (mgmt::Feature* f : runtime_.features()) f->OnDisconnected(ev.tenant, ev.device_id);
    }
    std::string key = ev.tenant;
    key.push_back('\0');
    key += ev.device_id;
    auto it = devices.find(key);
    if (it == devices.end()) {
      fb::DeviceT d;
      absl::Status g = registry_.GetDevice(t, ev.device_id, &d);
      if (g.ok()) {
        it = devices.emplace(key, Pending{std::move(d), ev.tenant}).first;
      } else if (!absl::IsNotFound(g)) {
        err = g;
      }
    }
    // The roll-ups' online counts mirror c.online, in the scopes the device
    // had when it connected (so a move while connected cannot skew them).
    if (was_online) {
      health_->OnlineChanged(ev.tenant, c.scopes, -1);
      c.scopes.clear();
    }
    if (ev.connected && it != devices.end()) {
      c.scopes = health::ScopesOf(it->second.rec);
      health_->OnlineChanged(ev.tenant, c.scopes, +1);
    }
    if (it != devices.end()) {
      using K = health::LinkEvent::Kind;
      health_->OnLink(t, ev.device_id,
                      {ev.connected ? K::kConnected : K::kDisconnected, ev.wall_ms, ev.counters, ev.reason, ev.error});
    }
    std::string action = ev.connected ? "device.connected" : "device.disconnected";
    Json details{{"peer", ev.peer}};
    if (!ev.connected) details["reason"] = ev.reason;
    if (!ev.error.empty()) details["error"] = ev.error;
    if (it != devices.end()) {
      fb::DeviceT& d = it->second.rec;
      if (d.first_seen_at_ms == 0) d.first_seen_at_ms = ev.wall_ms;
      d.last_seen_at_ms = ev.wall_ms;
      if (ev.connected && d.status == fb::DeviceStatus::Provisioned) {
        d.status = fb::DeviceStatus::Active;  // first connection activates
        details["activated"] = true;
      }
    }
    fb::AuditEntryT e;
    e.time_ms = ev.wall_ms;
    e.actor = "broker";
    e.action = std::move(action);
    e.device_id = ev.device_id;
    e.details_json = Dump(details);
    e.result = "ok";
    if (absl::Status s = registry_.AppendAudit(t, std::move(e), &b); !s.ok()) err = s;
    touched.push_back(ev.tenant);
  }
  for (auto& entry : devices) {
    const Pending& p = entry.second;
    if (absl::Status s = registry_.PutDevice(TenantId::FromAuthenticated(p.tenant), p.rec, &b); !s.ok()) {
      err = s;
    }
  }
  if (err.ok()) err = registry_.Commit(b);
  if (!err.ok()) {
    for (const auto& tn : touched) registry_.ForgetAuditHead(TenantId::FromAuthenticated(tn));
    FMQ_LOG_ERROR("connectivity of %zu events not recorded: %s", events.size(), std::string(err.message()).c_str());
  }
}

void Service::OnDeviceMessage(const mgmt::DeviceMessage& m) {
  if (mgmt::Feature* f = runtime_.OwnerOf(m.topic); f != nullptr) f->OnDeviceMessage(m);
}

void Service::OnSubscribed(const std::string& tenant, const std::string& device_id) {
  const Connectivity* c = ConnectivityOf(tenant, device_id);
  if (c == nullptr || !c->online) return;  // disconnected again meanwhile
  for (mgmt::Feature* f : runtime_.features()) f->OnSubscribed(tenant, device_id);
}

void Service::OnDeliveryOutcome(uint64_t token, bool acked, std::string_view why) {
  if (mgmt::Feature* f = runtime_.ByToken(token); f != nullptr) f->OnOutcome(token, acked, why);
}

void Service::DeviceJoined(const storage::TenantId& t, const fb::DeviceT& d) {
  for (mgmt::Feature* f : runtime_.features()) f->OnDeviceJoined(t, d);
}

void Service::DeviceRetired(const storage::TenantId& t, const std::string& device_id) {
  for (mgmt::Feature* f : runtime_.features()) f->OnDeviceRetired(t, device_id);
}

int64_t Service::Pump(Effects* fx) {
  int64_t next = INT64_MAX;
  for (mgmt::Feature* f : runtime_.features()) {
    next = std::min(next, f->Pump());
    if (absl::Status s = f->Commit(&fx->features); !s.ok()) {
      FMQ_LOG_ERROR("%s state not committed: %s", std::string(f->name()).c_str(), std::string(s.message()).c_str());
    }
  }
  ApplyRevoked(fx);
  return std::min(next, SignDueCrls(fx));
}

void Service::Tick(Effects* fx) {
  const int64_t now = clock_->WallMs();
  if (now - last_tick_ms_ < 60'000) return;
  last_tick_ms_ = now;
  std::vector<std::string> due;
  for (const auto& [tenant, at] : crl_signed_at_) {
    if (now - at > opts_.crl_validity_ms / 2) due.push_back(tenant);
  }
  for (const auto& t : due) {
    if (absl::Status s = RegenerateCrl(t, fx); !s.ok()) {
      FMQ_LOG_ERROR("CRL of tenant '%s' not re-signed: %s", t.c_str(), std::string(s.message()).c_str());
    }
  }
}

}  // namespace fmq::admin
