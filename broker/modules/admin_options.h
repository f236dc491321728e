// Limits of the management module (broker/modules/admin_module.h), set from
// the options table (broker/config.cc: management.*). Plain data; read-only
// after start-up.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fmq {

struct AdminModuleOptions {
  size_t max_queued_requests = 1024;  // beyond: PUBACK 0x97
  // Beyond it connectivity events are coalesced per device (the latest
  // state of each device is kept, the audit loses the transitions between):
  // connectivity is never lost.
  size_t max_queued_events = 1 << 20;
  // Device-channel messages waiting for the management thread; beyond:
  // PUBACK 0x97, counted (the device retries).
  size_t max_queued_device_messages = 65536;
  // Largest device-channel message accepted (doc/device-api.md).
  size_t max_device_message_bytes = 8192;
  // Job engine (mgmt/jobs/job_engine.h EngineOptions).
  size_t jobs_max_active = 1000;
  bool jobs_audit_executions = true;
  // Denied attempts (a revoked, suspended or retired device connecting, a
  // device on the control topic) are audited at once the first time; more
  // of the same (tenant, identity, reason) within this window are counted
  // and written as one entry when it ends, so a device in a reconnect loop
  // costs at most two audit writes per window, not one per attempt.
  int64_t denied_audit_window_ms = 60'000;
  // Distinct (tenant, identity, reason) tracked at once; beyond it denials
  // are counted (denied_unaudited) but not audited until the windows drain.
  size_t max_denied_tracked = 100'000;
  // Largest admin request (one MQTT message on the control topic).
  size_t max_request_bytes = 256 * 1024;
  // Configuration (mgmt/config/config_feature.h Options).
  size_t config_max_document_bytes = 64 * 1024;
  size_t config_max_depth = 16;
  size_t config_max_key_bytes = 128;
  size_t config_history = 100;
  int64_t config_ack_timeout_ms = 60'000;
  bool config_audit_applied = true;
  // Firmware (mgmt/ota/ota_feature.h Options).
  uint64_t ota_max_artifact_bytes = 256ull << 20;
  uint32_t ota_max_block_bytes = 64 * 1024;
  uint64_t ota_tenant_bytes_per_s = 64ull << 20;
  uint64_t ota_device_bytes_per_s = 4ull << 20;
  int64_t ota_download_timeout_ms = 3'600'000;
  int64_t ota_install_timeout_ms = 600'000;
  int64_t ota_reboot_timeout_ms = 300'000;
  // Health (mgmt/health/health_feature.h Options).
  int64_t health_min_interval_ms = 1000;
  uint32_t health_max_metrics = 32;
  uint32_t health_rollup_max_scopes = 10'000;
  uint32_t health_rollup_max_metrics = 64;
  // Certificates (mgmt/certs/expiry.h, ServiceOptions::device_validity_ms).
  int64_t cert_notice_ms = 30 * 86'400'000LL;
  int64_t device_validity_ms = 730 * 86'400'000LL;
  // Renewal over MQTT (mgmt/certs/renewal.h RenewalOptions).
  bool cert_auto_renew = true;
  int64_t cert_renewal_grace_ms = 3'600'000;
  double cert_auto_renew_rate = 20;
};

}  // namespace fmq
