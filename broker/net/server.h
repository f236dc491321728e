// The libuv side of one worker: listening sockets, TCP clients (each a
// Transport for its Connection), the flush of all pending output once per
// loop turn (a uv_check handle, like redis' beforeSleep), the 250 ms tick
// that drives Broker::Tick, and graceful shutdown on SIGINT/SIGTERM.
// Everything here runs on the worker's loop thread, except the inbox
// (Deliver*), which other workers fill (broker/net/workers.h).
#pragma once

#include <uv.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "broker/core/broker.h"
#include "broker/core/cluster.h"
#include "broker/tls/tls.h"
#include "common/clock.h"

namespace fmq {

struct ListenAddress {
  std::string host = "127.0.0.1";
  uint16_t port = 1883;
};

struct ServerOptions {
  std::vector<ListenAddress> listeners{ListenAddress{}};
  // MQTT over mutual TLS (needs SetTls before Listen).
  std::vector<ListenAddress> tls_listeners{ListenAddress{"127.0.0.1", 8883}};
  // TLS handshakes in progress at once; beyond it new TLS connections are
  // closed at accept (counted), so a flood cannot queue unbounded work.
  uint32_t max_pending_handshakes = 256;
  // Share of the loop's time TLS handshakes may take (a token bucket of
  // handshake time holding at most 10 ms worth); beyond it handshake input
  // waits (reading stopped) until the bucket refills, so a flood of
  // handshakes cannot starve established connections. 100 = no limit.
  uint32_t handshake_share_percent = 50;
  // Disable Nagle on client sockets: MQTT packets are small and latency
  // matters more than a few saved segments (mosquitto's set_tcp_nodelay).
  bool tcp_nodelay = true;
  int listen_backlog = 1024;
  // Several workers listen on the same ports (SO_REUSEPORT: the kernel
  // spreads new connections over them). Set by Workers.
  bool reuse_port = false;
  // Messages forwarded to a worker and not yet routed there. Beyond it, the
  // other workers stop reading the connection that produced more (as for a
  // slow reader's output), until that inbox is back under half, so one slow
  // worker cannot make the others' inboxes grow without bound.
  uint32_t max_inbox_messages = 100000;
  // How long a closing connection may take to drain its output before the
  // socket is closed hard.
  uint32_t close_timeout_ms = 5000;
  // After our output is sent and writing shut down, how long the peer's
  // remaining input is read and discarded, waiting for its close, before the
  // socket is closed (a close with unread input resets the connection, and
  // the peer may lose our DISCONNECT's reason code). Ticks are 250 ms.
  uint32_t close_drain_ms = 1000;
};

class TcpClient;
struct HandedOff;

class Server {
 public:
  Server(const ServerOptions& sopts, const BrokerOptions& bopts, BrokerHooks* hooks,
         Persistence* persistence = nullptr);
  ~Server();

  // Joins a multi-worker broker as worker `index` (Workers does this,
  // before Listen).
  void SetCluster(Cluster* cluster, uint32_t index);

  // Binds every listener; returns an error message or "". `ports`, when
  // given, replaces each listener's port (the other workers bind the ports
  // the first one got, port 0 included).
  std::string Listen(const std::vector<uint16_t>* ports = nullptr);
  // Runs the loop until Stop() or, with `signals`, a termination signal.
  void Run(bool signals = true);
  // Graceful stop: DISCONNECT 0x8B to everyone, flush, close. Loop-thread only.
  void Stop();

  // Storage glue: `turn_end` runs once per loop turn before client output is
  // written (hand pending changes to the storage thread); `wake` runs on the
  // loop thread after Notifier() was called from any thread.
  void SetStorageHooks(std::function<void()> turn_end, std::function<void()> wake);
  std::function<void()> Notifier();
  // Another function run on the loop thread after Notifier() (management
  // modules' completions). Before Run().
  void AddWakeHook(std::function<void()> wake);
  // Run on every 250 ms tick, and on SIGHUP (reload what can be reloaded,
  // e.g. external CRL files). Before Run().
  void AddTickHook(std::function<void()> tick) { tick_hooks_.push_back(std::move(tick)); }
  void SetReloadHook(std::function<void()> reload) { reload_hook_ = std::move(reload); }

  // Run() calls it once the signal handlers are installed, just before the
  // loop starts (main logs "started" there: a test that sees the line may
  // send SIGTERM at once).
  void SetReadyHook(std::function<void()> hook) { ready_hook_ = std::move(hook); }

  // Called by Stop() (the first worker tells the others to stop too).
  void SetStopHook(std::function<void()> hook) { stop_hook_ = std::move(hook); }

