#include "mgmt/jobs/window.h"

#include <algorithm>
#include <cstdio>

#include "absl/time/civil_time.h"

namespace fmq::jobs {
namespace {

bool ParseHhmm(std::string_view s, int* minutes) {
  if (s.size() != 5 || s[2] != ':') return false;
  for (size_t i : {0, 1, 3, 4}) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  const int h = (s[0] - '0') * 10 + (s[1] - '0'), m = (s[3] - '0') * 10 + (s[4] - '0');
  if (h > 23 || m > 59) return false;
  *minutes = h * 60 + m;
  return true;
}

}  // namespace

absl::Status LoadZone(std::string_view name, absl::TimeZone* out) {
  // The name becomes a path under the zoneinfo directory: only what IANA
  // names are made of, and no way out of it.
  bool ok = !name.empty() && name.size() <= 64 && name.front() != '/' && name.find("..") == std::string_view::npos;
  for (char c : name) {
    ok = ok && ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '/' || c == '_' ||
                c == '-' || c == '+');
  }
  if (!ok || !absl::LoadTimeZone(std::string(name), out)) {
    return absl::InvalidArgumentError("unknown time zone '" + std::string(name.substr(0, 64)) +
                                      "' (an IANA name such as Europe/Berlin or UTC)");
  }
  return absl::OkStatus();
}

absl::Status DailyWindow::Parse(std::string_view start, std::string_view end, std::string_view zone, DailyWindow* out) {
  DailyWindow w;
  if (!ParseHhmm(start, &w.start_min_) || !ParseHhmm(end, &w.end_min_)) {
    return absl::InvalidArgumentError("rollout.window.start and .end must be local times \"HH:MM\" (00:00..23:59)");
  }
  if (w.start_min_ == w.end_min_) {
    return absl::InvalidArgumentError("rollout.window: start and end must differ (leave the window out for all day)");
  }
  if (absl::Status s = LoadZone(zone, &w.zone_); !s.ok()) return s;
  w.zone_name_ = std::string(zone);
  *out = std::move(w);
  return absl::OkStatus();
}

bool DailyWindow::Open(int64_t ms) const {
  if (!set()) return true;
  const absl::CivilMinute c = absl::ToCivilMinute(absl::FromUnixMillis(ms), zone_);
  const int m = c.hour() * 60 + c.minute();
  return start_min_ < end_min_ ? (m >= start_min_ && m < end_min_) : (m >= start_min_ || m < end_min_);
}

int64_t DailyWindow::NextOpen(int64_t ms) const {
  if (Open(ms)) return ms;
  const absl::CivilMinute now = absl::ToCivilMinute(absl::FromUnixMillis(ms), zone_);
  absl::CivilDay day(now);
  if (now.hour() * 60 + now.minute() >= start_min_) day += 1;
  const absl::CivilMinute at = absl::CivilMinute(day) + start_min_;
  const absl::TimeZone::TimeInfo l = zone_.At(at);
  const absl::Time t = l.kind == absl::TimeZone::TimeInfo::SKIPPED ? l.trans : l.pre;
  return std::max(ms, absl::ToUnixMillis(t));
}

std::string DailyWindow::Hhmm(int minutes) {
  char b[24];
  std::snprintf(b, sizeof b, "%02d:%02d", minutes / 60, minutes % 60);
  return b;
}

}  // namespace fmq::jobs
