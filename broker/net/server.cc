#include "broker/net/server.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "broker/mqtt/framer.h"
#include "common/log.h"

namespace fmq {

// A connection on its way to its session's home worker: the socket (a
// duplicate descriptor), the TLS session as it stands, the identity, and
// the MQTT bytes read so far (the whole CONNECT, maybe more).
struct HandedOff {
  int fd = -1;
  std::string peer;
  std::unique_ptr<tls::TlsSession> tls;
  std::unique_ptr<PeerIdentity> identity;
  std::string bytes;
  HandedOff() = default;
  HandedOff(const HandedOff&) = delete;
  HandedOff& operator=(const HandedOff&) = delete;
  ~HandedOff() {
    if (fd >= 0) close(fd);
  }
};

// One accepted TCP connection: the Transport of its Connection.
class TcpClient final : public Transport {
 public:
  TcpClient(Server* server, uint64_t id, std::string peer, tls::TlsServerContext* tls)
      : server_(server), conn_(&server->broker_, this, id, std::move(peer)) {
    handle_.data = this;
    routed_ = server->cluster_ == nullptr || server->cluster_->size() == 1;
    if (tls != nullptr) {
      tls_ = std::make_unique<tls::TlsSession>(tls);
      server_->handshaking_->fetch_add(1, std::memory_order_relaxed);
      in_handshake_ = true;
    }
  }

  // The handshake is over (done, failed, or the socket closed).
  void LeaveHandshake() {
    if (in_handshake_) {
      in_handshake_ = false;
      server_->handshaking_->fetch_sub(1, std::memory_order_relaxed);
    }
  }

  uv_tcp_t* handle() { return &handle_; }
  Connection& conn() { return conn_; }

  void RequestFlush() override {
    if (!dirty_ && !closed_) {
      dirty_ = true;
      server_->MarkDirty(this);
    }
  }
  size_t Backlog() const override { return handle_.write_queue_size; }

