// N worker loops in one process (doc/architecture.md, "Threading model"):
// each worker is a Server (loop, Broker, listeners on the shared ports via
// SO_REUSEPORT) on its own thread; the first runs on the caller's thread and
// handles signals. Implements Cluster::Link: a message routed on one worker
// goes to every other worker in one batch per loop turn (mutex-guarded
// inbox, one uv_async wake per batch), and work is posted the same way.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "broker/core/cluster.h"
#include "broker/net/server.h"

namespace fmq {

class Workers final : public Cluster::Link {
 public:
  // `persistence[i]` is worker i's (null entries: nothing stored).
  Workers(uint32_t n, const ServerOptions& sopts, const BrokerOptions& bopts, BrokerHooks* hooks,
          const std::vector<Persistence*>& persistence);
  ~Workers() override;

  uint32_t size() const { return static_cast<uint32_t>(servers_.size()); }
  Server& worker(uint32_t i) { return *servers_[i]; }
  Server& main() { return *servers_[0]; }
  Cluster& cluster() { return cluster_; }
  std::vector<Broker*> brokers();

  void SetTls(tls::TlsServerContext* ctx);
  // Binds every worker's listeners (the others on the ports the first got).
  std::string Listen();
  // Runs every worker until a termination signal (or main().Stop()) has
  // stopped them all; worker 0 on the calling thread.
  void Run();

  // Cluster::Link.
  void Forward(uint32_t from, const MessagePtr& m, const AckBarrierPtr& ack) override;
  void Acknowledge(uint32_t from, uint32_t to, uint64_t conn_id, uint64_t ticket, bool ok) override;
  void Post(uint32_t to, std::function<void(Broker&)> fn) override;

  // The number of workers `configured` (0: one per CPU this process may use).
  static uint32_t Resolve(uint32_t configured);

 private:
  Cluster cluster_;
  std::vector<std::unique_ptr<Server>> servers_;
  std::vector<std::thread> threads_;
};

}  // namespace fmq
