// The admin command table and its handlers. Every handler works inside the
// tenant of the caller's certificate (ctx.tenant()); nothing in a request
// can name another tenant. Handlers only add to ctx.batch: the Service
// commits it with the audit entry, so a failed command writes nothing.
#include "mgmt/admin/commands.h"

#include <algorithm>
#include <cstdio>

#include "absl/status/statusor.h"
#include "common/hex.h"
#include "mgmt/jobs/window.h"

namespace fmq::admin {

bool ValidId(std::string_view s) { return pki::SafeName(s) && s[0] != '_'; }

absl::Status CheckId(const char* what, std::string_view s) {
  if (ValidId(s)) return absl::OkStatus();
  return absl::InvalidArgumentError(std::string(what) +
                                    " must be 1..128 of letters, digits and - _ . : @ (not starting with '_')");
}

size_t PageLimit(Service::Ctx& ctx, size_t ceiling) {
  int64_t l = ctx.Int("limit", kDefaultPage);
  if (l < 1) l = 1;
  return std::min<size_t>(static_cast<size_t>(l), ceiling);
}

absl::Status CheckLimit(Service::Ctx& ctx) {
  if (ctx.Has("limit") && ctx.Int("limit") < 1) return absl::InvalidArgumentError("limit must be at least 1");
  return absl::OkStatus();
}

namespace {

using storage::Page;
using Status = absl::Status;

// Tenant ids also name directories and DNS-like labels: lowercase.
Status CheckTenantId(std::string_view s) {
  bool ok = !s.empty() && s.size() <= 63 && (std::isalnum(static_cast<unsigned char>(s[0])) != 0);
  for (char c : s) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-');
  return ok ? absl::OkStatus()
            : absl::InvalidArgumentError(
                  "tenant_id must be 1..63 of a-z, 0-9 and '-', starting with a letter or digit");
}

std::string_view StatusName(fb::DeviceStatus s) {
  switch (s) {
    case fb::DeviceStatus::Registered:
      return "registered";
    case fb::DeviceStatus::Provisioned:
      return "provisioned";
    case fb::DeviceStatus::Active:
      return "active";
    case fb::DeviceStatus::Suspended:
      return "suspended";
    case fb::DeviceStatus::Decommissioned:
      return "decommissioned";
    case fb::DeviceStatus::Replaced:
      return "replaced";
  }
  return "unknown";
}

bool ParseStatus(std::string_view s, fb::DeviceStatus* out) {
  for (auto st : {fb::DeviceStatus::Registered, fb::DeviceStatus::Provisioned, fb::DeviceStatus::Active,
                  fb::DeviceStatus::Suspended, fb::DeviceStatus::Decommissioned, fb::DeviceStatus::Replaced}) {
    if (StatusName(st) == s) {
      *out = st;
      return true;
    }
  }
  return false;
}

Json ParsedOrString(const std::string& text) {
  if (text.empty()) return Json::object();
  Json j = Json::parse(text, nullptr, false);
  return j.is_discarded() ? Json(text) : j;
}

Json DeviceJson(const Service::Ctx& ctx, const fb::DeviceT& d) {
  Json j{{"device_id", d.device_id},
         {"serial_number", d.serial_number},
         {"model_id", d.model_id},
         {"group_ids", d.group_ids},
         {"firmware_version", d.firmware_version},
         {"config_version", d.config_version},
         {"status", StatusName(d.status)},
         {"first_seen_at_ms", d.first_seen_at_ms},
         {"last_seen_at_ms", d.last_seen_at_ms},
         {"created_at_ms", d.created_at_ms},
         {"cert_serial", d.cert_serial}};
  if (!d.replaced_by.empty()) j["replaced_by"] = d.replaced_by;
  // Live connectivity from the broker's connect/disconnect hooks.
  const Connectivity* c = ctx.ConnectivityOf(d.device_id);
  j["online"] = c != nullptr && c->online;
  if (c != nullptr) {
    if (c->online) j["connected_since_ms"] = c->connected_since_ms;
    j["last_seen_at_ms"] = std::max(d.last_seen_at_ms, c->last_seen_ms);
    if (!c->last_disconnect_reason.empty()) j["last_disconnect_reason"] = c->last_disconnect_reason;
  }
  return j;
}

Json GroupJson(const fb::DeviceGroupT& g) {
  return Json{{"group_id", g.group_id},
              {"name", g.name},
              {"config_template", ParsedOrString(g.config_template_json)},
              {"config_version", g.config_version},
              {"config_priority", g.config_priority},
              {"firmware_target_version", g.firmware_target_version}};
}

Json ModelJson(const fb::DeviceModelT& m) {
  return Json{{"model_id", m.model_id},
              {"manufacturer", m.manufacturer},
              {"hw_revision", m.hw_revision},
              {"supported_protocols", m.supported_protocols},
              {"default_config", ParsedOrString(m.default_config_json)},
              {"config_version", m.config_version}};
}

Json AuditJson(const fb::AuditEntryT& e) {
  return Json{{"seq", e.seq},
              {"time_ms", e.time_ms},
              {"actor", e.actor},
              {"action", e.action},
              {"device_id", e.device_id},
              {"details", ParsedOrString(e.details_json)},
              {"result", e.result},
              {"hash", HexOf(std::string(e.hash.begin(), e.hash.end()))}};
}

Status NotFound(const char* what, std::string_view id) {
  return absl::NotFoundError(std::string(what) + " '" + std::string(id) + "' not found");
}

// Loads a device of the caller's tenant.
Status LoadDevice(Service::Ctx& ctx, const std::string& id, fb::DeviceT* d) {
  ctx.device_id = id;
  Status s = ctx.reg().GetDevice(ctx.tenant(), id, d);
  if (absl::IsNotFound(s)) return NotFound("device", id);
  return s;
}

Status BadTransition(const fb::DeviceT& d, std::string_view action) {
  return absl::FailedPreconditionError("cannot " + std::string(action) + " device '" + d.device_id + "': it is " +
                                       std::string(StatusName(d.status)));
}

// Issues a device certificate from `csr` and records it in the batch.
Status IssueCert(Service::Ctx& ctx, const fb::DeviceT& d, const std::string& csr, pki::Certificate* out) {
  auto ca = ctx.TenantCa(ctx.actor.tenant);
  if (!ca.ok()) return ca.status();
  auto cert = (*ca)->IssueFromCsr(ctx.rng(), csr, pki::Subject{ctx.actor.tenant, d.device_id, pki::Role::kDevice},
                                  ctx.now_ms, ctx.opts().device_validity_ms);
  if (!cert.ok()) return absl::InvalidArgumentError("csr: " + std::string(cert.status().message()));
  fb::CertificateT rec;
  rec.serial = cert->serial;
  rec.device_id = d.device_id;
  rec.issued_at_ms = cert->not_before_ms;
  rec.expires_at_ms = cert->not_after_ms;
  rec.der.assign(cert->der.begin(), cert->der.end());
  ctx.reg().PutCert(ctx.tenant(), rec, &ctx.batch);
  ctx.NoteCert("issued", rec);
  ctx.on_commit.push_back([f = &ctx.certs(), tenant = ctx.actor.tenant, serial = rec.serial, dev = d.device_id,
                           exp = rec.expires_at_ms] { f->OnIssued(tenant, serial, dev, exp); });
  *out = std::move(*cert);
  return absl::OkStatus();
}

void CertReply(Service::Ctx& ctx, const pki::Certificate& cert, pki::CertificateAuthority* ca) {
  ctx.data["certificate_pem"] = cert.pem;
  ctx.data["certificate_serial"] = cert.serial;
  ctx.data["expires_at_ms"] = cert.not_after_ms;
  auto root = ctx.RootCa();
  ctx.data["ca_chain_pem"] = ca->cert().pem + (root.ok() ? (*root)->cert().pem : std::string());
  ctx.data["mqtt_endpoint"] = ctx.opts().mqtt_endpoint;
}

// Revokes every unrevoked certificate of a device, closes its connection
// and keeps it out (decommission, replace).
Status RetireDevice(Service::Ctx& ctx, const fb::DeviceT& d) {
  std::vector<fb::CertificateT> certs;
  if (Status s = ctx.reg().CertsOfDevice(ctx.tenant(), d.device_id, &certs); !s.ok()) return s;
  for (const auto& c : certs) {
    if (c.revoked_at_ms != 0) continue;
    if (Status s = ctx.reg().RevokeCert(ctx.tenant(), c.serial, ctx.now_ms, &ctx.batch); !s.ok()) return s;
    ctx.NoteCert("revoked", c);
    ctx.fx.revoked.emplace_back(ctx.actor.tenant, c.serial);
  }
  ctx.crl_tenants.push_back(ctx.actor.tenant);
  ctx.fx.blocks.push_back({ctx.actor.tenant, d.device_id, true});
  ctx.fx.kicks.push_back({ctx.actor.tenant, d.device_id});
  return absl::OkStatus();
}

// ---- tenants (platform admin) ----

// The settable fields of a tenant given in the command (tenant.create,
// tenant.update), checked, onto `rec`; nothing changes on an error.
Status ApplyTenantArgs(Service::Ctx& ctx, fb::TenantT* rec) {
  for (const char* q : {"max_connections", "max_publish_rate"}) {
    if (ctx.Has(q) && (ctx.Int(q) < 0 || ctx.Int(q) > UINT32_MAX)) {
      return absl::InvalidArgumentError("quotas must be between 0 (unlimited) and 4294967295");
    }
  }
  if (ctx.Has("server_keepalive") && (ctx.Int("server_keepalive") < 0 || ctx.Int("server_keepalive") > 65535)) {
    return absl::InvalidArgumentError("server_keepalive must be between 0 (the node's) and 65535 seconds");
  }
  absl::TimeZone tz;
  if (ctx.Has("time_zone")) {
    if (Status s = jobs::LoadZone(ctx.Str("time_zone"), &tz); !s.ok()) return s;
    rec->time_zone = ctx.Str("time_zone");
  }
  if (ctx.Has("name")) rec->name = ctx.Str("name");
  if (ctx.Has("max_connections")) rec->max_connections = static_cast<uint32_t>(ctx.Int("max_connections"));
  if (ctx.Has("max_publish_rate")) rec->max_publish_rate = static_cast<uint32_t>(ctx.Int("max_publish_rate"));
  if (ctx.Has("server_keepalive")) rec->server_keepalive = static_cast<uint16_t>(ctx.Int("server_keepalive"));
  return absl::OkStatus();
}

Status TenantCreate(Service::Ctx& ctx) {
  const std::string id = ctx.Str("tenant_id");
  if (Status s = CheckTenantId(id); !s.ok()) return s;
  const auto t = storage::TenantId::FromAuthenticated(id);
  fb::TenantT rec;
  Status g = ctx.reg().GetTenant(t, &rec);
  if (g.ok()) return absl::AlreadyExistsError("tenant '" + id + "' already exists");
  if (!absl::IsNotFound(g)) return g;
  rec = fb::TenantT();
  rec.tenant_id = id;
  rec.name = id;
  rec.time_zone = "UTC";
  rec.created_at_ms = ctx.now_ms;
  // Checked before the tenant's PKI is made.
  if (Status s = ApplyTenantArgs(ctx, &rec); !s.ok()) return s;
  std::string ca_pem;
  if (Status s = ctx.CreateTenantPki(id, &ca_pem); !s.ok()) return s;
  ctx.reg().PutTenant(t, rec, &ctx.batch);
  // The tenant's own chain starts with its creation.
  fb::AuditEntryT e;
  e.time_ms = ctx.now_ms;
  e.actor = ctx.actor.Label();
  e.action = "tenant.create";
  e.result = "ok";
  if (Status s = ctx.reg().AppendAudit(t, std::move(e), &ctx.batch); !s.ok()) return s;
  ctx.fx.trusted_cas.push_back(ca_pem);
  ctx.fx.quotas.push_back({id, rec.max_connections, rec.max_publish_rate, rec.server_keepalive});
  ctx.crl_tenants.push_back(id);
  ctx.data = Json{{"tenant_id", id}, {"name", rec.name}, {"time_zone", rec.time_zone}, {"ca_pem", ca_pem}};
  return absl::OkStatus();
}

Json TenantJson(const fb::TenantT& t) {
  return Json{{"tenant_id", t.tenant_id},
              {"name", t.name},
              {"created_at_ms", t.created_at_ms},
              {"max_connections", t.max_connections},
              {"max_publish_rate", t.max_publish_rate},
              {"time_zone", t.time_zone.empty() ? "UTC" : t.time_zone},
              {"server_keepalive", t.server_keepalive}};
}

// Name, quotas and time zone of an existing tenant; an entry in the
// tenant's own audit chain says what changed.
Status TenantUpdate(Service::Ctx& ctx) {
  const std::string id = ctx.Str("tenant_id");
  if (Status s = CheckTenantId(id); !s.ok()) return s;
  const auto t = storage::TenantId::FromAuthenticated(id);
  fb::TenantT rec;
  if (Status g = ctx.reg().GetTenant(t, &rec); !g.ok()) {
    return absl::IsNotFound(g) ? absl::NotFoundError("no tenant '" + id + "'") : g;
  }
  const Json before = TenantJson(rec);
  if (Status s = ApplyTenantArgs(ctx, &rec); !s.ok()) return s;
  const Json after = TenantJson(rec);
  Json change = Json::object();
  for (auto it = after.begin(); it != after.end(); ++it) {
    if (before[it.key()] != it.value()) change[it.key()] = Json{{"from", before[it.key()]}, {"to", it.value()}};
  }
  ctx.data = after;
  if (change.empty()) return absl::OkStatus();
  ctx.reg().PutTenant(t, rec, &ctx.batch);
  fb::AuditEntryT e;
  e.time_ms = ctx.now_ms;
  e.actor = ctx.actor.Label();
  e.action = "tenant.update";
  e.details_json = Json{{"change", change}}.dump();
  e.result = "ok";
  if (Status s = ctx.reg().AppendAudit(t, std::move(e), &ctx.batch); !s.ok()) return s;
  ctx.audit_change = change;
  ctx.fx.quotas.push_back({id, rec.max_connections, rec.max_publish_rate, rec.server_keepalive});
  return absl::OkStatus();
}

Status TenantList(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  Page<fb::TenantT> page;
  if (Status s = ctx.reg().ListTenants(ctx.Str("cursor"), PageLimit(ctx, ctx.opts().max_page), &page); !s.ok())
    return s;
  Json items = Json::array();
  for (const auto& t : page.items) items.push_back(TenantJson(t));
  ctx.data = Json{{"tenants", items}, {"next_cursor", page.next_cursor}};
  return absl::OkStatus();
}

// ---- models ----

Status ModelCreate(Service::Ctx& ctx) {
  const std::string id = ctx.Str("model_id");
  if (Status s = CheckId("model_id", id); !s.ok()) return s;
  fb::DeviceModelT m;
  Status g = ctx.reg().GetModel(ctx.tenant(), id, &m);
  if (g.ok()) return absl::AlreadyExistsError("model '" + id + "' already exists");
  if (!absl::IsNotFound(g)) return g;
  m.model_id = id;
  m.manufacturer = ctx.Str("manufacturer");
  m.hw_revision = ctx.Str("hw_revision");
  m.supported_protocols = ctx.List("supported_protocols");
  Json change;
  if (ctx.Has("default_config")) {
    if (Status s = ChangeModelDocument(ctx, &m, ctx.args["default_config"], false, &change); !s.ok()) return s;
  }
  ctx.reg().PutModel(ctx.tenant(), m, &ctx.batch);
  ctx.data = ModelJson(m);
  return absl::OkStatus();
}

Status ModelList(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  Page<fb::DeviceModelT> page;
  if (Status s = ctx.reg().ListModels(ctx.tenant(), ctx.Str("cursor"), PageLimit(ctx, ctx.opts().max_page), &page);
      !s.ok()) {
    return s;
  }
  Json items = Json::array();
  for (const auto& m : page.items) items.push_back(ModelJson(m));
  ctx.data = Json{{"models", items}, {"next_cursor", page.next_cursor}};
  return absl::OkStatus();
}

// ---- groups ----

Status GroupCreate(Service::Ctx& ctx) {
  const std::string id = ctx.Str("group_id");
  if (Status s = CheckId("group_id", id); !s.ok()) return s;
  fb::DeviceGroupT g;
  Status st = ctx.reg().GetGroup(ctx.tenant(), id, &g);
  if (st.ok()) return absl::AlreadyExistsError("group '" + id + "' already exists");
  if (!absl::IsNotFound(st)) return st;
  g.group_id = id;
  g.name = ctx.Str("name", id);
  g.firmware_target_version = ctx.Str("firmware_target_version");
  Json change;
  if (ctx.Has("config_template")) {
    if (Status s = ChangeGroupDocument(ctx, &g, ctx.args["config_template"], false, &change); !s.ok()) return s;
  }
  Json fw;
  if (!g.firmware_target_version.empty()) {
    if (Status s = GroupFirmwareTarget(ctx, g, &fw); !s.ok()) return s;
  }
  ctx.reg().PutGroup(ctx.tenant(), g, &ctx.batch);
  ctx.data = GroupJson(g);
  if (!fw.is_null()) ctx.data["firmware"] = fw;
  return absl::OkStatus();
}

Status GroupGet(Service::Ctx& ctx) {
  const std::string id = ctx.Str("group_id");
  fb::DeviceGroupT g;
  Status st = ctx.reg().GetGroup(ctx.tenant(), id, &g);
  if (absl::IsNotFound(st)) return NotFound("group", id);
  if (!st.ok()) return st;
  ctx.data = GroupJson(g);
  return absl::OkStatus();
}

Status GroupList(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  Page<fb::DeviceGroupT> page;
  if (Status s = ctx.reg().ListGroups(ctx.tenant(), ctx.Str("cursor"), PageLimit(ctx, ctx.opts().max_page), &page);
      !s.ok()) {
    return s;
  }
  Json items = Json::array();
  for (const auto& g : page.items) items.push_back(GroupJson(g));
  ctx.data = Json{{"groups", items}, {"next_cursor", page.next_cursor}};
  return absl::OkStatus();
}

Status GroupUpdate(Service::Ctx& ctx) {
  const std::string id = ctx.Str("group_id");
  fb::DeviceGroupT g;
  Status st = ctx.reg().GetGroup(ctx.tenant(), id, &g);
  if (absl::IsNotFound(st)) return NotFound("group", id);
  if (!st.ok()) return st;
  if (!ctx.Has("name") && !ctx.Has("config_template") && !ctx.Has("firmware_target_version")) {
    return absl::InvalidArgumentError("nothing to update: give name, config_template or firmware_target_version");
  }
  if (ctx.Has("name")) g.name = ctx.Str("name");
  if (ctx.Has("firmware_target_version")) g.firmware_target_version = ctx.Str("firmware_target_version");
  Json change;
  if (ctx.Has("config_template")) {
    // A new version of the template, to the members as a config job.
    if (Status s = ChangeGroupDocument(ctx, &g, ctx.args["config_template"], true, &change); !s.ok()) return s;
  }
  Json fw;
  if (ctx.Has("firmware_target_version")) {
    if (Status s = GroupFirmwareTarget(ctx, g, &fw); !s.ok()) return s;
  }
  ctx.reg().PutGroup(ctx.tenant(), g, &ctx.batch);
  ctx.data = GroupJson(g);
  if (!change.is_null()) ctx.data["config"] = change;
  if (!fw.is_null()) ctx.data["firmware"] = fw;
  return absl::OkStatus();
}

// ---- devices ----

Status CheckGroups(Service::Ctx& ctx, const std::vector<std::string>& groups) {
  for (const auto& gid : groups) {
    fb::DeviceGroupT g;
    Status st = ctx.reg().GetGroup(ctx.tenant(), gid, &g);
    if (absl::IsNotFound(st)) return NotFound("group", gid);
    if (!st.ok()) return st;
  }
  return absl::OkStatus();
}

Status DeviceRegister(Service::Ctx& ctx) {
  const std::string serial = ctx.Str("serial_number");
  const std::string model = ctx.Str("model_id");
  if (serial.empty() || serial.size() > 128) return absl::InvalidArgumentError("serial_number must be 1..128 bytes");
  fb::DeviceModelT m;
  Status st = ctx.reg().GetModel(ctx.tenant(), model, &m);
  if (absl::IsNotFound(st)) return NotFound("model", model);
  if (!st.ok()) return st;
  std::vector<std::string> groups = ctx.List("group_ids");
  std::sort(groups.begin(), groups.end());
  groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
  if (Status s = CheckGroups(ctx, groups); !s.ok()) return s;
  storage::DeviceFilter by_serial;
  by_serial.serial_number = serial;
  Page<fb::DeviceT> dup;
  if (Status s = ctx.reg().ListDevices(ctx.tenant(), by_serial, "", 1, &dup); !s.ok()) return s;
  if (!dup.items.empty()) {
    return absl::AlreadyExistsError("serial_number '" + serial + "' is already device '" + dup.items[0].device_id +
                                    "'");
  }
  std::string id = ctx.Str("device_id");
  if (id.empty()) {
    unsigned char rnd[8];
    pki::Rng::Fill(&ctx.rng(), rnd, sizeof rnd);
    id = "d-" + HexOf(rnd, sizeof rnd);
  }
  if (Status s = CheckId("device_id", id); !s.ok()) return s;
  ctx.device_id = id;
  fb::DeviceT d;
  st = ctx.reg().GetDevice(ctx.tenant(), id, &d);
  if (st.ok()) return absl::AlreadyExistsError("device '" + id + "' already exists");
  if (!absl::IsNotFound(st)) return st;
  d.device_id = id;
  d.tenant_id = ctx.actor.tenant;
  d.serial_number = serial;
  d.model_id = model;
  d.group_ids = groups;
  d.firmware_version = ctx.Str("firmware_version");
  d.status = fb::DeviceStatus::Registered;
  d.created_at_ms = ctx.now_ms;
  pki::Certificate cert;
  if (ctx.Has("csr")) {
    if (Status s = IssueCert(ctx, d, ctx.Str("csr"), &cert); !s.ok()) return s;
    d.cert_serial = cert.serial;
    d.status = fb::DeviceStatus::Provisioned;
  }
  if (Status s = ctx.reg().PutDevice(ctx.tenant(), d, &ctx.batch); !s.ok()) return s;
  ctx.on_commit.push_back([&svc = ctx.svc, t = ctx.tenant(), d] { svc.DeviceJoined(t, d); });
  ctx.data = Json{{"device_id", id}, {"status", StatusName(d.status)}};
  if (!d.cert_serial.empty()) CertReply(ctx, cert, *ctx.TenantCa(ctx.actor.tenant));
  return absl::OkStatus();
}

Status DeviceProvision(Service::Ctx& ctx) {
  fb::DeviceT d;
  if (Status s = LoadDevice(ctx, ctx.Str("device_id"), &d); !s.ok()) return s;
  if (d.status != fb::DeviceStatus::Registered && d.status != fb::DeviceStatus::Provisioned) {
    return BadTransition(d, "provision");
  }
  // Re-provisioning replaces the certificate: the old one is revoked.
  if (!d.cert_serial.empty()) {
    fb::CertificateT old;
    if (ctx.reg().GetCert(ctx.tenant(), d.cert_serial, &old).ok() && old.revoked_at_ms == 0)
      ctx.NoteCert("revoked", old);
    if (Status s = ctx.reg().RevokeCert(ctx.tenant(), d.cert_serial, ctx.now_ms, &ctx.batch); !s.ok()) return s;
    ctx.fx.revoked.emplace_back(ctx.actor.tenant, d.cert_serial);  // closes what uses it
    ctx.crl_tenants.push_back(ctx.actor.tenant);
  }
  pki::Certificate cert;
  if (Status s = IssueCert(ctx, d, ctx.Str("csr"), &cert); !s.ok()) return s;
  d.cert_serial = cert.serial;
  d.status = fb::DeviceStatus::Provisioned;
  if (Status s = ctx.reg().PutDevice(ctx.tenant(), d, &ctx.batch); !s.ok()) return s;
  ctx.data = Json{{"device_id", d.device_id}, {"status", StatusName(d.status)}};
  CertReply(ctx, cert, *ctx.TenantCa(ctx.actor.tenant));
  return absl::OkStatus();
}

// The simple transitions of the lifecycle table.
Status Transition(Service::Ctx& ctx, std::string_view action, std::initializer_list<fb::DeviceStatus> from,
                  fb::DeviceStatus to) {
  fb::DeviceT d;
  if (Status s = LoadDevice(ctx, ctx.Str("device_id"), &d); !s.ok()) return s;
  if (std::find(from.begin(), from.end(), d.status) == from.end()) return BadTransition(d, action);
  d.status = to;
  if (Status s = ctx.reg().PutDevice(ctx.tenant(), d, &ctx.batch); !s.ok()) return s;
  if (to == fb::DeviceStatus::Suspended) {
    ctx.fx.blocks.push_back({ctx.actor.tenant, d.device_id, true});
    ctx.fx.kicks.push_back({ctx.actor.tenant, d.device_id});
  } else if (action == "resume") {
    ctx.fx.blocks.push_back({ctx.actor.tenant, d.device_id, false});
  }
  ctx.data = DeviceJson(ctx, d);
  return absl::OkStatus();
}

Status DeviceActivate(Service::Ctx& ctx) {
  return Transition(ctx, "activate", {fb::DeviceStatus::Provisioned}, fb::DeviceStatus::Active);
}
Status DeviceSuspend(Service::Ctx& ctx) {
  return Transition(ctx, "suspend", {fb::DeviceStatus::Active, fb::DeviceStatus::Provisioned},
                    fb::DeviceStatus::Suspended);
}
Status DeviceResume(Service::Ctx& ctx) {
  return Transition(ctx, "resume", {fb::DeviceStatus::Suspended}, fb::DeviceStatus::Active);
}

Status DeviceDecommission(Service::Ctx& ctx) {
  fb::DeviceT d;
  if (Status s = LoadDevice(ctx, ctx.Str("device_id"), &d); !s.ok()) return s;
  if (d.status == fb::DeviceStatus::Decommissioned || d.status == fb::DeviceStatus::Replaced) {
    return BadTransition(d, "decommission");
  }
  if (Status s = RetireDevice(ctx, d); !s.ok()) return s;
  ctx.on_commit.push_back([&svc = ctx.svc, t = ctx.tenant(), id = d.device_id] { svc.DeviceRetired(t, id); });
  d.status = fb::DeviceStatus::Decommissioned;  // the record stays, archived
  if (Status s = ctx.reg().PutDevice(ctx.tenant(), d, &ctx.batch); !s.ok()) return s;
  ctx.data = DeviceJson(ctx, d);
  return absl::OkStatus();
}

Status DeviceReplace(Service::Ctx& ctx) {
  fb::DeviceT old_d, new_d;
  const std::string new_id = ctx.Str("new_device_id");
  if (Status s = LoadDevice(ctx, ctx.Str("device_id"), &old_d); !s.ok()) return s;
  if (new_id == old_d.device_id) return absl::InvalidArgumentError("a device cannot replace itself");
  Status st = ctx.reg().GetDevice(ctx.tenant(), new_id, &new_d);
  if (absl::IsNotFound(st)) return NotFound("device", new_id);
  if (!st.ok()) return st;
  if (old_d.status != fb::DeviceStatus::Provisioned && old_d.status != fb::DeviceStatus::Active &&
      old_d.status != fb::DeviceStatus::Suspended) {
    return BadTransition(old_d, "replace");
  }
  if (new_d.status != fb::DeviceStatus::Registered && new_d.status != fb::DeviceStatus::Provisioned) {
    return absl::FailedPreconditionError("the replacement '" + new_id + "' must be registered or provisioned; it is " +
                                         std::string(StatusName(new_d.status)));
  }
  // The newcomer takes the old device's place: groups (moved, so group
  // listings and group jobs no longer reach the retired device) and
  // configuration.
  new_d.group_ids = std::move(old_d.group_ids);
  old_d.group_ids.clear();
  ctx.other_devices.push_back(new_id);
  new_d.config_version = old_d.config_version;
  // The old device's own configuration document becomes the newcomer's.
  if (Status s = ctx.config().CarryOver(ctx.tenant(), old_d.device_id, new_id, ctx.actor.Label(), &ctx.batch);
      !s.ok()) {
    return s;
  }
  if (Status s = RetireDevice(ctx, old_d); !s.ok()) return s;
  ctx.on_commit.push_back([&svc = ctx.svc, t = ctx.tenant(), id = old_d.device_id] { svc.DeviceRetired(t, id); });
  old_d.status = fb::DeviceStatus::Replaced;
  old_d.replaced_by = new_id;
  if (Status s = ctx.reg().PutDevice(ctx.tenant(), old_d, &ctx.batch); !s.ok()) return s;
  if (Status s = ctx.reg().PutDevice(ctx.tenant(), new_d, &ctx.batch); !s.ok()) return s;
  ctx.on_commit.push_back([&svc = ctx.svc, t = ctx.tenant(), new_d] { svc.DeviceJoined(t, new_d); });
  ctx.data = Json{{"old", DeviceJson(ctx, old_d)}, {"new", DeviceJson(ctx, new_d)}};
  return absl::OkStatus();
}

Status DeviceSetGroups(Service::Ctx& ctx) {
  fb::DeviceT d;
  if (Status s = LoadDevice(ctx, ctx.Str("device_id"), &d); !s.ok()) return s;
  if (d.status == fb::DeviceStatus::Decommissioned || d.status == fb::DeviceStatus::Replaced) {
    return BadTransition(d, "set_groups");
  }
  std::vector<std::string> groups = ctx.List("group_ids");
  std::sort(groups.begin(), groups.end());
  groups.erase(std::unique(groups.begin(), groups.end()), groups.end());
  if (Status s = CheckGroups(ctx, groups); !s.ok()) return s;
  std::vector<std::string> old_groups = std::move(d.group_ids);
  d.group_ids = groups;
  if (Status s = ctx.reg().PutDevice(ctx.tenant(), d, &ctx.batch); !s.ok()) return s;
  ctx.fx.regroups.push_back({ctx.actor.tenant, d.device_id, std::move(old_groups), groups});
  ctx.on_commit.push_back([&svc = ctx.svc, t = ctx.tenant(), d] { svc.DeviceJoined(t, d); });
  ctx.data = DeviceJson(ctx, d);
  return absl::OkStatus();
}

Status DeviceGet(Service::Ctx& ctx) {
  fb::DeviceT d;
  if (Status s = LoadDevice(ctx, ctx.Str("device_id"), &d); !s.ok()) return s;
  ctx.data = DeviceJson(ctx, d);
  return absl::OkStatus();
}

Status DeviceList(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  storage::DeviceFilter f;
  f.group_id = ctx.Str("group_id");
  f.firmware_version = ctx.Str("firmware_version");
  f.model_id = ctx.Str("model_id");
  if (ctx.Has("status")) {
    fb::DeviceStatus st;
    if (!ParseStatus(ctx.Str("status"), &st)) {
      return absl::InvalidArgumentError(
          "status must be one of registered, provisioned, active, suspended, decommissioned, replaced");
    }
    f.status = st;
  }
  const size_t limit = PageLimit(ctx, ctx.opts().max_page);
  const bool by_online = ctx.Has("online");
  const bool want_online = ctx.Bool("online");
  Json items = Json::array();
  std::string cursor = ctx.Str("cursor");
  std::string next;
  // The online filter is applied over index pages; a page is full or the
  // listing is done. Bounded work per call: at most 20 index pages.
  for (int round = 0; round < 20; ++round) {
    Page<fb::DeviceT> page;
    if (Status s = ctx.reg().ListDevices(ctx.tenant(), f, cursor, limit, &page); !s.ok()) return s;
    bool full = false;
    for (const auto& d : page.items) {
      cursor = d.device_id;
      if (by_online) {
        const Connectivity* c = ctx.ConnectivityOf(d.device_id);
        if ((c != nullptr && c->online) != want_online) continue;
      }
      items.push_back(DeviceJson(ctx, d));
      if (items.size() == limit) {
        full = true;
        break;
      }
    }
    if (full) {
      const bool more = !page.next_cursor.empty() || cursor != page.items.back().device_id;
      next = more ? cursor : "";
      break;
    }
    if (page.next_cursor.empty()) {
      next.clear();
      break;
    }
    next = cursor;  // out of rounds: the caller continues from here
  }
  ctx.data = Json{{"devices", items}, {"next_cursor", next}};
  return absl::OkStatus();
}

// ---- certificates ----

Status CertRevoke(Service::Ctx& ctx) {
  std::string serial = ctx.Str("serial");
  std::transform(serial.begin(), serial.end(), serial.begin(), [](unsigned char c) { return std::tolower(c); });
  while (serial.size() > 1 && serial[0] == '0') serial.erase(0, 1);
  if (serial.empty() || serial.size() > 40 || serial.find_first_not_of("0123456789abcdef") != std::string::npos) {
    return absl::InvalidArgumentError("serial must be 1..40 hex digits");
  }
  fb::CertificateT c;
  Status st = ctx.reg().GetCert(ctx.tenant(), serial, &c);
  if (absl::IsNotFound(st)) return NotFound("certificate", serial);
  if (!st.ok()) return st;
  ctx.device_id = c.device_id;
  if (c.revoked_at_ms != 0) {
    ctx.data = Json{{"serial", serial}, {"revoked_at_ms", c.revoked_at_ms}, {"already_revoked", true}};
    return absl::OkStatus();
  }
  if (Status s = ctx.reg().RevokeCert(ctx.tenant(), serial, ctx.now_ms, &ctx.batch); !s.ok()) return s;
  ctx.NoteCert("revoked", c);
  ctx.fx.revoked.emplace_back(ctx.actor.tenant, serial);  // closes every connection using it
  ctx.crl_tenants.push_back(ctx.actor.tenant);
  ctx.data = Json{{"serial", serial}, {"device_id", c.device_id}, {"revoked_at_ms", ctx.now_ms}};
  return absl::OkStatus();
}

Status CertList(Service::Ctx& ctx) {
  fb::DeviceT d;
  if (Status s = LoadDevice(ctx, ctx.Str("device_id"), &d); !s.ok()) return s;
  std::vector<fb::CertificateT> certs;
  if (Status s = ctx.reg().CertsOfDevice(ctx.tenant(), d.device_id, &certs); !s.ok()) return s;
  Json items = Json::array();
  for (const auto& c : certs) {
    items.push_back(Json{{"serial", c.serial},
                         {"issued_at_ms", c.issued_at_ms},
                         {"expires_at_ms", c.expires_at_ms},
                         {"revoked_at_ms", c.revoked_at_ms}});
  }
  ctx.data = Json{{"certificates", items}};
  return absl::OkStatus();
}

// ---- audit ----

Status AuditPage(Service::Ctx& ctx, size_t ceiling) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  Page<fb::AuditEntryT> page;
  const size_t limit = PageLimit(ctx, ceiling);
  Status s;
  if (ctx.Has("device_id")) {
    s = ctx.reg().AuditOfDevice(ctx.tenant(), ctx.Str("device_id"), ctx.Str("cursor"), limit, &page);
  } else {
    const int64_t from = ctx.Int("from_ms", 0), to = ctx.Int("to_ms", INT64_MAX);
    if (from > to) return absl::InvalidArgumentError("from_ms is after to_ms");
    s = ctx.reg().AuditInRange(ctx.tenant(), from, to, ctx.Str("cursor"), limit, &page);
  }
  if (!s.ok()) return s;
  Json items = Json::array();
  for (const auto& e : page.items) items.push_back(AuditJson(e));
  ctx.data = Json{{"entries", items}, {"next_cursor", page.next_cursor}};
  return absl::OkStatus();
}

Status AuditQuery(Service::Ctx& ctx) { return AuditPage(ctx, ctx.opts().max_page); }
Status AuditExport(Service::Ctx& ctx) { return AuditPage(ctx, 10 * ctx.opts().max_page); }

Status AuditVerify(Service::Ctx& ctx) {
  uint64_t n = 0;
  if (Status s = ctx.reg().VerifyAudit(ctx.tenant(), &n); !s.ok()) return s;
  ctx.data = Json{{"entries", n}, {"valid", true}};
  return absl::OkStatus();
}

using namespace table;  // NOLINT(build/namespaces): the table's shorthands

const ArgSpec& kCursor = kCursorArg;
const ArgSpec& kLimit = kLimitArg;
const ArgSpec kDevice{"device_id", S, true, "the device"};

}  // namespace

