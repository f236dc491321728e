// libFuzzer target: configuration documents and device reports
// (mgmt/config). The input is two JSON texts separated by a NUL byte, as an
// operator or a device could send them. Neither may crash anything; what
// parses goes through the document limits, and for two documents within
// them the merge patch diff must round-trip: applying MergeDiff(a, b) to a
// gives b (both as effective documents, nulls merged away). The first text
// also goes through the config/report and config/get schema checks.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/clock.h"
#include "mgmt/config/config_feature.h"
#include "mgmt/config/document.h"
#include "mgmt/jobs/job_engine.h"
#include "storage/kv_store.h"
#include "storage/registry.h"
#include "tests/fuzz/fuzz_util.h"

using fmq::config::Json;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static fmq::FakeClock clock;
  static fmq::storage::MemKvStore kv;
  static fmq::storage::Registry reg(&kv);
  static fmq::jobs::JobEngine engine(&kv, &reg, &clock, fmq::jobs::Host{});
  static fmq::config::ConfigFeature feature(&kv, &reg, &clock, &engine);
  std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t cut = in.find('\0');
  std::string_view ta = in.substr(0, cut), tb = cut == std::string_view::npos ? std::string_view() : in.substr(cut + 1);
  if (!fmq::fuzz::Shallow(ta) || !fmq::fuzz::Shallow(tb)) return 0;
  Json a = Json::parse(ta, nullptr, false), b = Json::parse(tb, nullptr, false);
  if (!a.is_discarded() && a.is_object()) {
    (void)feature.Validate("config/report", a);
    (void)feature.Validate("config/get", a);
  }
  fmq::config::DocLimits lim;
  if (a.is_discarded() || b.is_discarded() || !fmq::config::CheckDocument(a, lim).empty() ||
      !fmq::config::CheckDocument(b, lim).empty()) {
    return 0;
  }
  const Json ea = fmq::config::ApplyMergePatch(Json::object(), a), eb = fmq::config::ApplyMergePatch(Json::object(), b);
  const Json d = fmq::config::MergeDiff(ea, eb);
  if (fmq::config::ApplyMergePatch(ea, d) != eb) std::abort();
  if (fmq::config::Hash(ea) != fmq::config::HashText(fmq::config::Canonical(ea))) std::abort();
  return 0;
}
