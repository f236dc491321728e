// A daily maintenance window in a time zone (doc/jobs.md, "Maintenance
// window"): the hours of the day, in the tenant's local time, in which a job
// may start executions. Pure: the caller gives the time.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace fmq::jobs {

// An IANA time zone name ("Europe/Berlin", "UTC") from the system's zoneinfo.
// The error names the zone; nothing else is accepted (no POSIX TZ strings,
// no fixed offsets: a window must follow daylight saving time).
absl::Status LoadZone(std::string_view name, absl::TimeZone* out);

class DailyWindow {
 public:
  // "HH:MM" each; end before start spans midnight (22:00–04:00). Equal start
  // and end are refused (an empty or a full day says nothing).
  static absl::Status Parse(std::string_view start, std::string_view end, std::string_view zone, DailyWindow* out);

  bool set() const { return start_min_ >= 0; }
  // Whether `ms` (unix) falls inside the window, in local time.
  bool Open(int64_t ms) const;
  // The first instant at or after `ms` at which the window is open (`ms` when
  // it is open now). A start time skipped by a daylight-saving jump opens at
  // the first local time after the gap.
  int64_t NextOpen(int64_t ms) const;

  std::string start() const { return Hhmm(start_min_); }
  std::string end() const { return Hhmm(end_min_); }
  const std::string& zone_name() const { return zone_name_; }

 private:
  static std::string Hhmm(int minutes);
  int start_min_ = -1, end_min_ = -1;  // minutes of the local day
  std::string zone_name_;
  absl::TimeZone zone_;
};

}  // namespace fmq::jobs
