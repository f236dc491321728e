// fleetmq-pki: the PKI library from the command line.
//   fleetmq-pki init  --dir DIR [--tenant default] [--server-name localhost]
//       root CA, the tenant's intermediate CA, a server and an operator
//       certificate under DIR/pki (keys mode 0600); existing files are kept.
//   fleetmq-pki issue --dir DIR --tenant T --device ID --csr FILE
//       a device certificate from a CSR, PEM on stdout.
//   fleetmq-pki issue --dir DIR --tenant T --operator NAME --out OUTDIR
//       an operator certificate of the tenant with a new key:
//       OUTDIR/NAME.crt (with the tenant CA) and OUTDIR/NAME.key (0600).
//   fleetmq-pki devices --dir DIR --tenant T --prefix P --count N [--start 0] --out OUTDIR
//       N device certificates with new keys (simulated devices: a real
//       device makes its key and sends a CSR): OUTDIR/P<i>.crt (with the
//       tenant CA) and OUTDIR/P<i>.key (0600), i = start .. start+N-1.
//   fleetmq-pki revoke --dir DIR --tenant T --serial HEX
//       records the revocation in the broker's store (DIR/db); the broker
//       refuses the certificate from its next start. Offline: the broker
//       must be stopped (the live path is an admin command).
//   fleetmq-pki crl   --dir DIR --tenant T [--serial HEX ...] [--number N]
//       a DER CRL of the tenant CA on stdout, revoking the given serials,
//       or, with none given, every serial revoked in DIR/db.
// Errors: a message on stderr and exit code 1 (2 for usage).
#include <sys/stat.h>

#include <cstdio>
#include <ctime>
#include <fstream>
#include <iostream>
#include <iterator>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "mgmt/pki/pki.h"
#include "mgmt/pki/pki_dir.h"
#include "storage/registry.h"