  // A message routed by another worker, with its AckBarrier (may be null).
  struct Forwarded {
    MessagePtr msg;
    AckBarrierPtr ack;
  };
  // A barrier of this worker completed on another (Cluster::Link::Acknowledge).
  struct PeerAck {
    uint64_t conn_id;
    uint64_t ticket;
    bool ok;
  };
  // Cross-worker inbox, filled from other workers' threads: messages they
  // routed and work for this loop, run in arrival order when the loop wakes;
  // completed barriers.
  void DeliverMessages(const std::vector<Forwarded>& msgs);
  void DeliverWork(std::function<void(Server&)> fn);
  void DeliverAcks(const std::vector<PeerAck>& acks);
  // Forwarded messages waiting in this worker's inbox (any thread).
  size_t inbox_pending() const { return inbox_pending_.load(std::memory_order_relaxed); }
  // Outgoing side, loop thread only: a message this worker routed, handed
  // to every other worker at the end of the loop turn, in one batch each;
  // a completed barrier of worker `to`, the same way.
  void QueueForward(const MessagePtr& m, const AckBarrierPtr& ack) { outbox_.push_back(Forwarded{m, ack}); }
  void QueueAck(uint32_t to, PeerAck a) { ack_outbox_[to].push_back(a); }
  void set_peers(std::vector<Server*> peers) {
    peers_ = std::move(peers);
    ack_outbox_.resize(peers_.size());
  }
  void share_handshake_count(std::atomic<uint32_t>* n) { handshaking_ = n; }
  std::atomic<uint32_t>& own_handshake_count() { return own_handshaking_; }

  // TLS context for the TLS listeners (owned by the caller).
  void SetTls(tls::TlsServerContext* ctx) { tls_ = ctx; }

  // The port actually bound for listener i (useful with port 0).
  uint16_t bound_port(size_t i) const { return bound_ports_[i]; }
  size_t listener_count() const { return bound_ports_.size(); }
  Broker& broker() { return broker_; }

 private:
  friend class TcpClient;
  static void OnConnection(uv_stream_t* server, int status);
  static void OnCheck(uv_check_t* h);
  static void OnTick(uv_timer_t* t);
  static void OnSignal(uv_signal_t* s, int signum);
  static void OnWake(uv_async_t* a);

  void MarkDirty(TcpClient* c);
  // Some other worker has more than `limit` forwarded messages to route.
  bool PeersOver(size_t limit) const;
  void PauseForPeers(TcpClient* c);
  void ResumeIfPeersDrained();
  // Several workers: the worker owning the session a CONNECT asks for, -1
  // while `bytes` do not hold the whole first packet yet.
  int HomeOfConnect(std::string_view bytes, const PeerIdentity* who) const;
  void HandOff(uint32_t home, std::shared_ptr<HandedOff> h);
  void Adopt(HandedOff& h);
  static void OnPeerWake(uv_async_t* a);
  void FlushOutbox();
  void CountTlsFailure(const std::string& peer, const std::string& why);
  void Flush();
  void Forget(TcpClient* c);
  bool HandshakeBudgetLeft();
  void DeferHandshake(TcpClient* c);
  void ResumeDeferredHandshakes();
  static void OnHandshakeTimer(uv_timer_t* t);

  ServerOptions sopts_;
  SystemClock clock_;
  Broker broker_;
  uv_loop_t loop_;
  struct Listener {
    uv_tcp_t tcp;
    Server* server;
    bool tls;
  };
  std::vector<std::unique_ptr<Listener>> listeners_;
  tls::TlsServerContext* tls_ = nullptr;
  std::vector<uint16_t> bound_ports_;
  uv_check_t check_;
  uv_timer_t tick_;
  uv_signal_t sigint_;
  uv_signal_t sigterm_;
  uv_async_t wake_;
  uv_async_t peer_wake_;
  Cluster* cluster_ = nullptr;
  uint32_t index_ = 0;
  std::vector<Server*> peers_;                    // every worker, this one included
  std::vector<Forwarded> outbox_;                 // loop thread
  std::vector<std::vector<PeerAck>> ack_outbox_;  // loop thread, by worker
  struct InboxItem {
    Forwarded fwd;  // or
    std::function<void(Server&)> fn;
  };
  std::mutex inbox_mu_;
  std::vector<InboxItem> inbox_;              // guarded by inbox_mu_
  std::vector<PeerAck> inbox_acks_;           // guarded by inbox_mu_
  std::vector<InboxItem> inbox_work_;         // loop thread: the batch being run
  std::vector<PeerAck> inbox_acks_work_;      // loop thread
  std::atomic<size_t> inbox_pending_{0};      // forwarded messages not yet routed here
  std::vector<TcpClient*> paused_for_peers_;  // loop thread
  std::function<void()> stop_hook_;
  std::function<void()> ready_hook_;
  std::function<void()> turn_end_hook_;
  std::vector<std::function<void()>> wake_hooks_;
  std::vector<std::function<void()>> tick_hooks_;
  std::function<void()> reload_hook_;
  uv_signal_t sighup_;
  // TLS handshakes in progress; with several workers, one count for all
  // (max_pending_handshakes is a process-wide bound).
  std::atomic<uint32_t> own_handshaking_{0};
  std::atomic<uint32_t>* handshaking_ = &own_handshaking_;
  int64_t handshake_tokens_ns_ = 0;  // handshake time budget (token bucket)
  int64_t handshake_refill_ns_ = 0;
  uv_timer_t handshake_timer_;        // resumes deferred handshakes while any wait
  std::vector<TcpClient*> deferred_;  // handshakes waiting for the next window
  uint64_t flood_logged_ = 0;
  std::vector<TcpClient*> dirty_;
  absl::flat_hash_set<TcpClient*> closing_;  // draining their output before the close
  uint64_t next_conn_id_ = 1;
  bool stopping_ = false;
  char read_buf_[64 * 1024];
};

}  // namespace fmq
