// Certificate expiry commands (doc/certificate-profile.md, "Expiry"): what
// expires soon, and the tenant's expiry histogram, from the expiry index
// (mgmt/certs/expiry.h). Issuing and revoking stay in commands.cc.
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
  };
}

}  // namespace fmq::admin