namespace {

using namespace fmq::pki;

int64_t Now() { return static_cast<int64_t>(std::time(nullptr)) * 1000; }

bool Exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

std::string Read(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

int Die(const std::string& msg) {
  std::fprintf(stderr, "fleetmq-pki: %s\n", msg.c_str());
  return 1;
}

absl::StatusOr<CertificateAuthority> LoadCa(const std::string& base) {
  if (!Exists(base + ".crt")) return absl::NotFoundError("no CA at " + base + ".crt (run init)");
  return CertificateAuthority::Load(Read(base + ".crt"), Read(base + ".key"));
}

int Init(const std::string& dir, const std::string& tenant, const std::string& server) {
  mkdir(dir.c_str(), 0700);
  auto files = EnsurePki(dir + "/pki", tenant, server, Now());
  if (!files.ok()) return Die(std::string(files.status().message()));
  std::printf("%s\n", files->dir.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr,
                 "usage: fleetmq-pki init|issue|crl --dir DIR [options] (see the header of tools/pki_tool.cc)\n");
    return 2;
  }
  std::string cmd = argv[1];
  std::map<std::string, std::string> opt;
  std::vector<std::string> serials;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k.rfind("--", 0) != 0) return Die("unexpected argument " + k), 2;
    if (k == "--serial")
      serials.push_back(argv[i + 1]);
    else
      opt[k.substr(2)] = argv[i + 1];
  }
  if (opt["dir"].empty()) return Die("--dir is required"), 2;
  const std::string dir = opt["dir"];
  const std::string tenant = opt.count("tenant") ? opt["tenant"] : "default";
  Rng rng;
  if (!rng.status().ok()) return Die(std::string(rng.status().message()));
  if (cmd == "init") return Init(dir, tenant, opt.count("server-name") ? opt["server-name"] : "localhost");
  auto ca = LoadCa(dir + "/pki/tenants/" + tenant + "/ca");
  if (!ca.ok()) return Die(std::string(ca.status().message()));
  if (cmd == "issue" && !opt["operator"].empty()) {
    if (opt["out"].empty()) return Die("issue --operator needs --out"), 2;
    std::string key;
    auto cert = ca->IssueWithNewKey(rng, {tenant, opt["operator"], Role::kOperator}, Now(), kDeviceValidity, &key);
    if (!cert.ok()) return Die(std::string(cert.status().message()));
    const std::string base = opt["out"] + "/" + opt["operator"];
    if (auto s = fmq::pki::WriteFileAtomic(base + ".key", key, 0600); !s.ok()) return Die(std::string(s.message()));
    if (auto s = fmq::pki::WriteFileAtomic(base + ".crt", cert->pem + ca->cert().pem, 0644); !s.ok()) {
      return Die(std::string(s.message()));
    }
    return 0;
  }
  if (cmd == "devices") {
    if (opt["out"].empty() || opt["prefix"].empty() || opt["count"].empty()) {
      return Die("devices needs --prefix, --count and --out"), 2;
    }
    const long count = std::atol(opt["count"].c_str()),
               start = opt.count("start") ? std::atol(opt["start"].c_str()) : 0;
    if (count < 1 || start < 0) return Die("--count must be at least 1 and --start at least 0"), 2;
    mkdir(opt["out"].c_str(), 0700);
    for (long i = start; i < start + count; ++i) {
      const std::string name = opt["prefix"] + std::to_string(i);
      std::string key;
      auto cert = ca->IssueWithNewKey(rng, {tenant, name, Role::kDevice}, Now(), kDeviceValidity, &key);
      if (!cert.ok()) return Die(name + ": " + std::string(cert.status().message()));
      const std::string base = opt["out"] + "/" + name;
      if (auto s = fmq::pki::WriteFileAtomic(base + ".key", key, 0600); !s.ok()) return Die(std::string(s.message()));
      if (auto s = fmq::pki::WriteFileAtomic(base + ".crt", cert->pem + ca->cert().pem, 0644); !s.ok()) {
        return Die(std::string(s.message()));
      }
    }
    return 0;
  }
  if (cmd == "issue") {
    if (opt["device"].empty() || opt["csr"].empty()) return Die("issue needs --device and --csr"), 2;
    if (!Exists(opt["csr"])) return Die("no such file " + opt["csr"]);
    auto cert = ca->IssueFromCsr(rng, Read(opt["csr"]), {tenant, opt["device"], Role::kDevice}, Now());
    if (!cert.ok()) return Die(std::string(cert.status().message()));
    std::fputs(cert->pem.c_str(), stdout);
    return 0;
  }
  if (cmd == "revoke") {
    if (serials.size() != 1) return Die("revoke needs one --serial"), 2;
    auto kv = fmq::storage::OpenRocksKvStore(dir + "/db");
    if (!kv.ok()) return Die(std::string(kv.status().message()) + " (is the broker running? stop it first)");
    fmq::storage::Registry reg(kv->get());
    fmq::storage::WriteBatch b;
    auto t = fmq::storage::TenantId::FromAuthenticated(tenant);
    if (auto s = reg.RevokeCert(t, serials[0], Now(), &b); !s.ok()) return Die(std::string(s.message()));
    if (auto s = reg.Commit(b); !s.ok()) return Die(std::string(s.message()));
    return 0;
  }
  if (cmd == "crl") {
    std::vector<Revoked> revoked;
    for (const auto& s : serials) revoked.push_back({s, Now()});
    if (serials.empty() && Exists(dir + "/db")) {
      auto kv = fmq::storage::OpenRocksKvStore(dir + "/db");
      if (!kv.ok()) return Die(std::string(kv.status().message()) + " (is the broker running? give --serial instead)");
      fmq::storage::Registry reg(kv->get());
      auto t = fmq::storage::TenantId::FromAuthenticated(tenant);
      auto s = reg.ForEachRevoked(
          [&](std::string_view, const fmq::fb::CertificateT& c) {
            revoked.push_back({c.serial, c.revoked_at_ms});
          },
          &t);
      if (!s.ok()) return Die(std::string(s.message()));
    }
    uint64_t number = opt.count("number") ? std::stoull(opt["number"]) : 1;
    auto crl = ca->WriteCrl(rng, revoked, number, Now(), Now() + 7 * kDay);
    if (!crl.ok()) return Die(std::string(crl.status().message()));
    std::fwrite(crl->data(), 1, crl->size(), stdout);
    return 0;
  }
  return Die("unknown command " + cmd), 2;
}
