// The management plane's topics, as a tenant's clients see them (inside the
// tenant's mount point): one place for the broker, the management service,
// the CLI and the docs (doc/admin-api.md). Constants only; any thread.
#pragma once

#include <string>
#include <string_view>

namespace fmq::topics {

// Every PUBLISH under this prefix goes to the management hooks, never to subscribers.
inline constexpr std::string_view kControlPrefix = "$SYS/fleetmq/control/";
inline constexpr std::string_view kControlRequest = "$SYS/fleetmq/control/v1";
inline constexpr std::string_view kControlReplyPrefix = "$SYS/fleetmq/control/v1/reply/";  // + client id
inline constexpr std::string_view kEventsPrefix = "$SYS/fleetmq/events/";
inline constexpr std::string_view kConnectivityPrefix = "$SYS/fleetmq/events/v1/connectivity/";  // + device id
inline constexpr std::string_view kCrlPrefix = "$SYS/fleetmq/crl/";
inline constexpr std::string_view kCrl = "$SYS/fleetmq/crl/v1";
inline constexpr std::string_view kStatsPrefix = "$SYS/fleetmq/stats/v1/";
inline constexpr std::string_view kJobEventsPrefix = "$SYS/fleetmq/events/v1/jobs/";  // + job id
inline constexpr std::string_view kCertEventsExpiring = "$SYS/fleetmq/events/v1/certs/expiring";
inline constexpr std::string_view kAlertEventsPrefix = "$SYS/fleetmq/events/v1/alerts/";  // + rule id

// The device channel (doc/device-api.md): every device owns the topics under
// kDevicePrefix + its device id + "/". It reads them (the broker publishes
// its downlink there) and publishes its uplink there; nobody else can read or
// write them, and nothing a device publishes there reaches a subscriber: it
// goes to the management hooks (BrokerHooks::OnDevicePublish).
inline constexpr std::string_view kDeviceRoot = "$fleetmq/";
inline constexpr std::string_view kDevicePrefix = "$fleetmq/v1/devices/";

// Whether `topic` starts with `prefix`.
constexpr bool Under(std::string_view topic, std::string_view prefix) {
  return topic.substr(0, prefix.size()) == prefix;
}

// The root of a device's own channel: "$fleetmq/v1/devices/<id>/".
inline std::string DeviceChannel(std::string_view device_id) {
  std::string t(kDevicePrefix);
  t.append(device_id);
  t.push_back('/');
  return t;
}

}  // namespace fmq::topics
