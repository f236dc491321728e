#include "broker/config.h"

#include <toml++/toml.h>

#include <charconv>
#include <cstdlib>
#include <functional>
#include <limits>

namespace fmq {
namespace {

using Setter = std::function<absl::Status(Config&, const std::string&)>;

struct OptionDef {
  const char* key;
  const char* default_text;
  const char* help;
  Setter set;
};

absl::Status Bad(const std::string& key, const std::string& why) {
  return absl::InvalidArgumentError("config key '" + key + "': " + why);
}

Setter UintSetter(const char* key, uint64_t min, uint64_t max, std::function<void(Config&, uint64_t)> assign) {
  return [=](Config& c, const std::string& v) -> absl::Status {
    uint64_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec != std::errc() || p != v.data() + v.size()) return Bad(key, "'" + v + "' is not a non-negative integer");
    if (n < min || n > max) {
      return Bad(key, std::to_string(n) + " is outside " + std::to_string(min) + ".." + std::to_string(max));
    }
    assign(c, n);
    return absl::OkStatus();
  };
}

template <class T>
Setter Uint(T BrokerOptions::*field, const char* key, uint64_t min, uint64_t max) {
  return UintSetter(key, min, max, [field](Config& c, uint64_t n) { c.broker.*field = static_cast<T>(n); });
}

Setter BoolSetter(const char* key, std::function<void(Config&, bool)> assign) {
  return [=](Config& c, const std::string& v) -> absl::Status {
    if (v != "true" && v != "false") return Bad(key, "'" + v + "' is not true or false");
    assign(c, v == "true");
    return absl::OkStatus();
  };
}

Setter Bool(bool BrokerOptions::*field, const char* key) {
  return BoolSetter(key, [field](Config& c, bool v) { c.broker.*field = v; });
}

absl::Status ParseAddresses(const char* key, const std::string& v, std::vector<ListenAddress>* out) {
  out->clear();
  if (v.empty()) return absl::OkStatus();  // none
  size_t start = 0;
  while (start <= v.size()) {
    size_t comma = v.find(',', start);
    std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    size_t colon = item.rfind(':');
    if (colon == std::string::npos || colon == 0) return Bad(key, "'" + item + "' is not host:port");
    ListenAddress a;
    a.host = item.substr(0, colon);
    if (a.host.size() > 2 && a.host.front() == '[' && a.host.back() == ']')
      a.host = a.host.substr(1, a.host.size() - 2);
    std::string port = item.substr(colon + 1);
    unsigned p = 0;
    auto [e, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
    if (ec != std::errc() || e != port.data() + port.size() || p > 65535) {
      return Bad(key, "'" + port + "' is not a port");
    }
    a.port = static_cast<uint16_t>(p);
    out->push_back(a);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return absl::OkStatus();
}

absl::Status ParseListen(Config& c, const std::string& v) { return ParseAddresses("listen", v, &c.server.listeners); }

// A comma-separated list of ACL rules ("readwrite devices/%c/#,read fleet/#").
absl::StatusOr<std::vector<AclRule>> ParseAclRules(const std::string& key, const std::string& v) {
  std::vector<AclRule> rules;
  size_t start = 0;
  while (start < v.size()) {
    size_t comma = v.find(',', start);
    std::string item = v.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    auto r = ParseAclRule(item);
    if (!r.ok()) return Bad(key, std::string(r.status().message()));
    rules.push_back(*r);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return rules;
}

const std::vector<OptionDef>& Options() {
  using B = BrokerOptions;
  static const std::vector<OptionDef> kOptions = {
      {"listen", "127.0.0.1:1883", "Plain MQTT listeners, comma-separated host:port (port 0 = any free port).",
       ParseListen},
      {"tls_listen", "127.0.0.1:8883",
       "MQTT over mutual TLS listeners, comma-separated host:port; empty disables TLS. The PKI under data_dir/pki is "
       "created on first start.",
       [](Config& c, const std::string& v) { return ParseAddresses("tls_listen", v, &c.server.tls_listeners); }},
      {"limits.max_inbox_messages", "100000",
       "Messages forwarded to a worker and not yet routed there; beyond it the other workers stop reading the "
       "connections that publish more until the inbox is back under half ($SYS/broker/connections/"
       "reads_paused_peers counts the pauses).",
       UintSetter("limits.max_inbox_messages", 1, 100000000,
                  [](Config& c, uint64_t n) { c.server.max_inbox_messages = static_cast<uint32_t>(n); })},
      {"tls_max_handshakes", "256",
       "TLS handshakes in progress at once; new TLS connections beyond it are closed at accept and counted "
       "($SYS/broker/connections/tls_refused).",
       UintSetter("tls_max_handshakes", 1, 1000000,
                  [](Config& c, uint64_t n) { c.server.max_pending_handshakes = static_cast<uint32_t>(n); })},
      {"tls_handshake_share", "50",
       "Percent of the event loop's time TLS handshakes may use (measured, a token bucket holding 10 ms worth); beyond "
       "it handshake input waits until the budget refills, so a handshake flood cannot starve established connections "
       "(100 = no limit).",
       UintSetter("tls_handshake_share", 1, 100,
                  [](Config& c, uint64_t n) { c.server.handshake_share_percent = static_cast<uint32_t>(n); })},
      {"tls_server_name", "localhost", "Host name in the broker's certificate when the PKI is first created.",
       [](Config& c, const std::string& v) -> absl::Status {
         if (v.empty()) return Bad("tls_server_name", "must not be empty");
         c.tls_server_name = v;
         return absl::OkStatus();
       }},
      {"tls_ticket_lifetime_s", "86400",
       "Seconds a TLS session ticket resumes a session without a full handshake, across broker restarts (keys in "
       "data_dir/pki/ticket-keys, mode 0600); 0 issues no tickets. Revocation and the certificate's validity are "
       "checked on every resumption.",
       UintSetter("tls_ticket_lifetime_s", 0, 7 * 86400,
                  [](Config& c, uint64_t n) { c.tls_tickets.lifetime_s = static_cast<int64_t>(n); })},
      {"tls_ticket_rotation_s", "43200",
       "Seconds one session-ticket key seals new tickets before a new key (written to disk first) takes over; older "
       "keys keep opening their tickets until those expire.",
       UintSetter("tls_ticket_rotation_s", 60, 30 * 86400,
                  [](Config& c, uint64_t n) { c.tls_tickets.rotation_s = static_cast<int64_t>(n); })},
      {"tls_crl_dir", "",
       "Directory of externally supplied CRLs (*.crl, *.pem, *.der; DER or PEM), each signed by a tenant CA; empty = "
       "data_dir/crl. Reloaded when its files change (checked every 5 s) and on SIGHUP; new connections keep being "
       "served during a reload.",
       [](Config& c, const std::string& v) -> absl::Status {
         c.tls_crl_dir = v;
         return absl::OkStatus();
       }},
      {"data_dir", "./data", "Directory for persistent state (created if missing; locked against a second broker).",
       [](Config& c, const std::string& v) -> absl::Status {
         if (v.empty()) return Bad("data_dir", "must not be empty");
         c.data_dir = v;
         return absl::OkStatus();
       }},
      {"log_level", "info", "debug, info, warning, error or none.",
       [](Config& c, const std::string& v) -> absl::Status {
         if (!ParseLogLevel(v.c_str(), &c.log_level))
           return Bad("log_level", "'" + v + "' is not debug/info/warning/error/none");
         return absl::OkStatus();
       }},
      {"workers", "0",
       "Event loops (threads) serving clients, each owning the sessions homed on it; 0 = one per CPU the process may "
       "run on (at most 64). See doc/architecture.md.",
       UintSetter("workers", 0, 64, [](Config& c, uint64_t n) { c.workers = static_cast<uint32_t>(n); })},
      {"tcp_nodelay", "true", "Disable Nagle's algorithm on client sockets.",
       [](Config& c, const std::string& v) -> absl::Status {
         if (v != "true" && v != "false") return Bad("tcp_nodelay", "'" + v + "' is not true or false");
         c.server.tcp_nodelay = v == "true";
         return absl::OkStatus();
       }},
      {"limits.max_packet_size", "1048576",
       "Largest packet accepted, bytes (announced as Maximum Packet Size); larger is DISCONNECT 0x95.",
       Uint(&B::max_packet_size, "limits.max_packet_size", 64, 268435460)},
      {"limits.receive_maximum", "100",
       "QoS 1/2 PUBLISHes a client may leave unacknowledged to us; more is DISCONNECT 0x93.",
       Uint(&B::receive_maximum, "limits.receive_maximum", 1, 65535)},
      {"limits.max_inflight", "100",
       "QoS 1/2 messages in flight to one client (capped further by its Receive Maximum).",
       Uint(&B::max_inflight, "limits.max_inflight", 1, 65535)},
      {"limits.max_queued_messages", "1000",
       "Messages queued per session (offline or window full); beyond it new messages are dropped and counted.",
       Uint(&B::max_queued_messages, "limits.max_queued_messages", 0, 100000000)},
      {"limits.max_queued_bytes", "16777216", "Bytes queued per session; same policy as max_queued_messages.",
       Uint(&B::max_queued_bytes, "limits.max_queued_bytes", 0, std::numeric_limits<uint64_t>::max())},
      {"limits.queue_qos0", "false", "Queue QoS 0 messages for offline persistent sessions.",
       Bool(&B::queue_qos0, "limits.queue_qos0")},
      {"limits.topic_alias_maximum", "64", "Topic aliases a v5 client may use towards the broker.",
       Uint(&B::topic_alias_maximum, "limits.topic_alias_maximum", 0, 65535)},
      {"limits.max_keepalive", "65535",
       "Largest keep alive accepted, seconds: v5 clients asking for more (or 0) are told this value; 3.1.1 clients "
       "are refused. 65535 = no limit.",
       Uint(&B::max_keepalive, "limits.max_keepalive", 1, 65535)},
      {"limits.server_keepalive", "18",
       "Server keep alive told to v5 clients asking for more (or 0), seconds; 0 = off. 18 shows a silent v5 device "
       "offline in 1.5 x 18 = 27 s. 3.1.1 devices must ask for 18 or less themselves. Per tenant: tenant.update "
       "server_keepalive.",
       Uint(&B::server_keepalive, "limits.server_keepalive", 0, 65535)},
      {"limits.connect_timeout_ms", "10000", "Time from TCP accept to a complete CONNECT.",
       Uint(&B::connect_timeout_ms, "limits.connect_timeout_ms", 100, 600000)},
      {"limits.max_session_expiry", "4294967295",
       "Longest session expiry granted, seconds (4294967295 = never); 3.1.1 persistent sessions get this value.",
       Uint(&B::max_session_expiry, "limits.max_session_expiry", 0, 0xFFFFFFFFu)},
      {"limits.max_client_id_length", "256", "Longest client identifier accepted, bytes.",
       Uint(&B::max_client_id_length, "limits.max_client_id_length", 23, 65535)},
      {"limits.max_topic_length", "65535", "Longest topic name or filter, bytes.",
       UintSetter("limits.max_topic_length", 1, 65535,
                  [](Config& c, uint64_t n) { c.broker.topic_limits.max_length = static_cast<uint32_t>(n); })},
      {"limits.max_topic_levels", "128", "Most '/'-separated levels in a topic name or filter.",
       UintSetter("limits.max_topic_levels", 1, 65535,
                  [](Config& c, uint64_t n) { c.broker.topic_limits.max_levels = static_cast<uint32_t>(n); })},
      {"limits.max_subscriptions_per_session", "1000", "Subscriptions one session may hold; more get SUBACK 0x97.",
       Uint(&B::max_subscriptions_per_session, "limits.max_subscriptions_per_session", 1, 10000000)},
      {"limits.max_output_buffer", "8388608",
       "Unsent bytes per connection before QoS 0 messages to it are dropped (slow reader).",
       Uint(&B::max_output_buffer, "limits.max_output_buffer", 4096, std::numeric_limits<uint64_t>::max())},
      {"storage.sync", "batched",
       "When a QoS 1/2 message counts as stored, and so is acknowledged: always (fsync per write), batched (one fsync "
       "per storage.sync_interval_ms) or none (no fsync: survives a broker crash, not a power loss).",
       [](Config& c, const std::string& v) -> absl::Status {
         if (v == "always")
           c.storage.mode = SyncMode::kAlways;
         else if (v == "batched")
           c.storage.mode = SyncMode::kBatched;
         else if (v == "none")
           c.storage.mode = SyncMode::kNone;
         else
           return Bad("storage.sync", "'" + v + "' is not always, batched or none");
         return absl::OkStatus();
       }},
      {"storage.sync_interval_ms", "5", "Gathering window of storage.sync = batched, milliseconds.",
       UintSetter("storage.sync_interval_ms", 1, 10000,
                  [](Config& c, uint64_t n) { c.storage.sync_interval_ms = static_cast<uint32_t>(n); })},
      {"storage.retry_interval_ms", "1000", "After a failed write (disk full, I/O error), how often it is retried.",
       UintSetter("storage.retry_interval_ms", 10, 600000,
                  [](Config& c, uint64_t n) { c.storage.retry_interval_ms = static_cast<uint32_t>(n); })},
      {"storage.min_free_bytes", "67108864",
       "Free disk space kept in reserve: below it writes are refused as if the disk were full (QoS 1/2 refused, "
       "retried), so RocksDB never runs out of space mid-write.",
       UintSetter("storage.min_free_bytes", 0, std::numeric_limits<uint64_t>::max(),
                  [](Config& c, uint64_t n) { c.rocks.min_free_bytes = n; })},
      {"acl.device", "readwrite devices/%c/#,read groups/%g/#",
       "Topic rules for every tenant's devices (certificate clients with OU=device), comma-separated "
       "'<read|write|readwrite|deny> <filter>', %c = client id, %u = user name, %g = each group of the device in the "
       "registry. Operators may use their whole tenant tree. Also acl.tenant.<tenant> = extra device rules for one "
       "tenant.",
       [](Config& c, const std::string& v) -> absl::Status {
         auto rules = ParseAclRules("acl.device", v);
         if (!rules.ok()) return rules.status();
         c.acl.SetDeviceRules(std::move(*rules));
         return absl::OkStatus();
       }},
      {"acl.anonymous", "readwrite #",
       "Topic rules for anonymous clients of the plain listeners, same syntax as acl.device plus 'deny <filter>' (wins "
       "over the other rules: no publish to a matching topic, no subscription inside it); %c and %u apply, %g never "
       "matches. Empty: they may use no topic. $SYS stays readable.",
       [](Config& c, const std::string& v) -> absl::Status {
         auto rules = ParseAclRules("acl.anonymous", v);
         if (!rules.ok()) return rules.status();
         c.acl.SetAnonymousRules(std::move(*rules));
         return absl::OkStatus();
       }},
      {"quota.max_connections", "0",
       "Default per-tenant connection quota (0 = unlimited); a tenant's own quota (tenant.create) overrides it. Over "
       "it: CONNACK 0x97, counted.",
       Uint(&B::quota_max_connections, "quota.max_connections", 0, 4294967295u)},
      {"quota.max_publish_rate", "0",
       "Default per-tenant PUBLISH rate, messages per second with one second of burst (0 = unlimited); a tenant's own "
       "quota overrides it. Over it: PUBACK 0x97 (v5) or dropped, counted.",
       Uint(&B::quota_max_publish_rate, "quota.max_publish_rate", 0, 4294967295u)},
      {"management.max_queued_requests", "1024",
       "Admin requests waiting for the management thread; beyond it a request gets PUBACK 0x97 (quota exceeded), "
       "counted.",
       UintSetter("management.max_queued_requests", 1, 1000000,
                  [](Config& c, uint64_t n) { c.management.max_queued_requests = n; })},
      {"management.max_queued_events", "1048576",
       "Connectivity events waiting for the management thread; beyond it they are coalesced per device (the latest "
       "state of each device is kept; the audit log misses the transitions between), counted.",
       UintSetter("management.max_queued_events", 1, 100000000,
                  [](Config& c, uint64_t n) { c.management.max_queued_events = n; })},
      {"management.max_queued_device_messages", "65536",
       "Device-channel messages (doc/device-api.md) waiting for the management thread; beyond it a message gets "
       "PUBACK 0x97 (quota exceeded), counted; the device retries.",
       UintSetter("management.max_queued_device_messages", 1, 100000000,
                  [](Config& c, uint64_t n) { c.management.max_queued_device_messages = n; })},
      {"management.max_device_message_bytes", "8192",
       "Largest device-channel message accepted, bytes; larger gets PUBACK 0x99 and an error on the device's errors "
       "topic, counted.",
       UintSetter("management.max_device_message_bytes", 64, 1048576,
                  [](Config& c, uint64_t n) { c.management.max_device_message_bytes = n; })},
      {"jobs.max_active", "1000",
       "Jobs not ended (scheduled, in progress, paused) on this node at once; job.create beyond it is refused "
       "(storage_error: resource exhausted).",
       UintSetter("jobs.max_active", 1, 1000000, [](Config& c, uint64_t n) { c.management.jobs_max_active = n; })},
      {"jobs.audit_executions", "true",
       "Write an audit entry for every job execution state change (audit.query device_id=X shows them); false keeps "
       "only the stored execution state.",
       BoolSetter("jobs.audit_executions", [](Config& c, bool v) { c.management.jobs_audit_executions = v; })},
      {"management.max_request_bytes", "262144",
       "Largest admin request (one message on the control topic), bytes; larger gets the error too_large, audited.",
       UintSetter("management.max_request_bytes", 1024, 16777216,
                  [](Config& c, uint64_t n) { c.management.max_request_bytes = n; })},
      {"config.max_document_bytes", "65536",
       "Largest configuration document (canonical JSON) of a device, group or model; larger is refused "
       "(invalid_argument naming the limit). Also bounds what config.set accepts.",
       UintSetter("config.max_document_bytes", 2, 16777216,
                  [](Config& c, uint64_t n) { c.management.config_max_document_bytes = n; })},
      {"config.max_depth", "16", "Deepest nesting of objects and arrays in a configuration document.",
       UintSetter("config.max_depth", 1, 64, [](Config& c, uint64_t n) { c.management.config_max_depth = n; })},
      {"config.max_key_bytes", "128", "Longest member name in a configuration document, bytes.",
       UintSetter("config.max_key_bytes", 1, 4096,
                  [](Config& c, uint64_t n) { c.management.config_max_key_bytes = n; })},
      {"config.history", "100",
       "Versions of each configuration document kept (config.history); older ones are deleted as new ones come.",
       UintSetter("config.history", 1, 100000, [](Config& c, uint64_t n) { c.management.config_history = n; })},
      {"config.ack_timeout_s", "60",
       "Seconds a device has to answer a configuration (APPLIED or REJECTED) before its state is TIMED_OUT; it is "
       "sent again when it next subscribes, on config.push or by a config job's retry.",
       UintSetter("config.ack_timeout_s", 1, 604800,
                  [](Config& c, uint64_t n) { c.management.config_ack_timeout_ms = static_cast<int64_t>(n) * 1000; })},
      {"config.audit_applied", "true",
       "Write an audit entry for every device's APPLIED answer (audit.query device_id=X shows them); false keeps only "
       "the stored state (changes and refusals are audited either way).",
       BoolSetter("config.audit_applied", [](Config& c, bool v) { c.management.config_audit_applied = v; })},
      {"ota.max_artifact_bytes", "268435456",
       "Largest firmware image stored for in-band delivery (256 MiB: a full Linux root filesystem image; larger "
       "images carry a url in their signed manifest and devices fetch them over HTTP).",
       UintSetter("ota.max_artifact_bytes", 1, uint64_t{1} << 40,
                  [](Config& c, uint64_t n) { c.management.ota_max_artifact_bytes = n; })},
      {"ota.max_block_bytes", "65536",
       "Largest block a device may ask for in one ota/block request (it also stays under its own Maximum Packet "
       "Size).",
       UintSetter("ota.max_block_bytes", 512, 1048576,
                  [](Config& c, uint64_t n) { c.management.ota_max_block_bytes = static_cast<uint32_t>(n); })},
      {"ota.tenant_bytes_per_s", "67108864",
       "In-band firmware bytes per second a tenant's devices may download from this node together (0 = no budget); "
       "over it a block request is answered busy with retry_after_ms.",
       UintSetter("ota.tenant_bytes_per_s", 0, uint64_t{1} << 40,
                  [](Config& c, uint64_t n) { c.management.ota_tenant_bytes_per_s = n; })},
      {"ota.device_bytes_per_s", "4194304",
       "In-band firmware bytes per second one device may download (0 = no budget).",
       UintSetter("ota.device_bytes_per_s", 0, uint64_t{1} << 40,
                  [](Config& c, uint64_t n) { c.management.ota_device_bytes_per_s = n; })},
      {"certs.expiry_notice_days", "30",
       "Days before a certificate's expiry its notice goes out (audit entry cert.expiring, event "
       "$SYS/fleetmq/events/v1/certs/expiring).",
       UintSetter("certs.expiry_notice_days", 1, 3650,
                  [](Config& c, uint64_t n) { c.management.cert_notice_ms = static_cast<int64_t>(n) * 86'400'000; })},
      {"certs.device_validity_days", "730",
       "Validity of device certificates issued from CSRs (device.register, "
       "device.provision), days.",
       UintSetter(
           "certs.device_validity_days", 1, 3650,
           [](Config& c, uint64_t n) { c.management.device_validity_ms = static_cast<int64_t>(n) * 86'400'000; })},
      {"certs.auto_renew", "true",
       "Renew a device's certificate over MQTT when its expiry notice is due (job auto-renew of the tenant; "
       "offline devices when they next connect). Off by itself when certs.device_validity_days is not longer than "
       "certs.expiry_notice_days.",
       BoolSetter("certs.auto_renew", [](Config& c, bool v) { c.management.cert_auto_renew = v; })},
      {"certs.renewal_grace_s", "3600",
       "Seconds a renewed device's old certificate stays valid after the device first connected with the new one.",
       UintSetter("certs.renewal_grace_s", 0, 30 * 86400,
                  [](Config& c, uint64_t n) { c.management.cert_renewal_grace_ms = static_cast<int64_t>(n) * 1000; })},
      {"certs.auto_renew_rate", "20",
       "Automatic renewals started per second per tenant (each is one ECDSA signature on the management thread).",
       UintSetter("certs.auto_renew_rate", 1, 10000,
                  [](Config& c, uint64_t n) { c.management.cert_auto_renew_rate = static_cast<double>(n); })},
      {"health.min_report_interval_ms", "1000",
       "A device may send one health report per this many ms on average (bursts of 2); more are refused "
       "(health/report/rejected, rate_limited).",
       UintSetter("health.min_report_interval_ms", 0, 86'400'000,
                  [](Config& c, uint64_t n) { c.management.health_min_interval_ms = static_cast<int64_t>(n); })},
      {"health.link_stats_interval_ms", "300000",
       "How often a connected device's broker-observed counters (bytes, packets, denials) and uptime are folded "
       "into its stored health, at most (on its traffic; the rest at disconnect).",
       Uint(&B::link_stats_interval_ms, "health.link_stats_interval_ms", 1000, 86'400'000)},
      {"health.max_metrics", "32", "Free-form metrics one health report may carry (names of at most 32 bytes).",
       UintSetter("health.max_metrics", 0, 256,
                  [](Config& c, uint64_t n) { c.management.health_max_metrics = static_cast<uint32_t>(n); })},
      {"health.rollup_max_scopes", "10000",
       "Groups, models and firmware versions rolled up per tenant (health.summary); later ones are not "
       "(health/rollup_scopes_refused).",
       UintSetter("health.rollup_max_scopes", 0, 1'000'000,
                  [](Config& c, uint64_t n) { c.management.health_rollup_max_scopes = static_cast<uint32_t>(n); })},
      {"health.rollup_max_metrics", "64",
       "Free-form metric names rolled up per tenant; later names are not (health/rollup_metrics_refused).",
       UintSetter("health.rollup_max_metrics", 0, 4096,
                  [](Config& c, uint64_t n) { c.management.health_rollup_max_metrics = static_cast<uint32_t>(n); })},
      {"ota.download_timeout_s", "3600",
       "Default seconds a campaign's device has from its first downloading report to installing (ota.create "
       "timeouts.download_s overrides).",
       UintSetter(
           "ota.download_timeout_s", 1, 2592000,
           [](Config& c, uint64_t n) { c.management.ota_download_timeout_ms = static_cast<int64_t>(n) * 1000; })},
      {"ota.install_timeout_s", "600",
       "Default seconds from installing to the device's disconnect (its reboot) or verdict.",
       UintSetter("ota.install_timeout_s", 1, 2592000,
                  [](Config& c, uint64_t n) { c.management.ota_install_timeout_ms = static_cast<int64_t>(n) * 1000; })},
      {"ota.reboot_timeout_s", "300",
       "Default seconds from the reboot (disconnect after installing) to the device reporting its new version; "
       "a device that never comes back is TIMED_OUT.",
       UintSetter("ota.reboot_timeout_s", 1, 2592000,
                  [](Config& c, uint64_t n) { c.management.ota_reboot_timeout_ms = static_cast<int64_t>(n) * 1000; })},
      {"management.denied_audit_window_ms", "60000",
       "Denied attempts of one identity and reason are audited once, then counted and written as one entry per window.",
       UintSetter("management.denied_audit_window_ms", 1000, 86400000,
                  [](Config& c, uint64_t n) { c.management.denied_audit_window_ms = static_cast<int64_t>(n); })},
      {"management.max_denied_tracked", "100000",
       "Identities whose denials are being aggregated at once; beyond it denials are only counted.",
       UintSetter("management.max_denied_tracked", 1, 100000000,
                  [](Config& c, uint64_t n) { c.management.max_denied_tracked = n; })},
      {"sys_interval", "10", "Seconds between $SYS/broker statistics updates (0 = off).",
       Uint(&B::sys_interval_s, "sys_interval", 0, 86400)},
  };
  return kOptions;
}

}  // namespace

absl::Status SetOption(Config* cfg, const std::string& key, const std::string& value) {
  constexpr std::string_view kTenantAcl = "acl.tenant.";
  if (key.rfind(kTenantAcl, 0) == 0) {
    std::string tenant = key.substr(kTenantAcl.size());
    if (tenant.empty()) return Bad(key, "names no tenant");
    auto rules = ParseAclRules(key, value);
    if (!rules.ok()) return rules.status();
    cfg->acl.SetTenantRules(tenant, std::move(*rules));
    return absl::OkStatus();
  }
  for (const OptionDef& o : Options()) {
    if (key == o.key) return o.set(*cfg, value);
  }
  return absl::InvalidArgumentError("unknown config key '" + key + "'");
}

namespace {

absl::Status ApplyTable(const toml::table& t, const std::string& prefix, Config* cfg) {
  for (const auto& [k, node] : t) {
    std::string key = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (const toml::table* sub = node.as_table()) {
      absl::Status s = ApplyTable(*sub, key, cfg);
      if (!s.ok()) return s;
      continue;
    }
    std::string value;
    if (auto v = node.value<std::string>(); v && node.is_string()) {
      value = *v;
    } else if (node.is_integer()) {
      int64_t n = *node.value<int64_t>();
      if (n < 0) return Bad(key, "must not be negative");
      value = std::to_string(n);
    } else if (node.is_boolean()) {
      value = *node.value<bool>() ? "true" : "false";
    } else if (const toml::array* arr = node.as_array()) {
      for (const auto& item : *arr) {
        auto s = item.value<std::string>();
        if (!s || !item.is_string()) return Bad(key, "array items must be strings");
        if (!value.empty()) value += ",";
        value += *s;
      }
    } else {
      return Bad(key, "unsupported value type");
    }
    absl::Status s = SetOption(cfg, key, value);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LoadConfigFile(const std::string& path, Config* cfg) {
  // Debian's toml++ is built with exceptions on, so parse errors arrive as
  // toml::parse_error; this is the one place we catch, and it becomes a Status.
  toml::table t;
  try {
    t = toml::parse_file(path);
  } catch (const toml::parse_error& e) {
    return absl::InvalidArgumentError("config file " + path + ":" + std::to_string(e.source().begin.line) + ": " +
                                      std::string(e.description()));
  }
  return ApplyTable(t, "", cfg);
}

std::string OptionsHelp(bool markdown) {
  std::string out;
  if (markdown) out += "| key | default | meaning |\n|---|---|---|\n";
  for (const OptionDef& o : Options()) {
    if (markdown) {
      out += std::string("| `") + o.key + "` | `" + o.default_text + "` | " + o.help + " |\n";
    } else {
      out += std::string("  --") + o.key + "=VALUE\n      " + o.help + " (default: " + o.default_text + ")\n";
    }
  }
  return out;
}

absl::Status LoadConfig(int argc, char** argv, Config* cfg, bool* exit_now, std::string* message) {
  *exit_now = false;
  std::vector<std::pair<std::string, std::string>> flags;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      *exit_now = true;
      *message =
          "usage: fleetmq [--config FILE] [--KEY=VALUE ...]\n\n"
          "Every option below may be given as a flag or in the TOML config file\n"
          "(dotted keys are tables: limits.max_packet_size = [limits] max_packet_size).\n\n" +
          OptionsHelp(false);
      return absl::OkStatus();
    }
    if (a == "--version") {
      *exit_now = true;
      *message = std::string("fleetmq ") + FMQ_VERSION + "\n";
      return absl::OkStatus();
    }
    if (a == "--help-markdown") {
      *exit_now = true;
      *message = OptionsHelp(true);
      return absl::OkStatus();
    }
    if (a.rfind("--", 0) != 0) return absl::InvalidArgumentError("unexpected argument '" + a + "'");
    std::string key = a.substr(2), value;
    size_t eq = key.find('=');
    if (eq != std::string::npos) {
      value = key.substr(eq + 1);
      key.resize(eq);
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return absl::InvalidArgumentError("flag --" + key + " needs a value");
    }
    if (key == "config") {
      cfg->config_file = value;
    } else {
      flags.emplace_back(key, value);
    }
  }
  if (!cfg->config_file.empty()) {
    absl::Status s = LoadConfigFile(cfg->config_file, cfg);
    if (!s.ok()) return s;
  }
  for (const auto& [k, v] : flags) {
    absl::Status s = SetOption(cfg, k, v);
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace fmq
