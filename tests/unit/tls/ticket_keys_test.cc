// Session-ticket keys on disk: the file format (every truncation and
// corruption refused), a ticket sealed by one process opened by the next,
// rotation with the older key still opening its tickets, expiry, tampering,
// a damaged file set aside, and an unwritable directory.
#include "broker/tls/ticket_keys.h"

#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

#include "mgmt/pki/pki.h"

namespace fmq::tls {
namespace {

std::string TempDir() {
  char tmpl[] = "/tmp/fmq-ticket-XXXXXX";
  return mkdtemp(tmpl);
}

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

struct Fixture {
  Fixture() : dir(TempDir()), path(dir + "/ticket-keys"), clock() {}
  ~Fixture() { std::system(("rm -rf " + dir).c_str()); }
  std::unique_ptr<TicketKeys> Make(TicketOptions opts = {}) {
    auto k = std::make_unique<TicketKeys>(path, opts, &clock, pki::Rng::Fill, &rng);
    return k;
  }
  std::string dir, path;
  FakeClock clock;
  pki::Rng rng;
};

// A ticket for an (empty) session; the TLS tests seal real ones.
std::string Seal(TicketKeys& k) {
  mbedtls_ssl_session s;
  mbedtls_ssl_session_init(&s);
  std::string buf(4096, '\0');
  auto* p = reinterpret_cast<unsigned char*>(buf.data());
  size_t len = 0;
  uint32_t lifetime = 0;
  const int rc = TicketKeys::Seal(&k, &s, p, p + buf.size(), &len, &lifetime);
  mbedtls_ssl_session_free(&s);
  REQUIRE(rc == 0);
  CHECK(lifetime == k.options().lifetime_s);
  buf.resize(len);
  return buf;
}

int Unseal(TicketKeys& k, std::string ticket) {
  mbedtls_ssl_session s;
  mbedtls_ssl_session_init(&s);
  const int rc = TicketKeys::Unseal(&k, &s, reinterpret_cast<unsigned char*>(ticket.data()), ticket.size());
  mbedtls_ssl_session_free(&s);
  return rc;
}

std::vector<TicketKeys::Key> ThreeKeys() {
  std::vector<TicketKeys::Key> keys(3);
  for (size_t i = 0; i < keys.size(); ++i) {
    keys[i].name.fill(static_cast<unsigned char>(i + 1));
    keys[i].secret.fill(static_cast<unsigned char>(0xa0 + i));
    keys[i].created_s = 1'700'000'000 + static_cast<int64_t>(i) * 3600;
  }
  return keys;
}

}  // namespace

TEST_CASE("ticket key file: round trip, every truncation a prefix or refused, corruptions refused") {
  const std::vector<TicketKeys::Key> keys = ThreeKeys();
  const std::string text = TicketKeys::Encode(keys);
  auto back = TicketKeys::Decode(text);
  REQUIRE(back.ok());
  REQUIRE(back->size() == 3);
  CHECK(back->at(2).created_s == keys[2].created_s);
  CHECK(back->at(1).secret == keys[1].secret);
  CHECK(back->at(0).name == keys[0].name);
  for (size_t n = 0; n < text.size(); ++n) {
    CAPTURE(n);
    auto cut = TicketKeys::Decode(text.substr(0, n));
    // A cut on a line boundary is a shorter, valid file; nothing else is.
    if (cut.ok()) {
      CHECK(text[n - 1] == '\n');
      CHECK(cut->size() < 3);
    }
  }
  const std::string line = text.substr(text.find('\n') + 1, text.find('\n', text.find('\n') + 1) - text.find('\n'));
  const std::string header = text.substr(0, text.find('\n') + 1);
  const struct {
    const char* why;
    std::string body;
  } bad[] = {
      {"other header", "fleetmq ticket keys v2\n" + line},
      {"uppercase hex", header + "0101010101010101 1700000000 " + std::string(64, 'A') + "\n"},
      {"short name", header + "01010101010101 1700000000 " + std::string(64, 'a') + "\n"},
      {"short secret", header + "0101010101010101 1700000000 " + std::string(62, 'a') + "\n"},
      {"negative time", header + "0101010101010101 -5 " + std::string(64, 'a') + "\n"},
      {"time with junk", header + "0101010101010101 17x0 " + std::string(64, 'a') + "\n"},
      {"no time", header + "0101010101010101  " + std::string(64, 'a') + "\n"},
      {"extra field", header + "0101010101010101 1 " + std::string(64, 'a') + " 1\n"},
      {"out of order",
       header + "0101010101010101 2 " + std::string(64, 'a') + "\n0202020202020202 1 " + std::string(64, 'b') + "\n"},
  };
  for (const auto& b : bad) {
    CAPTURE(b.why);
    CHECK_FALSE(TicketKeys::Decode(b.body).ok());
  }
  std::vector<TicketKeys::Key> many(TicketKeys::kMaxKeys + 1, keys[0]);
  CHECK_FALSE(TicketKeys::Decode(TicketKeys::Encode(many)).ok());
}

TEST_CASE("a ticket sealed before a restart opens after it; the key file is private") {
  Fixture f;
  auto first = f.Make();
  REQUIRE(first->Open().ok());
  CHECK(first->key_count() == 1);
  struct stat st;
  REQUIRE(stat(f.path.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0600);
  const std::string ticket = Seal(*first);
  CHECK(Unseal(*first, ticket) == 0);
  first.reset();  // the process is gone; only the file remains

  auto second = f.Make();
  REQUIRE(second->Open().ok());
  CHECK(second->key_count() == 1);
  CHECK(Unseal(*second, ticket) == 0);
  CHECK(second->counters().opened == 1);
  CHECK(second->counters().rotations == 0);  // the loaded key was not due

  // Another data dir's keys do not open it.
  Fixture other;
  auto stranger = other.Make();
  REQUIRE(stranger->Open().ok());
  CHECK(Unseal(*stranger, ticket) != 0);
  CHECK(stranger->counters().refused_unknown_key == 1);
}

TEST_CASE("rotation: the new key seals, the old one opens its tickets until they expire, then is dropped") {
  Fixture f;
  TicketOptions opts;
  opts.rotation_s = 3600;
  opts.lifetime_s = 7200;
  auto k = f.Make(opts);
  REQUIRE(k->Open().ok());
  const std::string old_ticket = Seal(*k);
  f.clock.Advance(3599 * 1000);
  CHECK_FALSE(k->Rotate());
  f.clock.Advance(1000);
  CHECK(k->Rotate());
  CHECK(k->key_count() == 2);
  CHECK(k->counters().rotations == 1);
  const std::string new_ticket = Seal(*k);
  CHECK(new_ticket.substr(0, TicketKeys::kNameBytes) != old_ticket.substr(0, TicketKeys::kNameBytes));
  CHECK(Unseal(*k, old_ticket) == 0);
  // Both keys survive a restart.
  auto reopened = f.Make(opts);
  REQUIRE(reopened->Open().ok());
  CHECK(reopened->key_count() == 2);
  CHECK(Unseal(*reopened, old_ticket) == 0);
  CHECK(Unseal(*reopened, new_ticket) == 0);
  // The old ticket is 7201 s old: expired, though its key is still held.
  f.clock.Advance(3601 * 1000);
  CHECK(Unseal(*reopened, old_ticket) == MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED);
  CHECK(reopened->counters().refused_expired == 1);
  // Rotation at 7201 s: the first key's last ticket (sealed up to 3600 s)
  // expired at 10800 s, so it stays until then.
  CHECK(reopened->Rotate());
  CHECK(reopened->key_count() == 3);
  f.clock.Advance(3600 * 1000);
  CHECK(reopened->Rotate());
  CHECK(reopened->key_count() == 3);  // one new, the first dropped
  CHECK(Unseal(*reopened, old_ticket) == MBEDTLS_ERR_SSL_SESSION_TICKET_EXPIRED);
  CHECK(reopened->counters().refused_unknown_key == 1);
}

TEST_CASE("a tampered or truncated ticket never opens") {
  Fixture f;
  auto k = f.Make();
  REQUIRE(k->Open().ok());
  const std::string ticket = Seal(*k);
  for (size_t i = 0; i < ticket.size(); ++i) {
    std::string t = ticket;
    t[i] = static_cast<char>(t[i] ^ 0x40);
    CAPTURE(i);
    CHECK(Unseal(*k, t) != 0);
  }
  for (size_t n = 0; n < ticket.size(); ++n) CHECK(Unseal(*k, ticket.substr(0, n)) != 0);
  CHECK(Unseal(*k, ticket) == 0);
  CHECK(k->counters().refused_forged + k->counters().refused_unknown_key == 2 * ticket.size());
}

TEST_CASE("a damaged key file is set aside and replaced; an unwritable one leaves keys in memory") {
  Fixture f;
  {
    std::ofstream out(f.path);
    out << "fleetmq ticket keys v1\nnot a key\n";
  }
  auto k = f.Make();
  CHECK(k->Open().ok());
  CHECK(k->key_count() == 1);
  CHECK(Slurp(f.path + ".damaged") == "fleetmq ticket keys v1\nnot a key\n");
  CHECK(TicketKeys::Decode(Slurp(f.path)).ok());

  if (geteuid() != 0) {  // root writes anywhere
    Fixture ro;
    chmod(ro.dir.c_str(), 0500);
    auto m = ro.Make();
    CHECK_FALSE(m->Open().ok());
    CHECK(m->key_count() == 1);
    CHECK(m->counters().write_errors >= 1);
    CHECK(Unseal(*m, Seal(*m)) == 0);
    chmod(ro.dir.c_str(), 0700);
  }
  // A path under a file cannot be written, even by root.
  Fixture blocked;
  { std::ofstream(blocked.dir + "/file") << "x"; }
  TicketKeys m(blocked.dir + "/file/ticket-keys", {}, &blocked.clock, pki::Rng::Fill, &blocked.rng);
  CHECK_FALSE(m.Open().ok());
  CHECK(m.key_count() == 1);
  CHECK(m.counters().write_errors >= 1);
  CHECK(Unseal(m, Seal(m)) == 0);
  // Retried on the next tick, and still not written.
  CHECK_FALSE(m.Rotate());
  CHECK(m.counters().write_errors >= 2);
}

}  // namespace fmq::tls