  // Graceful close: our output (a DISCONNECT or CONNACK with its reason)
  // drains, then we shut down writing, and whatever the peer still sends is
  // read and discarded until it closes too or the drain window ends.
  // Closing a socket with unread input makes the kernel answer with RST,
  // and a client whose next write then fails may never read the reason.
  void Close() override {
    if (closing_) return;
    closing_ = true;
    close_deadline_ = server_->clock_.NowMs() + server_->sopts_.close_timeout_ms;
    read_paused_ = false;
    uv_read_start(reinterpret_cast<uv_stream_t*>(&handle_), OnAlloc, OnRead);  // OnRead discards
    FlushOutput();
    if (tls_) {
      tls_->Close();  // close_notify
      WriteBytes(tls_->TakeCiphertext());
    }
    auto* req = new uv_shutdown_t;
    req->data = this;
    if (uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&handle_), OnShutdown) != 0) {
      delete req;
      HardClose();
      return;
    }
    server_->closing_.insert(this);
  }

  // Writes everything the connection has produced (encrypted under TLS).
  void FlushOutput() {
    dirty_ = false;
    if (closed_) return;
    if (tls_) {
      if (conn_.HasOutput()) tls_->Write(conn_.TakeOutput());
      WriteBytes(tls_->TakeCiphertext());
      return;
    }
    if (!conn_.HasOutput()) return;
    WriteBytes(conn_.TakeOutput());
  }

  void WriteBytes(std::string bytes) {
    if (closed_ || bytes.empty()) return;
    auto* w = new WriteReq;
    w->data = std::move(bytes);
    w->req.data = w;
    uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
    // Try the fast path first: most writes complete at once.
    int n = uv_try_write(reinterpret_cast<uv_stream_t*>(&handle_), &buf, 1);
    if (n == static_cast<int>(w->data.size())) {
      delete w;
      MaybeResumeReading();
      return;
    }
    if (n > 0) {
      buf.base += n;
      buf.len -= static_cast<unsigned>(n);
    } else if (n != UV_EAGAIN) {
      delete w;
      return;  // the read side will report the error
    }
    if (uv_write(&w->req, reinterpret_cast<uv_stream_t*>(&handle_), &buf, 1, OnWrite) != 0) {
      delete w;
      return;
    }
    ++writes_in_flight_;
  }

  // MQTT bytes in (plaintext). Several workers: until the first packet says
  // which worker owns the session, the bytes are held; a CONNECT for a
  // session homed on another worker moves the connection there.
  void Feed(std::string_view bytes) {
    if (routed_) {
      conn_.OnBytes(bytes);
      return;
    }
    held_.append(bytes);
    const int home = server_->HomeOfConnect(held_, conn_.identity());
    if (home < 0) return;  // the first packet is not complete yet
    routed_ = true;
    std::string held;
    held.swap(held_);
    if (static_cast<uint32_t>(home) == server_->index_) {
      conn_.OnBytes(held);
      return;
    }
    held_ = std::move(held);
    handoff_to_ = static_cast<int8_t>(home);
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&handle_));
    MaybeHandOff();
  }

  // Moves the connection to worker `handoff_to_` once nothing it wrote is
  // still queued here (the TLS handshake's last flight).
  void MaybeHandOff() {
    if (handoff_to_ < 0 || closing_ || closed_) return;
    if (tls_ && tls_->HasCiphertext()) WriteBytes(tls_->TakeCiphertext());
    if (writes_in_flight_ > 0) return;  // OnWrite calls again
    const auto to = static_cast<uint32_t>(handoff_to_);
    handoff_to_ = -1;
    uv_os_fd_t fd = -1;
    int copy = -1;
    if (uv_fileno(reinterpret_cast<uv_handle_t*>(&handle_), &fd) == 0) copy = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    if (copy < 0) {
      FMQ_LOG_WARN("client from %s: cannot hand over to worker %u: %s", conn_.peer().c_str(), to, std::strerror(errno));
      conn_.OnTransportClosed();
      HardClose();
      return;
    }
    auto h = std::make_shared<HandedOff>();
    h->fd = copy;
    h->peer = conn_.peer();
    h->tls = std::move(tls_);
    if (conn_.identity() != nullptr) h->identity = std::make_unique<PeerIdentity>(*conn_.identity());
    h->bytes = std::move(held_);
    server_->broker_.Detach(conn_);
    HardClose();  // closes our descriptor; the socket lives on in `copy`
    server_->HandOff(to, std::move(h));
  }

  // The receiving side of a hand-over: the state moved here, the
  // connection accepted by this worker's broker, the held bytes fed.
  void Adopted(HandedOff& h) {
    tls_ = std::move(h.tls);
    routed_ = true;
    if (h.identity) conn_.set_identity(std::move(*h.identity));
    server_->broker_.Accept(&conn_);
    conn_.OnBytes(h.bytes);
    if (!closing_ && !closed_) {
      uv_read_start(reinterpret_cast<uv_stream_t*>(&handle_), OnAlloc, OnRead);
    }
  }

  void HardClose() {
    if (closed_) return;
    closed_ = true;
    uv_close(reinterpret_cast<uv_handle_t*>(&handle_), OnClosed);
  }

  // Decrypts, hands the verified identity to the connection before its
  // first MQTT byte, and feeds it the plaintext. False when the TLS layer
  // failed and the socket is being closed.
  bool OnTlsBytes(std::string_view ciphertext) {
    tls_->OnCiphertext(ciphertext);
    if (tls_->state() != tls::TlsSession::State::kHandshake) LeaveHandshake();
    if (tls_->state() == tls::TlsSession::State::kFailed) {
      server_->CountTlsFailure(conn_.peer(), tls_->error());
      WriteBytes(tls_->TakeCiphertext());  // the alert, if any
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&handle_));
      conn_.OnTransportClosed();
      HardClose();
      return false;
    }
    if (tls_->state() == tls::TlsSession::State::kOpen && conn_.identity() == nullptr) {
      const pki::Identity& id = tls_->identity();
      conn_.set_identity(PeerIdentity{
          id.tenant, id.name, id.role == pki::Role::kDevice, id.role == pki::Role::kAdmin, tls_->peer_serial(), {}});
    }
    std::string plain = tls_->TakePlaintext();
    if (!plain.empty()) Feed(plain);
    if (tls_ && tls_->HasCiphertext()) RequestFlush();  // (null once handed over)
    return true;
  }

  // What this read routed went to the other workers' inboxes: while one of
  // them is over its bound, this connection is not read (its publisher
  // waits in TCP), whatever it sends.
  void MaybePauseForPeers() {
    if (paused_for_peers_ || closing_ || closed_ || !server_->PeersOver(server_->sopts_.max_inbox_messages)) return;
    uv_read_stop(reinterpret_cast<uv_stream_t*>(&handle_));
    paused_for_peers_ = true;
    server_->PauseForPeers(this);
  }
  // The inboxes drained: reading again (unless paused for its own output).
  void ResumeFromPeers() {
    paused_for_peers_ = false;
    if (!read_paused_ && !closing_ && !closed_ && !deferred_listed_ && handoff_to_ < 0) {
      uv_read_start(reinterpret_cast<uv_stream_t*>(&handle_), OnAlloc, OnRead);
    }
  }
  bool paused_for_peers() const { return paused_for_peers_; }

  int64_t close_deadline() const { return close_deadline_; }
  bool closed() const { return closed_; }
  // Where this client sits in the server's lists, so forgetting it is O(1)
  // even when thousands close in one loop turn.
  bool dirty() const { return dirty_; }
  bool deferred_listed() const { return deferred_listed_; }
  uint32_t dirty_index = 0;

  static void OnAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
    auto* self = static_cast<TcpClient*>(h->data);
    *buf = uv_buf_init(self->server_->read_buf_, sizeof self->server_->read_buf_);
  }

  // Handshake work spends the window's handshake budget; over it, the
  // bytes wait (reading stopped) until the next tick window, so
  // established connections keep most of the loop whatever the flood.
  bool HandshakeStep(std::string_view ciphertext) {
    const auto t0 = std::chrono::steady_clock::now();
    const bool ok = OnTlsBytes(ciphertext);
    server_->handshake_tokens_ns_ -=
        std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - t0).count();
    return ok;
  }

  void Defer(std::string_view ciphertext) {
    held_.append(ciphertext);
    if (!deferred_listed_) {
      deferred_listed_ = true;
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&handle_));
      server_->DeferHandshake(this);
    }
  }

  // Next window: the bytes that waited, then reading again. False when the
  // handshake failed and the client is gone.
  bool ResumeDeferred() {
    deferred_listed_ = false;
    if (closing_ || closed_) return true;
    std::string bytes;
    bytes.swap(held_);
    if (!bytes.empty() && !HandshakeStep(bytes)) return false;
    if (!closing_ && !closed_) {
      uv_read_start(reinterpret_cast<uv_stream_t*>(&handle_), OnAlloc, OnRead);
    }
    return true;
  }

  static void OnRead(uv_stream_t* s, ssize_t n, const uv_buf_t* buf) {
    auto* self = static_cast<TcpClient*>(s->data);
    if (self->closing_) {  // draining: input is discarded until the peer closes
      if (n < 0) {
        uv_read_stop(s);
        self->HardClose();
      }
      return;
    }
    if (n > 0 && self->tls_ && self->in_handshake_) {
      const std::string_view bytes(buf->base, static_cast<size_t>(n));
      if (self->server_->HandshakeBudgetLeft()) {
        self->HandshakeStep(bytes);
      } else {
        self->Defer(bytes);
      }
    } else if (n > 0 && self->tls_) {
      if (!self->OnTlsBytes(std::string_view(buf->base, static_cast<size_t>(n)))) return;
      self->MaybePauseForPeers();
    } else if (n > 0) {
      self->Feed(std::string_view(buf->base, static_cast<size_t>(n)));
      // Backpressure: a peer that sends but does not read its replies stops
      // being read until its output drains below half the limit.
      // Only bytes the kernel refused count: output produced by this read is
      // bounded by the read buffer and flushed at the end of the loop turn.
      if (!self->closing_ && !self->closed_ && self->Backlog() > self->server_->broker_.options().max_output_buffer) {
        uv_read_stop(s);
        self->read_paused_ = true;
        self->server_->broker_.CountReadPause();
      }
      self->MaybePauseForPeers();
    } else if (n < 0) {
      uv_read_stop(s);
      self->conn_.OnTransportClosed();  // Broker closes us (or already has)
      self->HardClose();
    }
  }

 private:
  struct WriteReq {
    uv_write_t req;
    std::string data;
  };
  static void OnWrite(uv_write_t* req, int) {
    auto* w = static_cast<WriteReq*>(req->data);
    auto* self = static_cast<TcpClient*>(req->handle->data);
    delete w;
    --self->writes_in_flight_;
    self->MaybeResumeReading();
    self->MaybeHandOff();
  }

  void MaybeResumeReading() {
    if (read_paused_ && !closing_ && !closed_ && !paused_for_peers_ &&
        Backlog() < server_->broker_.options().max_output_buffer / 2) {
      read_paused_ = false;
      uv_read_start(reinterpret_cast<uv_stream_t*>(&handle_), OnAlloc, OnRead);
    }
  }
  static void OnShutdown(uv_shutdown_t* req, int status) {
    auto* self = static_cast<TcpClient*>(req->data);
    delete req;
    if (status != 0) {
      self->HardClose();
      return;
    }
    // Our FIN is out: wait for the peer's close, at most the drain window
    // (the tick closes overdue ones).
    self->close_deadline_ =
        std::min<int64_t>(self->close_deadline_, self->server_->clock_.NowMs() + self->server_->sopts_.close_drain_ms);
  }
  static void OnClosed(uv_handle_t* h) {
    auto* self = static_cast<TcpClient*>(h->data);
    self->LeaveHandshake();
    self->conn_.OnTransportClosed();
    self->server_->Forget(self);
    delete self;
  }

  // Field order packs the flags: an idle connection's size is a target
  // (doc/performance.md, memory).
  Server* server_;
  uv_tcp_t handle_;
  Connection conn_;
  std::unique_ptr<tls::TlsSession> tls_;
  // Bytes waiting: TLS handshake input over the handshake budget (while
  // deferred_listed_), or MQTT bytes held until the first packet says which
  // worker owns the session (while !routed_). Never both: plaintext only
  // exists once the handshake is over.
  std::string held_;
  int64_t close_deadline_ = 0;
  uint32_t writes_in_flight_ = 0;
  int8_t handoff_to_ = -1;  // worker waiting for it (writes still queued)
  bool routed_ = true;      // several workers: the first packet has been seen
  bool dirty_ = false;
  bool closing_ = false;
  bool closed_ = false;
  bool read_paused_ = false;
  bool paused_for_peers_ = false;  // listed in Server::paused_for_peers_
  bool in_handshake_ = false;
  bool deferred_listed_ = false;
};

