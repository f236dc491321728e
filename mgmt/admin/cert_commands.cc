// Certificate lifecycle commands (doc/certificate-profile.md): what expires
// soon and the tenant's expiry histogram, from the expiry index
// (mgmt/certs/expiry.h); renewals over MQTT as "renew" jobs
// (mgmt/certs/renewal.h); the transparency log. Issuing from an operator's
// CSR and revoking stay in commands.cc.
#include <random>

#include "common/hex.h"
#include "mgmt/admin/commands.h"

namespace fmq::admin {
namespace {

using Status = absl::Status;
constexpr int64_t kDay = 86'400'000;

Status CertExpiring(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  const int64_t days = ctx.Int("days", 30);
  if (days < 1 || days > 3650) return absl::InvalidArgumentError("days must be within 1..3650");
  // The cursor is a key position, carried as hex (it survives any transport).
  const std::string hex_cursor = ctx.Str("cursor");
  std::string cursor;
  if (hex_cursor.size() > 1024 || !FromHex(hex_cursor, &cursor)) return absl::InvalidArgumentError("bad cursor");
  std::vector<certs::ExpiryFeature::Entry> page;
  std::string next;
  if (Status s =
          ctx.certs().Expiring(ctx.tenant(), days * kDay, cursor, PageLimit(ctx, ctx.opts().max_page), &page, &next);
      !s.ok()) {
    return s;
  }
  Json items = Json::array();
  for (const auto& e : page) {
    items.push_back(Json{{"serial", e.serial},
                         {"device_id", e.device_id},
                         {"expires_at_ms", e.expires_at_ms},
                         {"days_left", (e.expires_at_ms - ctx.now_ms) / kDay}});
  }
  ctx.data = Json{{"certificates", std::move(items)}, {"next_cursor", HexOf(next)}};
  return absl::OkStatus();
}

Status CertExpiryHistogram(Service::Ctx& ctx) {
  const int64_t weeks = ctx.Int("weeks", 12);
  if (weeks < 1 || weeks > 260) return absl::InvalidArgumentError("weeks must be within 1..260");
  std::vector<uint64_t> per_week;
  uint64_t expired = 0;
  if (Status s = ctx.certs().Histogram(ctx.tenant(), static_cast<int>(weeks), &per_week, &expired); !s.ok()) return s;
  ctx.data = Json{{"weeks", per_week}, {"expired_not_revoked", expired}, {"from_ms", ctx.now_ms}};
  return absl::OkStatus();
}

Json Arg(Service::Ctx& ctx, const char* name) { return ctx.Has(name) ? ctx.args[name] : Json(); }

Status CertRenew(Service::Ctx& ctx) {
  jobs::JobEngine::NewJob nj;
  nj.type = fb::JobType::Renew;
  if (ctx.Has("job_id")) {
    nj.job_id = ctx.Str("job_id");
  } else {
    static std::mt19937_64 rng{std::random_device{}()};
    char buf[48];
    std::snprintf(buf, sizeof buf, "renew-%lld-%04x", static_cast<long long>(ctx.now_ms),
                  static_cast<unsigned>(rng() & 0xffff));
    nj.job_id = buf;
  }
  if (Status s = CheckId("job_id", nj.job_id); !s.ok()) return s;
  if (nj.job_id == certs::kAutoRenewJob) return absl::InvalidArgumentError("job id 'auto-renew' is the broker's own");
  if (Status s = ParseJobTarget(ctx, &nj.target); !s.ok()) return s;
  if (nj.target.device_ids.size() == 1) ctx.device_id = nj.target.device_ids[0];
  nj.created_by = ctx.actor.Label();
  nj.start_at_ms = ctx.Int("start_at_ms", 0);
  if (nj.start_at_ms < 0) return absl::InvalidArgumentError("start_at_ms must be a unix time in ms");
  auto spec = jobs::ParseSpec(Arg(ctx, "rollout"), Arg(ctx, "timeouts"), Arg(ctx, "retry"), Arg(ctx, "abort"),
                              ctx.TenantZone());
  if (!spec.ok()) return spec.status();
  nj.spec = *spec;
  nj.document_json = "{\"forced\":true}";
  fb::JobT rec;
  if (Status s = ctx.jobs().Create(ctx.tenant(), nj, &ctx.batch, &rec); !s.ok()) return s;
  ctx.on_commit.push_back([&jobs = ctx.jobs(), t = ctx.tenant(), rec] { jobs.Activate(t, rec); });
  ctx.data = Json{{"job_id", rec.job_id},
                  {"status", jobs::JobName(rec.status)},
                  {"total", rec.total_count},
                  {"resolved", rec.resolved},
                  {"options", Json::parse(rec.options_json)}};
  return absl::OkStatus();
}

Status CertLog(Service::Ctx& ctx) {
  if (Status s = CheckLimit(ctx); !s.ok()) return s;
  std::string cursor;
  if (ctx.Str("cursor").size() > 1024 || !FromHex(ctx.Str("cursor"), &cursor)) {
    return absl::InvalidArgumentError("bad cursor");
  }
  std::vector<std::string> page;
  std::string next;
  if (Status s = ctx.reg().CertLogPage(ctx.tenant(), cursor, PageLimit(ctx, ctx.opts().max_page), &page, &next);
      !s.ok()) {
    return s;
  }
  Json items = Json::array();
  for (const std::string& v : page) items.push_back(Json::parse(v, nullptr, false));
  ctx.data = Json{{"entries", std::move(items)}, {"next_cursor", HexOf(next)}};
  return absl::OkStatus();
}

}  // namespace

std::vector<CommandSpec> CertCommands() {
  using namespace table;
  return {
      {"cert.expiring",
       kOp,
       false,
       "Certificates not revoked that expire within `days` (default 30), soonest first",
       {{"days", I, false, "1..3650 (default 30)"}, kCursorArg, kLimitArg},
       CertExpiring},
      {"cert.expiry_histogram",
       kOp,
       false,
       "Certificates not revoked expiring in each of the next `weeks` weeks (default 12), and those past expiry",
       {{"weeks", I, false, "1..260 (default 12)"}},
       CertExpiryHistogram},
      {"cert.renew", kOp, true,
       "Renew devices' certificates over MQTT now (a \"renew\" job): each device gets certs/renew, sends a CSR for "
       "a new key, gets its certificate; the old one is revoked once the new one is used (plus certs.renewal_grace_s)",
       WithTargetArgs({{"job_id", S, false, "id to use (default: generated)"}},
                      {{"rollout", O, false,
                        "{rate_per_s, max_in_flight, waves, window, ...} as job.create (each renewal is one "
                        "ECDSA signature on the management thread)"},
                       {"timeouts", O, false, "{step_s: request to CSR, in_progress_s: certificate to its first use}"},
                       {"retry", O, false, "{max_attempts, backoff_ms, on: [FAILED, TIMED_OUT]}"},
                       {"abort", O, false, "{threshold_pct, min_executed, on, action} as job.create"},
                       {"start_at_ms", I, false, "unix ms: scheduled start (default: now)"}}),
       CertRenew},
      {"cert.log",
       kOp,
       false,
       "The transparency log: every certificate issued or revoked in the tenant, oldest first, with its SHA-256",
       {kCursorArg, kLimitArg},
       CertLog},
  };
}

}  // namespace fmq::admin
