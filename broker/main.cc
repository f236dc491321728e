// fleetmq entry point: load the configuration, prepare the data dir, run
// the worker loops until SIGINT/SIGTERM.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <string>

#include "broker/config.h"
#include "broker/modules/admin_module.h"
#include "broker/net/workers.h"
#include "broker/store/broker_store.h"
#include "broker/tls/crl_dir.h"
#include "broker/tls/tls.h"
#include "common/log.h"
#include "mgmt/admin/service.h"
#include "mgmt/pki/pki_dir.h"
#include "storage/kv_store.h"
#include "storage/registry.h"

namespace {

// Creates the data dir (and parents) and takes an exclusive lock on
// DATA_DIR/LOCK so two brokers never share one directory.
int PrepareDataDir(const std::string& dir, std::string* err) {
  std::string path;
  for (size_t i = 0; i <= dir.size(); ++i) {
    if (i == dir.size() || dir[i] == '/') {
      path = dir.substr(0, i);
      if (!path.empty() && mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
        *err = "data_dir: cannot create " + path + ": " + std::strerror(errno);
        return -1;
      }
    }
  }
  std::string lock = dir + "/LOCK";
  int fd = open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    *err = "data_dir: cannot open " + lock + ": " + std::strerror(errno);
    return -1;
  }
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    *err = "data_dir: " + dir + " is in use by another fleetmq (lock " + lock + ")";
    close(fd);
    return -1;
  }
  return fd;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  fmq::Config cfg;
  bool exit_now = false;
  std::string message;
  absl::Status st = fmq::LoadConfig(argc, argv, &cfg, &exit_now, &message);
  if (!st.ok()) {
    std::fprintf(stderr, "fleetmq: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  if (exit_now) {
    std::fputs(message.c_str(), stdout);
    return 0;
  }
  fmq::SetLogLevel(cfg.log_level);
  std::string err;
  int lock_fd = PrepareDataDir(cfg.data_dir, &err);
  if (lock_fd < 0) {
    std::fprintf(stderr, "fleetmq: %s\n", err.c_str());
    return 1;
  }
  auto kv = fmq::storage::OpenRocksKvStore(cfg.data_dir + "/db", cfg.rocks);
  if (!kv.ok()) {
    std::fprintf(stderr, "fleetmq: storage: %s\n", std::string(kv.status().message()).c_str());
    return 1;
  }
  fmq::SystemClock clock;
  const uint32_t nworkers = fmq::Workers::Resolve(cfg.workers);
  // One store (the batch of one loop turn) per worker; they share RocksDB.
  std::vector<std::unique_ptr<fmq::BrokerStore>> stores;
  std::vector<fmq::Persistence*> persistence;
  for (uint32_t i = 0; i < nworkers; ++i) {
    stores.push_back(std::make_unique<fmq::BrokerStore>(&clock));
    persistence.push_back(stores.back().get());
  }
  std::unique_ptr<fmq::tls::TlsServerContext> tls;
  if (!cfg.server.tls_listeners.empty()) {
    auto files = fmq::pki::EnsurePki(cfg.data_dir + "/pki", "default", cfg.tls_server_name, clock.WallMs());
    if (!files.ok()) {
      std::fprintf(stderr, "fleetmq: pki: %s\n", std::string(files.status().message()).c_str());
      return 1;
    }
    auto trust = fmq::pki::TrustBundle(*files);
    if (!trust.ok()) {
      std::fprintf(stderr, "fleetmq: pki: %s\n", std::string(trust.status().message()).c_str());
      return 1;
    }
    auto ctx = fmq::tls::TlsServerContext::Create(fmq::pki::ReadFile(files->server_crt),
                                                  fmq::pki::ReadFile(files->server_key), *trust);
    if (!ctx.ok()) {
      std::fprintf(stderr, "fleetmq: tls: %s\n", std::string(ctx.status().message()).c_str());
      return 1;
    }
    tls = std::move(*ctx);
    st = tls->UseTicketKeys(files->dir + "/ticket-keys", cfg.tls_tickets, &clock);
    if (!st.ok()) FMQ_LOG_ERROR("tls: %s", std::string(st.message()).c_str());
    FMQ_LOG_INFO("PKI in %s (%zu tenant CA%s)", files->dir.c_str(), files->tenant_cas.size(),
                 files->tenant_cas.size() == 1 ? "" : "s");
  }
  // The management module (admin control topic, connectivity, device
  // gate): its own thread over the same RocksDB.
  fmq::admin::ServiceOptions aopts;
  aopts.pki_dir = cfg.data_dir + "/pki";
  if (!cfg.server.tls_listeners.empty()) {
    const auto& l = cfg.server.tls_listeners.front();
    aopts.mqtt_endpoint =
        "mqtts://" + (l.host == "0.0.0.0" ? cfg.tls_server_name : l.host) + ":" + std::to_string(l.port);
  }
  aopts.jobs.max_active_jobs = cfg.management.jobs_max_active;
  aopts.jobs.audit_executions = cfg.management.jobs_audit_executions;
  aopts.max_request_bytes = cfg.management.max_request_bytes;
  aopts.config.limits.max_bytes = cfg.management.config_max_document_bytes;
  aopts.config.limits.max_depth = cfg.management.config_max_depth;
  aopts.config.limits.max_key_bytes = cfg.management.config_max_key_bytes;
  aopts.config.history = cfg.management.config_history;
  aopts.config.ack_timeout_ms = cfg.management.config_ack_timeout_ms;
  aopts.config.audit_applied = cfg.management.config_audit_applied;
  aopts.ota.max_artifact_bytes = cfg.management.ota_max_artifact_bytes;
  aopts.ota.max_block_bytes = cfg.management.ota_max_block_bytes;
  aopts.ota.tenant_bytes_per_s = cfg.management.ota_tenant_bytes_per_s;
  aopts.ota.device_bytes_per_s = cfg.management.ota_device_bytes_per_s;
  aopts.ota.download_timeout_ms = cfg.management.ota_download_timeout_ms;
  aopts.ota.install_timeout_ms = cfg.management.ota_install_timeout_ms;
  aopts.ota.reboot_timeout_ms = cfg.management.ota_reboot_timeout_ms;
  aopts.health.min_interval_ms = cfg.management.health_min_interval_ms;
  aopts.health.max_metrics = cfg.management.health_max_metrics;
  aopts.health.rollup.max_scopes = cfg.management.health_rollup_max_scopes;
  aopts.health.rollup.max_metrics = cfg.management.health_rollup_max_metrics;
  aopts.certs.notice_ms = cfg.management.cert_notice_ms;
  aopts.device_validity_ms = cfg.management.device_validity_ms;
  aopts.renewal.auto_renew = cfg.management.cert_auto_renew;
  aopts.renewal.grace_ms = cfg.management.cert_renewal_grace_ms;
  aopts.renewal.auto_rate_per_s = cfg.management.cert_auto_renew_rate;
  fmq::admin::Service admin_service(kv->get(), &clock, aopts);
  fmq::AdminModule admin_module(&admin_service, kv->get(), &clock, cfg.management);
  // Declared before the workers: their clients' TLS sessions use this context.
  fmq::Workers workers(nworkers, cfg.server, cfg.broker, &admin_module, persistence);
  fmq::Server& server = workers.main();  // signals, management completions, CRL polling
  admin_module.Attach(&server.broker(), &workers.cluster(), tls.get(), server.Notifier());
  server.AddWakeHook([&admin_module] { admin_module.RunCompletions(); });
  if (tls) {
    workers.SetTls(tls.get());
    // The revocation set: every revoked serial of every tenant, checked on
    // each handshake in O(1).
    fmq::storage::Registry registry(kv->get());
    size_t revoked = 0;
    st = registry.ForEachRevoked([&](std::string_view tenant, const fmq::fb::CertificateT& c) {
      tls->Revoke(tenant, c.serial);
      ++revoked;
    });
    if (!st.ok()) {
      std::fprintf(stderr, "fleetmq: storage: %s\n", std::string(st.message()).c_str());
      return 1;
    }
    FMQ_LOG_INFO("%zu revoked certificate%s loaded", revoked, revoked == 1 ? "" : "s");
  }
  for (fmq::Broker* b : workers.brokers()) b->SetAcl(&cfg.acl);
  // External CRL files, merged into the revocation set and reloaded live.
  std::unique_ptr<fmq::tls::CrlDir> crls;
  if (tls) {
    const std::string crl_dir = cfg.tls_crl_dir.empty() ? cfg.data_dir + "/crl" : cfg.tls_crl_dir;
    mkdir(crl_dir.c_str(), 0700);
    // Serials newly revoked by a reload: every connection using one is
    // closed, on every worker, as for a revocation through the admin API.
    auto close_revoked = [&workers](std::vector<std::string> keys) {
      workers.cluster().PostAll([keys = std::move(keys)](fmq::Broker& b) {
        for (const std::string& k : keys) {
          const size_t nul = k.find('\0');
          b.KickSerial(std::string_view(k).substr(0, nul), std::string_view(k).substr(nul + 1));
        }
      });
    };
    crls = std::make_unique<fmq::tls::CrlDir>(crl_dir, tls.get(), close_revoked);
    crls->Poll(true);
    server.AddTickHook([c = crls.get(), keys = tls->ticket_keys(), n = 0]() mutable {
      if (++n % 20 != 0) return;            // every 5 s:
      c->Poll();                            // CRL files changed?
      if (keys != nullptr) keys->Rotate();  // a session-ticket key due (or one to drop)?
    });
    server.SetReloadHook([c = crls.get()] { c->Poll(true); });
  }
  // Declared after the workers: destroyed first, while the loop handles they
  // notify still exist. One writer thread per worker (RocksDB takes
  // concurrent batches and commits them as a group).
  // They share one health: one database on one disk.
  std::vector<std::unique_ptr<fmq::StorageWriter>> writers;
  auto health = std::make_shared<fmq::StorageHealth>();
  for (uint32_t i = 0; i < nworkers; ++i) {
    fmq::Server& w = workers.worker(i);
    writers.push_back(std::make_unique<fmq::StorageWriter>(kv->get(), cfg.storage, w.Notifier(), health));
    fmq::BrokerStore* store = stores[i].get();
    fmq::StorageWriter* writer = writers.back().get();
    store->set_writer(writer);
    w.SetStorageHooks([store] { store->FlushIfDirty(); }, [writer] { writer->RunCompletions(); });
  }

  const int64_t t0 = clock.NowMs();
  fmq::LoadStats loaded;
  st = stores[0]->Load(**kv, workers.brokers(), &loaded);
  if (!st.ok()) {
    std::fprintf(stderr, "fleetmq: storage: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  FMQ_LOG_INFO(
      "restored %llu sessions, %llu queued/inflight messages, %llu retained messages in %lld ms"
      " (%llu unreadable records skipped)",
      static_cast<unsigned long long>(loaded.sessions), static_cast<unsigned long long>(loaded.messages),
      static_cast<unsigned long long>(loaded.retained), static_cast<long long>(clock.NowMs() - t0),
      static_cast<unsigned long long>(loaded.skipped_corrupt));
  st = admin_module.Start();
  if (!st.ok()) {
    std::fprintf(stderr, "fleetmq: management: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  err = workers.Listen();
  if (!err.empty()) {
    std::fprintf(stderr, "fleetmq: %s\n", err.c_str());
    return 1;
  }
  server.SetReadyHook([&cfg, nworkers] {
    FMQ_LOG_INFO("fleetmq %s started (data dir %s, %u worker%s)", FMQ_VERSION, cfg.data_dir.c_str(), nworkers,
                 nworkers == 1 ? "" : "s");
  });
  workers.Run();
  admin_module.Stop();
  for (uint32_t i = 0; i < nworkers; ++i) {
    stores[i]->FlushIfDirty();  // sessions saved while shutting down
    writers[i]->Drain();
  }
  FMQ_LOG_INFO("fleetmq stopped");
  close(lock_fd);
  return 0;
}