bool ParseDeviceStatus(std::string_view s, fb::DeviceStatus* out) { return ParseStatus(s, out); }

std::string_view ArgTypeName(ArgType t) {
  switch (t) {
    case ArgType::kString:
      return "string";
    case ArgType::kInt:
      return "integer";
    case ArgType::kBool:
      return "boolean";
    case ArgType::kStringList:
      return "string list";
    case ArgType::kObject:
      return "object";
    case ArgType::kNumber:
      return "number";
  }
  return "?";
}

const std::vector<CommandSpec>& Commands() {
  static const std::vector<CommandSpec> kTable = {
      {"tenant.create",
       Role::kAdmin,
       true,
       "Create a tenant with its own intermediate CA and quotas",
       {{"tenant_id", S, true, "lowercase id: a-z, 0-9, '-'"},
        {"name", S, false, "display name"},
        {"max_connections", I, false, "connection quota (0 = unlimited)"},
        {"max_publish_rate", I, false, "PUBLISH per second quota (0 = unlimited)"},
        {"time_zone", S, false, "IANA time zone of maintenance windows (default UTC)"},
        {"server_keepalive", I, false, "keep alive told to its v5 clients, s (0 = limits.server_keepalive)"}},
       TenantCreate},
      {"tenant.update",
       Role::kAdmin,
       true,
       "Change a tenant's name, quotas, keep alive or time zone",
       {{"tenant_id", S, true, "the tenant"},
        {"name", S, false, "display name"},
        {"max_connections", I, false, "connection quota (0 = unlimited)"},
        {"max_publish_rate", I, false, "PUBLISH per second quota (0 = unlimited)"},
        {"time_zone", S, false, "IANA time zone, e.g. Europe/Berlin"},
        {"server_keepalive", I, false, "keep alive told to its v5 clients, s (0 = limits.server_keepalive)"}},
       TenantUpdate},
      {"tenant.list", Role::kAdmin, false, "List tenants", {kCursor, kLimit}, TenantList},
      {"model.create",
       kOp,
       true,
       "Create a device model",
       {{"model_id", S, true, "model id"},
        {"manufacturer", S, false, ""},
        {"hw_revision", S, false, ""},
        {"supported_protocols", L, false, ""},
        {"default_config", O, false, "default configuration document"}},
       ModelCreate},
      {"model.list", kOp, false, "List device models", {kCursor, kLimit}, ModelList},
      {"group.create",
       kOp,
       true,
       "Create a device group",
       {{"group_id", S, true, "group id"},
        {"name", S, false, "display name"},
        {"config_template", O, false, "configuration template"},
        {"firmware_target_version", S, false,
         "firmware the group should run: a continuous ota campaign per model with that version (doc/ota.md)"},
        {"firmware_rollout", O, false, "that campaign's rollout options (doc/jobs.md)"}},
       GroupCreate},
      {"group.get", kOp, false, "Show a device group", {{"group_id", S, true, "group id"}}, GroupGet},
      {"group.list", kOp, false, "List device groups", {kCursor, kLimit}, GroupList},
      {"group.update",
       kOp,
       true,
       "Change a group's name, configuration template or firmware target",
       {{"group_id", S, true, "group id"},
        {"name", S, false, ""},
        {"config_template", O, false, ""},
        {"firmware_target_version", S, false,
         "a new target: the group's earlier target campaigns are canceled, a new one starts (\"\": none)"},
        {"firmware_rollout", O, false, "the new campaign's rollout options"}},
       GroupUpdate},
      {"device.register",
       kOp,
       true,
       "Register a device; with a CSR its certificate is issued at once (status provisioned)",
       {{"serial_number", S, true, "manufacturer serial, unique in the tenant"},
        {"model_id", S, true, "an existing model"},
        {"group_ids", L, false, "existing groups"},
        {"csr", S, false, "PKCS#10 CSR (PEM), EC P-256"},
        {"device_id", S, false, "id to use (default: generated)"},
        {"firmware_version", S, false, "firmware the device ships with"}},
       DeviceRegister},
      {"device.provision",
       kOp,
       true,
       "Issue the device's certificate from a CSR (registered/provisioned → provisioned)",
       {kDevice, {"csr", S, true, "PKCS#10 CSR (PEM), EC P-256"}},
       DeviceProvision},
      {"device.activate",
       kOp,
       true,
       "provisioned → active (also done by the device's first connection)",
       {kDevice},
       DeviceActivate},
      {"device.suspend",
       kOp,
       true,
       "active/provisioned → suspended: disconnected and kept out",
       {kDevice},
       DeviceSuspend},
      {"device.resume", kOp, true, "suspended → active", {kDevice}, DeviceResume},
      {"device.decommission",
       kOp,
       true,
       "Revoke the device's certificates, disconnect it and archive the record",
       {kDevice},
       DeviceDecommission},
      {"device.replace",
       kOp,
       true,
       "A registered/provisioned device takes over another's groups (moved) and configuration; the old one is retired; "
       "audited in both histories",
       {kDevice, {"new_device_id", S, true, "the replacement"}},
       DeviceReplace},
      {"device.set_groups",
       kOp,
       true,
       "Set a device's group membership (replaces it); a connected device's topic rules (%g) follow at once",
       {kDevice, {"group_ids", L, true, "existing groups (empty list: none)"}},
       DeviceSetGroups},
      {"device.get", kOp, false, "Show a device with its live connectivity", {kDevice}, DeviceGet},
      {"device.list",
       kOp,
       false,
       "List devices (filters combine)",
       {{"group_id", S, false, ""},
        {"status", S, false, "registered|provisioned|active|suspended|decommissioned|replaced"},
        {"online", B, false, "only connected (true) or disconnected (false) devices"},
        {"firmware_version", S, false, ""},
        {"model_id", S, false, ""},
        kCursor,
        kLimit},
       DeviceList},
      {"cert.revoke",
       kOp,
       true,
       "Revoke a certificate: disconnects its holder within a second, updates the CRL",
       {{"serial", S, true, "serial number in hex"}},
       CertRevoke},
      {"cert.list", kOp, false, "List a device's certificates", {kDevice}, CertList},
      {"audit.query",
       kOp,
       false,
       "Audit entries of a device, or of a time range",
       {{"device_id", S, false, ""},
        {"from_ms", I, false, "unix ms, inclusive"},
        {"to_ms", I, false, "unix ms, inclusive"},
        kCursor,
        kLimit},
       AuditQuery},
      {"audit.export",
       kOp,
       false,
       "Audit entries of a time range, up to 10000 per page (CLI: JSON lines)",
       {{"from_ms", I, false, "unix ms, inclusive"},
        {"to_ms", I, false, "unix ms, inclusive"},
        kCursor,
        {"limit", I, false, "page size (default 100, at most 10000)"}},
       AuditExport},
      {"audit.verify", kOp, false, "Recompute the tenant's audit hash chain", {}, AuditVerify},
  };
  static const std::vector<CommandSpec> kAll = [] {
    std::vector<CommandSpec> all = kTable;
    for (auto& c : JobCommands()) all.push_back(std::move(c));
    for (auto& c : ConfigCommands()) all.push_back(std::move(c));
    for (auto& c : OtaCommands()) all.push_back(std::move(c));
    for (auto& c : HealthCommands()) all.push_back(std::move(c));
    for (auto& c : CertCommands()) all.push_back(std::move(c));
    return all;
  }();
  return kAll;
}

