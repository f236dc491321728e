// libFuzzer target: bytes a broker reads from others. Each input is parsed
// as a session-ticket key file (bytes on disk) and opened as a session
// ticket (bytes from any TLS client, before authentication). Both must
// refuse or accept cleanly; a forged ticket must never open.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>

#include "broker/tls/ticket_keys.h"
#include "mgmt/pki/pki.h"

namespace {

struct World {
  World() {
    char tmpl[] = "/tmp/fmq-fuzz-tls-XXXXXX";
    dir = mkdtemp(tmpl);
    // One known key (name 01..01): seeds that start with it reach the
    // authentication step.
    fmq::tls::TicketKeys::Key k;
    k.name.fill(1);
    k.secret.fill(0xa0);
    k.created_s = clock.WallMs() / 1000;
    std::ofstream(dir + "/keys") << fmq::tls::TicketKeys::Encode({k});
    keys = new fmq::tls::TicketKeys(dir + "/keys", {}, &clock, fmq::pki::Rng::Fill, &rng);
    if (!keys->Open().ok() || keys->key_count() != 1) std::abort();
    // The file has been read: nothing of this run stays in /tmp.
    unlink((dir + "/keys").c_str());
    rmdir(dir.c_str());
  }
  std::string dir;
  fmq::FakeClock clock;
  fmq::pki::Rng rng;
  fmq::tls::TicketKeys* keys;
};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static World* w = new World();
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  auto decoded = fmq::tls::TicketKeys::Decode(bytes);
  if (decoded.ok() && fmq::tls::TicketKeys::Decode(fmq::tls::TicketKeys::Encode(*decoded))->size() != decoded->size()) {
    std::abort();  // what decodes must encode to the same keys
  }
  std::string ticket = bytes;
  mbedtls_ssl_session s;
  mbedtls_ssl_session_init(&s);
  const int rc =
      fmq::tls::TicketKeys::Unseal(w->keys, &s, reinterpret_cast<unsigned char*>(ticket.data()), ticket.size());
  mbedtls_ssl_session_free(&s);
  if (rc == 0) std::abort();  // nobody but the broker can seal with its key
  return 0;
}