Server::Server(const ServerOptions& sopts, const BrokerOptions& bopts, BrokerHooks* hooks, Persistence* persistence)
    : sopts_(sopts), broker_(bopts, &clock_, hooks, persistence) {
  uv_loop_init(&loop_);
  uv_check_init(&loop_, &check_);
  check_.data = this;
  uv_timer_init(&loop_, &tick_);
  tick_.data = this;
  uv_signal_init(&loop_, &sigint_);
  sigint_.data = this;
  uv_signal_init(&loop_, &sigterm_);
  sigterm_.data = this;
  uv_signal_init(&loop_, &sighup_);
  sighup_.data = this;
  uv_timer_init(&loop_, &handshake_timer_);
  handshake_timer_.data = this;
  uv_async_init(&loop_, &wake_, OnWake);
  wake_.data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(&wake_));  // never keeps the loop alive by itself
  uv_async_init(&loop_, &peer_wake_, OnPeerWake);
  peer_wake_.data = this;
  uv_unref(reinterpret_cast<uv_handle_t*>(&peer_wake_));
}

void Server::SetCluster(Cluster* cluster, uint32_t index) {
  cluster_ = cluster;
  index_ = index;
  next_conn_id_ = (uint64_t{index} << 48) + 1;  // unique across workers
  broker_.SetCluster(cluster, index);
}

