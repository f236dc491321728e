#include "broker/net/workers.h"

#include <sched.h>

#include <algorithm>

namespace fmq {

Workers::Workers(uint32_t n, const ServerOptions& sopts, const BrokerOptions& bopts, BrokerHooks* hooks,
                 const std::vector<Persistence*>& persistence)
    : cluster_(std::max<uint32_t>(n, 1)) {
  ServerOptions o = sopts;
  o.reuse_port = cluster_.size() > 1;
  std::vector<Server*> all;
  for (uint32_t i = 0; i < cluster_.size(); ++i) {
    Persistence* p = i < persistence.size() ? persistence[i] : nullptr;
    servers_.push_back(std::make_unique<Server>(o, bopts, hooks, p));
    servers_.back()->SetCluster(&cluster_, i);
    all.push_back(servers_.back().get());
  }
  for (auto& s : servers_) {
    s->set_peers(all);
    s->share_handshake_count(&servers_[0]->own_handshake_count());
  }
  cluster_.set_link(this);
  // A stop of the first worker (signal) stops the others, each on its loop.
  servers_[0]->SetStopHook([this] {
    for (size_t i = 1; i < servers_.size(); ++i) servers_[i]->DeliverWork([](Server& s) { s.Stop(); });
  });
}

Workers::~Workers() {
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

std::vector<Broker*> Workers::brokers() {
  std::vector<Broker*> out;
  for (auto& s : servers_) out.push_back(&s->broker());
  return out;
}

void Workers::SetTls(tls::TlsServerContext* ctx) {
  for (auto& s : servers_) s->SetTls(ctx);
}

std::string Workers::Listen() {
  std::string err = servers_[0]->Listen();
  if (!err.empty()) return err;
  std::vector<uint16_t> ports;
  for (size_t i = 0; i < servers_[0]->listener_count(); ++i) ports.push_back(servers_[0]->bound_port(i));
  for (size_t i = 1; i < servers_.size(); ++i) {
    err = servers_[i]->Listen(&ports);
    if (!err.empty()) return "worker " + std::to_string(i) + ": " + err;
  }
  return "";
}

void Workers::Run() {
  for (size_t i = 1; i < servers_.size(); ++i) {
    threads_.emplace_back([s = servers_[i].get()] { s->Run(false); });
  }
  servers_[0]->Run(true);
  for (std::thread& t : threads_) t.join();
  threads_.clear();
}

void Workers::Forward(uint32_t from, const MessagePtr& m, const AckBarrierPtr& ack) {
  servers_[from]->QueueForward(m, ack);
}

void Workers::Acknowledge(uint32_t from, uint32_t to, uint64_t conn_id, uint64_t ticket, bool ok) {
  servers_[from]->QueueAck(to, Server::PeerAck{conn_id, ticket, ok});
}

void Workers::Post(uint32_t to, std::function<void(Broker&)> fn) {
  servers_[to]->DeliverWork([fn = std::move(fn)](Server& s) { fn(s.broker()); });
}

uint32_t Workers::Resolve(uint32_t configured) {
  if (configured != 0) return std::min(configured, Cluster::kMaxWorkers);
  cpu_set_t set;
  CPU_ZERO(&set);
  int n = sched_getaffinity(0, sizeof set, &set) == 0 ? CPU_COUNT(&set) : 1;
  return static_cast<uint32_t>(std::clamp(n, 1, static_cast<int>(Cluster::kMaxWorkers)));
}

}  // namespace fmq
