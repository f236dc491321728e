#include "broker/tls/ticket_keys.h"

#include <fcntl.h>
#include <mbedtls/gcm.h>
#include <mbedtls/platform_util.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstring>
#include <fstream>
#include <iterator>
#include <mutex>

#include "common/hex.h"
#include "common/log.h"

namespace fmq::tls {
namespace {

constexpr std::string_view kHeader = "fleetmq ticket keys v1\n";
// Ticket layout: key name | IV | AES-256-GCM(issued_s as 8 bytes big
// endian | mbedtls_ssl_session_save bytes) | tag. Name and IV are the AAD.
constexpr size_t kIvBytes = 12;
constexpr size_t kTagBytes = 16;
constexpr size_t kIssuedBytes = 8;
constexpr size_t kHead = TicketKeys::kNameBytes + kIvBytes;
constexpr size_t kOverhead = kHead + kIssuedBytes + kTagBytes;
// A ticket issued up to this far in the future still opens (wall clocks
// step back a little after NTP corrections).
constexpr int64_t kClockSkewS = 300;

// Wipes a copy of key material when it goes out of scope.
struct Secret {
  std::array<unsigned char, TicketKeys::kSecretBytes> bytes{};
  ~Secret() { mbedtls_platform_zeroize(bytes.data(), bytes.size()); }
};

void PutBe64(unsigned char* p, int64_t v) {
  const auto u = static_cast<uint64_t>(v);
  for (int i = 0; i < 8; ++i) p[i] = static_cast<unsigned char>(u >> (56 - 8 * i));
}
int64_t GetBe64(const unsigned char* p) {
  uint64_t u = 0;
  for (int i = 0; i < 8; ++i) u = (u << 8) | p[i];
  return static_cast<int64_t>(u);
}

template <size_t N>
bool HexInto(std::string_view hex, std::array<unsigned char, N>* out) {
  std::string bytes;
  if (hex.size() != 2 * N || !FromHex(hex, &bytes)) return false;
  std::memcpy(out->data(), bytes.data(), N);
  return true;
}

// Written whole to a temporary file, synced, renamed over the old one and
// the directory synced: after a crash the file holds the old keys or the
// new ones, and a key is on disk before any ticket depends on it.
absl::Status WriteDurably(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return absl::UnavailableError("cannot create " + tmp + ": " + std::strerror(errno));
  size_t off = 0;
  bool ok = fchmod(fd, 0600) == 0;
  while (ok && off < data.size()) {
    const ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    ok = n > 0;
    if (ok) off += static_cast<size_t>(n);
  }
  ok = ok && fsync(fd) == 0;
  const int err = errno;
  ::close(fd);
  if (!ok) {
    ::unlink(tmp.c_str());
    return absl::UnavailableError("cannot write " + tmp + ": " + std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return absl::UnavailableError("cannot rename " + tmp + ": " + std::strerror(errno));
  }
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

}  // namespace

std::string TicketKeys::Encode(const std::vector<Key>& keys) {
  std::string out(kHeader);
  for (const Key& k : keys) {
    out += HexOf(k.name.data(), k.name.size());
    out += ' ';
    out += std::to_string(k.created_s);
    out += ' ';
    out += HexOf(k.secret.data(), k.secret.size());
    out += '\n';
  }
  return out;
}

absl::StatusOr<std::vector<TicketKeys::Key>> TicketKeys::Decode(std::string_view text) {
  if (text.substr(0, kHeader.size()) != kHeader) return absl::DataLossError("not a fleetmq ticket key file (header)");
  text.remove_prefix(kHeader.size());
  std::vector<Key> keys;
  int line = 1;
  while (!text.empty()) {
    ++line;
    const size_t nl = text.find('\n');
    if (nl == std::string_view::npos) return absl::DataLossError("line " + std::to_string(line) + ": truncated");
    const std::string_view l = text.substr(0, nl);
    text.remove_prefix(nl + 1);
    const size_t s1 = l.find(' '), s2 = s1 == std::string_view::npos ? s1 : l.find(' ', s1 + 1);
    Key k;
    const char* created_end = s2 == std::string_view::npos ? nullptr : l.data() + s2;
    bool ok = s2 != std::string_view::npos && HexInto(l.substr(0, s1), &k.name) && HexInto(l.substr(s2 + 1), &k.secret);
    if (ok) {
      const auto r = std::from_chars(l.data() + s1 + 1, created_end, k.created_s);
      ok = r.ec == std::errc() && r.ptr == created_end && k.created_s >= 0 && s2 > s1 + 1;
    }
    if (!ok) return absl::DataLossError("line " + std::to_string(line) + ": not 'name created secret'");
    if (!keys.empty() && k.created_s < keys.back().created_s) {
      return absl::DataLossError("line " + std::to_string(line) + ": keys out of order");
    }
    if (keys.size() == kMaxKeys) return absl::DataLossError("more than " + std::to_string(kMaxKeys) + " keys");
    keys.push_back(k);
  }
  return keys;
}

TicketKeys::TicketKeys(std::string path, TicketOptions opts, const Clock* clock, RandomFn rng, void* rng_ctx)
    : path_(std::move(path)), opts_(opts), clock_(clock), rng_(rng), rng_ctx_(rng_ctx) {}

size_t TicketKeys::key_count() const {
  std::shared_lock<std::shared_mutex> l(mu_);
  return keys_.size();
}

bool TicketKeys::NewKey(int64_t now_s, Key* out) {
  out->created_s = now_s;
  return rng_(rng_ctx_, out->name.data(), out->name.size()) == 0 &&
         rng_(rng_ctx_, out->secret.data(), out->secret.size()) == 0;
}

void TicketKeys::DropExpired(std::vector<Key>* keys, int64_t now_s) const {
  // Key i stopped sealing when key i+1 was made; its last ticket expires
  // `lifetime_s` after that.
  size_t drop = 0;
  while (drop + 1 < keys->size() && (*keys)[drop + 1].created_s + opts_.lifetime_s <= now_s) ++drop;
  if (keys->size() - drop > kMaxKeys) drop = keys->size() - kMaxKeys;
  keys->erase(keys->begin(), keys->begin() + static_cast<std::ptrdiff_t>(drop));
}

absl::Status TicketKeys::Persist(const std::vector<Key>& keys) {
  std::string text = Encode(keys);
  absl::Status st = WriteDurably(path_, text);
  mbedtls_platform_zeroize(text.data(), text.size());
  if (!st.ok()) {
    counters_.write_errors++;
    if (!write_failing_) FMQ_LOG_ERROR("tls: session-ticket keys not saved: %s", std::string(st.message()).c_str());
    write_failing_ = true;
  } else {
    write_failing_ = false;
  }
  return st;
}

absl::Status TicketKeys::Open() {
  std::ifstream in(path_, std::ios::binary);
  std::string text;
  if (in) {
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    auto keys = Decode(text);
    mbedtls_platform_zeroize(text.data(), text.size());
    if (keys.ok()) {
      std::unique_lock<std::shared_mutex> l(mu_);
      keys_ = std::move(*keys);
    } else {
      const std::string aside = path_ + ".damaged";
      FMQ_LOG_ERROR("tls: session-ticket keys in %s unreadable (%s); moved to %s, new keys made", path_.c_str(),
                    std::string(keys.status().message()).c_str(), aside.c_str());
      ::rename(path_.c_str(), aside.c_str());
    }
  }
  const size_t before = key_count();
  Rotate();
  if (key_count() == 0) {
    // Nothing could be written: seal with a key kept in memory only, as
    // before tickets were kept on disk.
    Key k;
    if (!NewKey(NowS(), &k)) return absl::InternalError("tls: no random bytes for a ticket key");
    std::unique_lock<std::shared_mutex> l(mu_);
    keys_.push_back(k);
    return absl::UnavailableError("session-ticket keys kept in memory only (" + path_ + " not writable)");
  }
  FMQ_LOG_INFO("tls: %zu session-ticket key%s in %s (%zu loaded)", key_count(), key_count() == 1 ? "" : "s",
               path_.c_str(), before);
  return write_failing_ ? absl::UnavailableError("session-ticket keys not saved to " + path_) : absl::OkStatus();
}

bool TicketKeys::Rotate() {
  const int64_t now = NowS();
  std::vector<Key> next;
  {
    std::shared_lock<std::shared_mutex> l(mu_);
    next = keys_;
  }
  const size_t before = next.size();
  const bool due = next.empty() || now - next.back().created_s >= opts_.rotation_s;
  if (due) {
    Key k;
    if (!NewKey(now, &k)) return false;
    next.push_back(k);
  }
  DropExpired(&next, now);
  if (!due && next.size() == before && !write_failing_) return false;
  // Not on disk: keep sealing with the keys that are (tried again on the
  // next tick).
  if (!Persist(next).ok()) return false;
  if (due && before > 0) {  // the first key is not a rotation
    counters_.rotations++;
    FMQ_LOG_INFO("tls: new session-ticket key; %zu key%s open tickets", next.size(), next.size() == 1 ? "" : "s");
  }
  std::unique_lock<std::shared_mutex> l(mu_);
  keys_ = std::move(next);
  return true;
}

int TicketKeys::Seal(void* self, const mbedtls_ssl_session* session, unsigned char* start, const unsigned char* end,
                     size_t* tlen, uint32_t* lifetime) {
  auto* t = static_cast<TicketKeys*>(self);
  *tlen = 0;
  size_t session_len = 0;
  int rc = mbedtls_ssl_session_save(session, nullptr, 0, &session_len);
  if (rc != 0 && rc != MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL) return rc;
  if (end < start || static_cast<size_t>(end - start) < kOverhead + session_len) {
    return MBEDTLS_ERR_SSL_BUFFER_TOO_SMALL;
  }
  Secret secret;
  {
    std::shared_lock<std::shared_mutex> l(t->mu_);
    if (t->keys_.empty()) return MBEDTLS_ERR_SSL_INTERNAL_ERROR;
    std::memcpy(start, t->keys_.back().name.data(), kNameBytes);
    secret.bytes = t->keys_.back().secret;
  }
  unsigned char* iv = start + kNameBytes;
  if ((rc = t->rng_(t->rng_ctx_, iv, kIvBytes)) != 0) return rc;
  unsigned char* plain = start + kHead;
  PutBe64(plain, t->NowS());
  size_t saved = 0;
  if ((rc = mbedtls_ssl_session_save(session, plain + kIssuedBytes, session_len, &saved)) != 0) return rc;
  const size_t plain_len = kIssuedBytes + saved;
  mbedtls_gcm_context gcm;
  mbedtls_gcm_init(&gcm);
  rc = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, secret.bytes.data(), kSecretBytes * 8);
  if (rc == 0) {
    rc = mbedtls_gcm_crypt_and_tag(&gcm, MBEDTLS_GCM_ENCRYPT, plain_len, iv, kIvBytes, start, kHead, plain, plain,
                                   kTagBytes, plain + plain_len);
  }
  mbedtls_gcm_free(&gcm);
  if (rc != 0) return rc;
  *tlen = kOverhead + saved;
  *lifetime = static_cast<uint32_t>(t->opts_.lifetime_s);
  t->counters_.sealed++;
  return 0;
}

int TicketKeys::Unseal(void* self, mbedtls_ssl_session* session, unsigned char* buf, size_t len) {
  auto* t = static_cast<TicketKeys*>(self);
  // Untrusted bytes until the tag checks out: only the name and the length
  // are read before that.
  if (len < kOverhead) {
    t->counters_.refused_forged++;
    return MBEDTLS_ERR_SSL_INVALID_MAC;
  }
  Secret secret;
  {
    std::shared_lock<std::shared_mutex> l(t->mu_);
    auto it = std::find_if(t->keys_.begin(), t->keys_.end(),
                           [&](const Key& k) { return std::memcmp(k.name.data(), buf, kNameBytes) == 0; });
    if (it == t->keys_.end()) {
      t->counters_.refused_unknown_key++;
      return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
    }
    secret.bytes = it->secret;
  }
  const size_t plain_len = len - kOverhead + kIssuedBytes;
  const unsigned char* iv = buf + kNameBytes;
  const unsigned char* cipher = buf + kHead;
  // Decrypted to the front of `buf`: the output trails the input by
  // kHead (20) bytes, which GCM allows (at least 8).
  unsigned char* plain = buf;
  mbedtls_gcm_context gcm;
  mbedtls_gcm_init(&gcm);
  int rc = mbedtls_gcm_setkey(&gcm, MBEDTLS_CIPHER_ID_AES, secret.bytes.data(), kSecretBytes * 8);
  if (rc == 0) {
    rc = mbedtls_gcm_auth_decrypt(&gcm, plain_len, iv, kIvBytes, buf, kHead, cipher + plain_len, kTagBytes, cipher,
                                  plain);
  }
  mbedtls_gcm_free(&gcm);
  if (rc != 0) {
    mbedtls_platform_zeroize(buf, len);
    t->counters_.refused_forged++;
    return MBEDTLS_ERR_SSL_INVALID_MAC;
  }
  const int64_t issued = GetBe64(plain), now = t->NowS();
  if (issued > now + kClockSkewS || now - issued > t->opts_.lifetime_s) {
    mbedtls_platform_zeroize(buf, len);
    t->counters_.refused_expired++;
    return MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED;
  }
  rc = mbedtls_ssl_session_load(session, plain + kIssuedBytes, plain_len - kIssuedBytes);
  mbedtls_platform_zeroize(buf, len);
  if (rc != 0) {
    t->counters_.refused_unloadable++;
    return rc;
  }
  t->counters_.opened++;
  return 0;
}

}  // namespace fmq::tls