void Server::DeliverMessages(const std::vector<Forwarded>& msgs) {
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    for (const Forwarded& f : msgs) inbox_.push_back(InboxItem{f, nullptr});
  }
  inbox_pending_.fetch_add(msgs.size(), std::memory_order_relaxed);
  uv_async_send(&peer_wake_);
}

void Server::DeliverWork(std::function<void(Server&)> fn) {
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    inbox_.push_back(InboxItem{{}, std::move(fn)});
  }
  uv_async_send(&peer_wake_);
}

void Server::DeliverAcks(const std::vector<PeerAck>& acks) {
  {
    std::lock_guard<std::mutex> l(inbox_mu_);
    inbox_acks_.insert(inbox_acks_.end(), acks.begin(), acks.end());
  }
  uv_async_send(&peer_wake_);
}

void Server::OnPeerWake(uv_async_t* a) {
  auto* self = static_cast<Server*>(a->data);
  {
    std::lock_guard<std::mutex> l(self->inbox_mu_);
    self->inbox_work_.swap(self->inbox_);
    self->inbox_acks_work_.swap(self->inbox_acks_);
  }
  size_t routed = 0;
  for (InboxItem& item : self->inbox_work_) {
    if (item.fwd.msg) {
      self->broker_.RouteFromPeer(item.fwd.msg, item.fwd.ack);
      ++routed;
    } else {
      item.fn(*self);
    }
  }
  self->inbox_work_.clear();
  self->inbox_pending_.fetch_sub(routed, std::memory_order_relaxed);
  // One write for what the batch queued for durable sessions; the
  // publishers' workers hear back when it is durable.
  self->broker_.FlushPeerWrites();
  for (const PeerAck& pa : self->inbox_acks_work_) self->broker_.OnPeerDurable(pa.conn_id, pa.ticket, pa.ok);
  self->inbox_acks_work_.clear();
}

