// libFuzzer target: device health reports and alert rules (mgmt/health).
// The input is the body of a health/report as a device could send it, and
// the same bytes as an alert rule. It must never crash;
// a body the schema accepts is folded into the store on a fake clock (twice
// in one minute, then a day later into the same slot), and the latest value
// and the history read back must agree with what was accepted (plus the
// derived errors_per_min when the body has an errors counter). The bytes
// are also read as a stored link record (mgmt/health/link.h).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/clock.h"
#include "mgmt/health/alerts.h"
#include "mgmt/health/health_feature.h"
#include "storage/kv_store.h"
#include "tests/fuzz/fuzz_util.h"

using fmq::health::Json;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  if (!fmq::fuzz::Shallow(text)) return 0;
  Json body = Json::parse(text, nullptr, false);
  if (body.is_discarded()) return 0;
  // The same bytes as an alert rule (alert.rule.create's arguments, and the
  // stored form): valid ones read back the same from their stored form.
  fmq::health::AlertRule rule;
  if (fmq::health::AlertRule::FromJson(body, &rule).empty()) {
    fmq::health::AlertRule back;
    if (!fmq::health::AlertRule::FromJson(rule.ToJson(), &back).empty() || back.ToJson() != rule.ToJson()) {
      std::abort();
    }
  }
  // The same bytes as a stored link record (bytes on disk): refused, or
  // read back the same, and events applied to it keep it valid.
  fmq::health::LinkRecord link;
  if (fmq::health::LinkRecord::Decode(text, &link)) {
    fmq::health::LinkRecord back;
    if (!fmq::health::LinkRecord::Decode(link.Encode(), &back) || back.Encode() != link.Encode()) std::abort();
    const int64_t now = 1'800'000'000'000;
    using K = fmq::health::LinkEvent::Kind;
    for (K k : {K::kCounters, K::kDisconnected, K::kConnected, K::kCounters}) {
      link.Apply(fmq::health::LinkEvent{k, now, {}, "protocol_error", "rule"});
      for (int64_t w : {3'600'000LL, 86'400'000LL, 7 * 86'400'000LL}) {
        const double u = link.Uptime(now + 1000, w, true);
        if (u > 1 || (u < 0 && u != -1)) std::abort();
      }
    }
    (void)link.ToJson(now, true).dump(-1, ' ', false, Json::error_handler_t::replace);
    if (!fmq::health::LinkRecord::Decode(link.Encode(), &back)) std::abort();
  }
  fmq::health::Options o;
  fmq::health::Values v;
  if (!fmq::health::ValidateReport(body, o, &v).empty()) return 0;
  if (v.empty() || v.size() > o.max_metrics + 8) std::abort();
  fmq::FakeClock clock;
  fmq::storage::MemKvStore kv;
  fmq::health::HealthFeature f(&kv, &clock, o);
  fmq::mgmt::DeviceMessage m;
  m.tenant = "acme";
  m.device_id = "d1";
  m.topic = "health/report";
  m.body = body;
  fmq::mgmt::Output out;
  for (int64_t step : {0, 1500, 86'400'000}) {
    clock.Advance(step);
    f.OnDeviceMessage(m);
    if (!f.Commit(&out).ok()) std::abort();
  }
  const auto t = fmq::storage::TenantId::FromAuthenticated("acme");
  auto latest = f.Latest(t, "d1");
  // The same errors counter each time: the derived rate is there, and 0.
  const bool rate = v.contains("errors");
  if (!latest.ok() || (*latest)["values"].size() != v.size() + (rate ? 1 : 0)) std::abort();
  if (rate && (*latest)["values"]["errors_per_min"] != 0) std::abort();
  auto h = f.History(t, "d1", 0, clock.WallMs(), {});
  if (!h.ok() || h->size() != 1) std::abort();
  for (const auto& [name, d] : v) {
    const Json& a = (*h)[0]["metrics"][name];
    if (a["n"] != 1 || a["last"].get<double>() != d) std::abort();
  }
  return 0;
}
