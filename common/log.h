// Minimal levelled logging to stderr, one line per call. The level is set
// once at start-up; Log() may be called from any thread (each line is one
// write(2)).
#pragma once

#include <cstdarg>

namespace fmq {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3, kNone = 4 };

void SetLogLevel(LogLevel level);
LogLevel GetLogLevel();
bool ParseLogLevel(const char* name, LogLevel* out);

// printf-style; a newline is appended.
void Log(LogLevel level, const char* fmt, ...) __attribute__((format(printf, 2, 3)));

#define FMQ_LOG_DEBUG(...)                                                                                 \
  do {                                                                                                     \
    if (::fmq::GetLogLevel() <= ::fmq::LogLevel::kDebug) ::fmq::Log(::fmq::LogLevel::kDebug, __VA_ARGS__); \
  } while (0)
#define FMQ_LOG_INFO(...) ::fmq::Log(::fmq::LogLevel::kInfo, __VA_ARGS__)
#define FMQ_LOG_WARN(...) ::fmq::Log(::fmq::LogLevel::kWarning, __VA_ARGS__)
#define FMQ_LOG_ERROR(...) ::fmq::Log(::fmq::LogLevel::kError, __VA_ARGS__)

}  // namespace fmq