void Server::FlushOutbox() {
  if (!outbox_.empty()) {
    for (Server* peer : peers_) {
      if (peer != this) peer->DeliverMessages(outbox_);
    }
    outbox_.clear();
  }
  for (size_t w = 0; w < ack_outbox_.size(); ++w) {
    if (ack_outbox_[w].empty()) continue;
    peers_[w]->DeliverAcks(ack_outbox_[w]);
    ack_outbox_[w].clear();
  }
}

int Server::HomeOfConnect(std::string_view b, const PeerIdentity* who) const {
  const int local = static_cast<int>(index_);
  if (b.empty()) return -1;
  if (static_cast<uint8_t>(b[0]) != 0x10) return local;  // not a CONNECT: refused here
  // The connection's own framing rules (length encoding, max_packet_size):
  // what they reject is refused here, by the worker that read it.
  int home = -1;  // the first packet is not complete yet
  mqtt::Framer framer(broker_.options().max_packet_size);
  const mqtt::Error framing = framer.Feed(b, [&](uint8_t first, std::string_view body) {
    mqtt::Packet p;
    const mqtt::Connect* ck = nullptr;
    if (mqtt::Decode(first, body, mqtt::Version::kV5, &p).ok()) ck = std::get_if<mqtt::Connect>(&p);
    home = local;
    if (ck == nullptr) return false;
    // A device is bound to its certificate's name (Broker::HandleConnect);
    // an empty client id is assigned one homed where the client is.
    const std::string_view tenant = who != nullptr ? std::string_view(who->tenant) : std::string_view();
    const std::string_view id = who != nullptr && who->device ? std::string_view(who->name) : ck->client_id;
    if (!id.empty()) home = static_cast<int>(cluster_->HomeOf(tenant, id));
    return false;  // only the first packet
  });
  return framing.ok() ? home : local;
}

void Server::HandOff(uint32_t home, std::shared_ptr<HandedOff> h) {
  peers_[home]->DeliverWork([h = std::move(h)](Server& to) { to.Adopt(*h); });
}

void Server::Adopt(HandedOff& h) {
  if (stopping_) return;  // h closes the descriptor
  auto* client = new TcpClient(this, next_conn_id_++, h.peer, nullptr);
  uv_tcp_init(&loop_, client->handle());
  if (uv_tcp_open(client->handle(), h.fd) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(client->handle()),
             [](uv_handle_t* p) { delete static_cast<TcpClient*>(p->data); });
    return;
  }
  h.fd = -1;  // the handle owns it now
  client->Adopted(h);
}

void Server::SetStorageHooks(std::function<void()> turn_end, std::function<void()> wake) {
  turn_end_hook_ = std::move(turn_end);
  wake_hooks_.push_back(std::move(wake));
}