const CommandSpec* FindCommand(std::string_view name) {
  for (const auto& c : Commands()) {
    if (name == c.name) return &c;
  }
  return nullptr;
}

std::string_view ErrorCodeOf(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kInvalidArgument:
      return "invalid_argument";
    case absl::StatusCode::kNotFound:
      return "not_found";
    case absl::StatusCode::kAlreadyExists:
      return "already_exists";
    case absl::StatusCode::kFailedPrecondition:
      return "invalid_transition";
    case absl::StatusCode::kAborted:
      return "version_conflict";
    case absl::StatusCode::kPermissionDenied:
      return "forbidden";
    case absl::StatusCode::kDataLoss:
      return "data_loss";
    case absl::StatusCode::kOutOfRange:
      return "limit_exceeded";
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kResourceExhausted:
      return "storage_error";
    default:
      return "internal";
  }
}

std::string CommandsMarkdown() {
  std::string md;
  for (const auto& c : Commands()) {
    md += "### `" + std::string(c.name) + "`\n\n" + c.summary + ".\n\nRole: " + std::string(RoleName(c.role)) +
          (c.mutating ? "; audited" : "") + ".\n\n";
    if (c.args.empty()) {
      md += "No arguments.\n\n";
      continue;
    }
    md += "| argument | type | required | meaning |\n|---|---|---|---|\n";
    for (const auto& a : c.args) {
      md += "| `" + std::string(a.name) + "` | " + std::string(ArgTypeName(a.type)) + " | " +
            (a.required ? "yes" : "no") + " | " + a.help + " |\n";
    }
    md += "\n";
  }
  return md;
}

}  // namespace fmq::admin