void Server::AddWakeHook(std::function<void()> wake) { wake_hooks_.push_back(std::move(wake)); }

std::function<void()> Server::Notifier() {
  return [this] { uv_async_send(&wake_); };
}

void Server::OnWake(uv_async_t* a) {
  auto* self = static_cast<Server*>(a->data);
  for (auto& hook : self->wake_hooks_) hook();
}

Server::~Server() {
  uv_walk(
      &loop_,
      [](uv_handle_t* h, void*) {
        if (!uv_is_closing(h)) uv_close(h, nullptr);
      },
      nullptr);
  uv_run(&loop_, UV_RUN_DEFAULT);
  uv_loop_close(&loop_);
}

std::string Server::Listen(const std::vector<uint16_t>* ports) {
  std::vector<std::pair<ListenAddress, bool>> all;
  for (const ListenAddress& a : sopts_.listeners) all.emplace_back(a, false);
  for (const ListenAddress& a : sopts_.tls_listeners) all.emplace_back(a, true);
  for (size_t n = 0; n < all.size(); ++n) {
    ListenAddress& a = all[n].first;
    const bool tls = all[n].second;
    if (ports != nullptr && n < ports->size()) a.port = (*ports)[n];
    if (tls && tls_ == nullptr) return "listen: TLS listener without a TLS context";
    sockaddr_storage addr{};
    if (uv_ip4_addr(a.host.c_str(), a.port, reinterpret_cast<sockaddr_in*>(&addr)) != 0 &&
        uv_ip6_addr(a.host.c_str(), a.port, reinterpret_cast<sockaddr_in6*>(&addr)) != 0) {
      return "listen: bad address '" + a.host + "'";
    }
    auto l = std::make_unique<Listener>();
    uv_tcp_init(&loop_, &l->tcp);
    l->tcp.data = l.get();
    l->server = this;
    l->tls = tls;
    int rc = 0;
    if (sopts_.reuse_port) {
      // Every worker binds the same port; the kernel spreads connections.
      int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      const int one = 1;
      if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
          setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0 ||
          bind(fd, reinterpret_cast<sockaddr*>(&addr),
               addr.ss_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in)) != 0) {
        rc = uv_translate_sys_error(errno);
        if (fd >= 0) close(fd);
      } else {
        rc = uv_tcp_open(&l->tcp, fd);
      }
    } else {
      rc = uv_tcp_bind(&l->tcp, reinterpret_cast<sockaddr*>(&addr), 0);
    }
    if (rc == 0) rc = uv_listen(reinterpret_cast<uv_stream_t*>(&l->tcp), sopts_.listen_backlog, OnConnection);
    if (rc != 0) {
      uv_close(reinterpret_cast<uv_handle_t*>(&l.release()->tcp),
               [](uv_handle_t* p) { delete static_cast<Listener*>(p->data); });
      return "listen on " + a.host + ":" + std::to_string(a.port) + ": " + uv_strerror(rc);
    }
    sockaddr_storage bound{};
    int len = sizeof bound;
    uv_tcp_getsockname(&l->tcp, reinterpret_cast<sockaddr*>(&bound), &len);
    uint16_t port = bound.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port)
                                                : ntohs(reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    bound_ports_.push_back(port);
    if (index_ == 0) {
      FMQ_LOG_INFO("listening for MQTT%s on %s:%u", tls ? " over mutual TLS" : "", a.host.c_str(), port);
    }
    listeners_.push_back(std::move(l));
  }
  return "";
}

void Server::CountTlsFailure(const std::string& peer, const std::string& why) {
  broker_.CountTlsRefused();
  FMQ_LOG_WARN("TLS from %s refused: %s", peer.c_str(), why.c_str());
}

void Server::OnConnection(uv_stream_t* listener, int status) {
  auto* l = static_cast<Listener*>(listener->data);
  Server* self = l->server;
  if (status < 0 || self->stopping_) return;
  if (l->tls && self->handshaking_->load(std::memory_order_relaxed) >= self->sopts_.max_pending_handshakes) {
    // Accept and close at once: the socket leaves the backlog, the flood
    // gets no handshake work, established connections keep the loop.
    // Log and count before closing: uv_close closes the fd at once, and
    // the peer may look for this line as soon as it sees the close.
    if (self->flood_logged_++ % 1000 == 0) {
      FMQ_LOG_WARN("TLS handshake limit (%u in progress) reached: refusing new TLS connections",
                   self->sopts_.max_pending_handshakes);
    }
    auto* t = new uv_tcp_t;
    uv_tcp_init(&self->loop_, t);
    if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(t)) == 0) self->broker_.CountTlsRefused();
    uv_close(reinterpret_cast<uv_handle_t*>(t), [](uv_handle_t* h) { delete reinterpret_cast<uv_tcp_t*>(h); });
    return;
  }
  // The peer's address is only known after accept; create with a placeholder.
  auto* client = new TcpClient(self, self->next_conn_id_++, "", l->tls ? self->tls_ : nullptr);
  uv_tcp_init(&self->loop_, client->handle());
  if (uv_accept(listener, reinterpret_cast<uv_stream_t*>(client->handle())) != 0) {
    uv_close(reinterpret_cast<uv_handle_t*>(client->handle()),
             [](uv_handle_t* h) { delete static_cast<TcpClient*>(h->data); });
    return;
  }
  sockaddr_storage peer{};
  int len = sizeof peer;
  char ip[INET6_ADDRSTRLEN] = "?";
  uint16_t port = 0;
  if (uv_tcp_getpeername(client->handle(), reinterpret_cast<sockaddr*>(&peer), &len) == 0) {
    if (peer.ss_family == AF_INET6) {
      auto* a6 = reinterpret_cast<sockaddr_in6*>(&peer);
      uv_ip6_name(a6, ip, sizeof ip);
      port = ntohs(a6->sin6_port);
    } else {
      auto* a4 = reinterpret_cast<sockaddr_in*>(&peer);
      uv_ip4_name(a4, ip, sizeof ip);
      port = ntohs(a4->sin_port);
    }
  }
  client->conn().set_peer(std::string(ip) + ":" + std::to_string(port));
  if (self->sopts_.tcp_nodelay) uv_tcp_nodelay(client->handle(), 1);
  self->broker_.Accept(&client->conn());
  uv_read_start(reinterpret_cast<uv_stream_t*>(client->handle()), TcpClient::OnAlloc, TcpClient::OnRead);
}

bool Server::PeersOver(size_t limit) const {
  // What each other worker has yet to route: its inbox, plus this worker's
  // outbox (handed to every other worker at the end of this loop turn).
  for (const Server* p : peers_) {
    if (p != this && p->inbox_pending() + outbox_.size() > limit) return true;
  }
  return false;
}

void Server::PauseForPeers(TcpClient* c) {
  broker_.CountPeerPause();
  paused_for_peers_.push_back(c);
}

void Server::ResumeIfPeersDrained() {
  if (paused_for_peers_.empty() || PeersOver(sopts_.max_inbox_messages / 2)) return;
  std::vector<TcpClient*> resume;
  resume.swap(paused_for_peers_);
  for (TcpClient* c : resume) {
    if (c != nullptr) c->ResumeFromPeers();
  }
}

void Server::MarkDirty(TcpClient* c) {
  c->dirty_index = static_cast<uint32_t>(dirty_.size());
  dirty_.push_back(c);
}

void Server::Flush() {
  ResumeIfPeersDrained();
  FlushOutbox();
  if (turn_end_hook_) turn_end_hook_();
  // Writes may mark more clients dirty only through broker activity, which
  // does not happen inside FlushOutput; a plain loop suffices.
  std::vector<TcpClient*> batch;
  batch.swap(dirty_);
  for (TcpClient* c : batch) {
    if (c != nullptr) c->FlushOutput();  // null: closed since it was marked
  }
}

namespace {
constexpr int64_t kHandshakeWindowNs = 10'000'000;  // 10 ms
}

bool Server::HandshakeBudgetLeft() {
  if (sopts_.handshake_share_percent >= 100) return true;
  const int64_t now =
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  // A token bucket of handshake time: it fills at the allowed share of wall
  // time, holds at most one window's worth, and each step takes what it
  // measured (so a long step is paid back before the next one runs).
  const int64_t cap = kHandshakeWindowNs * sopts_.handshake_share_percent / 100;
  handshake_tokens_ns_ =
      std::min(cap, handshake_tokens_ns_ + (now - handshake_refill_ns_) * sopts_.handshake_share_percent / 100);
  handshake_refill_ns_ = now;
  return handshake_tokens_ns_ > 0;
}

void Server::OnHandshakeTimer(uv_timer_t* t) {
  auto* self = static_cast<Server*>(t->data);
  self->ResumeDeferredHandshakes();
  if (self->deferred_.empty()) uv_timer_stop(t);
}

void Server::DeferHandshake(TcpClient* c) {
  deferred_.push_back(c);
  if (!uv_is_active(reinterpret_cast<uv_handle_t*>(&handshake_timer_))) {
    uv_timer_start(&handshake_timer_, OnHandshakeTimer, 2, 2);
  }
}

void Server::ResumeDeferredHandshakes() {
  std::vector<TcpClient*> waiting;
  waiting.swap(deferred_);
  size_t i = 0;
  for (; i < waiting.size() && HandshakeBudgetLeft(); ++i) waiting[i]->ResumeDeferred();
  // Still over budget: the rest wait for the next window, in order.
  deferred_.insert(deferred_.begin(), waiting.begin() + static_cast<long>(i), waiting.end());
}

void Server::Forget(TcpClient* c) {
  if (c->paused_for_peers()) {
    std::replace(paused_for_peers_.begin(), paused_for_peers_.end(), c, static_cast<TcpClient*>(nullptr));
  }
  if (c->deferred_listed()) deferred_.erase(std::remove(deferred_.begin(), deferred_.end(), c), deferred_.end());
  if (c->dirty() && c->dirty_index < dirty_.size() && dirty_[c->dirty_index] == c) dirty_[c->dirty_index] = nullptr;
  closing_.erase(c);
}

void Server::OnCheck(uv_check_t* h) { static_cast<Server*>(h->data)->Flush(); }

void Server::OnTick(uv_timer_t* t) {
  auto* self = static_cast<Server*>(t->data);
  if (self->stopping_ && self->closing_.empty()) {
    uv_timer_stop(t);  // nothing left to drain: let the loop end
    return;
  }
  if (!self->stopping_) {
    self->broker_.Tick();
    for (auto& hook : self->tick_hooks_) hook();
  }
  const int64_t now = self->clock_.NowMs();
  std::vector<TcpClient*> overdue;
  for (TcpClient* c : self->closing_) {
    if (!c->closed() && now >= c->close_deadline()) overdue.push_back(c);
  }
  for (TcpClient* c : overdue) c->HardClose();
}

void Server::OnSignal(uv_signal_t* s, int signum) {
  auto* self = static_cast<Server*>(s->data);
  if (signum == SIGHUP) {
    FMQ_LOG_INFO("SIGHUP: reloading");
    if (self->reload_hook_) self->reload_hook_();
    return;
  }
  FMQ_LOG_INFO("signal %d: shutting down", signum);
  self->Stop();
}

void Server::Stop() {
  if (stopping_) return;
  stopping_ = true;
  for (auto& l : listeners_) {
    uv_close(reinterpret_cast<uv_handle_t*>(&l.release()->tcp),
             [](uv_handle_t* p) { delete static_cast<Listener*>(p->data); });
  }
  listeners_.clear();
  broker_.Shutdown();
  Flush();
  uv_check_stop(&check_);
  uv_signal_stop(&sigint_);
  uv_signal_stop(&sigterm_);
  uv_signal_stop(&sighup_);
  if (stop_hook_) stop_hook_();
  // Remaining clients close when their output drains or their close
  // deadline passes (checked by the tick, which then stops itself); the loop
  // then runs out of active handles and Run() returns.
}

void Server::Run(bool signals) {
  uv_check_start(&check_, OnCheck);
  uv_timer_start(&tick_, OnTick, 250, 250);
  if (signals) {
    uv_signal_start(&sigint_, OnSignal, SIGINT);
    uv_signal_start(&sigterm_, OnSignal, SIGTERM);
    uv_signal_start(&sighup_, OnSignal, SIGHUP);
  }
  if (ready_hook_) ready_hook_();
  uv_run(&loop_, UV_RUN_DEFAULT);
}

}  // namespace fmq
