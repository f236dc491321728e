#include "mgmt/pki/pki_dir.h"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <fstream>
#include <iterator>

#include "mgmt/pki/pki.h"

namespace fmq::pki {
namespace {

bool Exists(const std::string& p) {
  struct stat st;
  return stat(p.c_str(), &st) == 0;
}

absl::Status Write(const std::string& p, const std::string& data, mode_t mode) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << data;
  out.close();
  if (!out.good() || chmod(p.c_str(), mode) != 0) return absl::UnavailableError("cannot write " + p);
  return absl::OkStatus();
}

absl::StatusOr<CertificateAuthority> LoadCa(const std::string& crt, const std::string& key) {
  return CertificateAuthority::Load(ReadFile(crt), ReadFile(key));
}

}  // namespace

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

absl::Status WriteFileAtomic(const std::string& path, const std::string& data, mode_t mode) {
  const std::string tmp = path + ".tmp";
  if (absl::Status s = Write(tmp, data, mode); !s.ok()) return s;
  if (rename(tmp.c_str(), path.c_str()) != 0) return absl::UnavailableError("cannot rename " + tmp);
  return absl::OkStatus();
}

absl::StatusOr<std::string> EnsureTenantCa(const std::string& dir, const std::string& tenant, int64_t now_ms) {
  const std::string tdir = dir + "/tenants/" + tenant;
  for (const std::string& d : {dir + "/tenants", tdir}) {
    if (mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) return absl::UnavailableError("cannot create " + d);
  }
  if (!Exists(tdir + "/ca.crt")) {
    Rng rng;
    if (!rng.status().ok()) return rng.status();
    auto root = LoadCa(dir + "/root.crt", dir + "/root.key");
    if (!root.ok()) return root.status();
    auto ca = root->CreateTenantCa(rng, tenant, now_ms);
    if (!ca.ok()) return ca.status();
    auto key = ca->key_pem();
    if (!key.ok()) return key.status();
    // Key first: a crash in between leaves no certificate without its key.
    if (auto s = WriteFileAtomic(tdir + "/ca.key", *key, 0600); !s.ok()) return s;
    if (auto s = WriteFileAtomic(tdir + "/chain.pem", ca->cert().pem + root->cert().pem, 0644); !s.ok()) return s;
    if (auto s = WriteFileAtomic(tdir + "/ca.crt", ca->cert().pem, 0644); !s.ok()) return s;
  }
  return ReadFile(tdir + "/ca.crt");
}

absl::StatusOr<Signer> EnsureTenantSigner(const std::string& dir, const std::string& tenant, int64_t now_ms) {
  auto ca_pem = EnsureTenantCa(dir, tenant, now_ms);
  if (!ca_pem.ok()) return ca_pem.status();
  const std::string tdir = dir + "/tenants/" + tenant;
  if (!Exists(tdir + "/signer.crt")) {
    Rng rng;
    if (!rng.status().ok()) return rng.status();
    auto ca = LoadCa(tdir + "/ca.crt", tdir + "/ca.key");
    if (!ca.ok()) return ca.status();
    std::string key;
    auto cert =
        ca->IssueWithNewKey(rng, Subject{tenant, "firmware-signer", Role::kSigner}, now_ms, 5 * 365 * kDay, &key);
    if (!cert.ok()) return cert.status();
    if (auto s = WriteFileAtomic(tdir + "/signer.key", key, 0600); !s.ok()) return s;
    if (auto s = WriteFileAtomic(tdir + "/signer.crt", cert->pem, 0644); !s.ok()) return s;
  }
  Signer out;
  out.chain_pem = ReadFile(tdir + "/signer.crt") + *ca_pem;
  out.key_pem = ReadFile(tdir + "/signer.key");
  if (out.key_pem.empty()) return absl::UnavailableError("cannot read " + tdir + "/signer.key");
  return out;
}

absl::StatusOr<PkiFiles> EnsurePki(const std::string& dir, const std::string& tenant, const std::string& server_name,
                                   int64_t now_ms) {
  PkiFiles f;
  f.dir = dir;
  f.root_crt = dir + "/root.crt";
  f.server_crt = dir + "/server.crt";
  f.server_key = dir + "/server.key";
  f.operator_crt = dir + "/operator.crt";
  f.operator_key = dir + "/operator.key";
  f.admin_crt = dir + "/admin.crt";
  f.admin_key = dir + "/admin.key";
  const std::string tdir = dir + "/tenants/" + tenant;
  for (const std::string& d : {dir, dir + "/tenants", tdir}) {
    if (mkdir(d.c_str(), 0700) != 0 && errno != EEXIST) return absl::UnavailableError("cannot create " + d);
  }
  Rng rng;
  if (!rng.status().ok()) return rng.status();
  if (!Exists(f.root_crt)) {
    auto root = CertificateAuthority::CreateRoot(rng, "fleetmq-root", now_ms);
    if (!root.ok()) return root.status();
    auto key = root->key_pem();
    if (!key.ok()) return key.status();
    if (auto s = Write(f.root_crt, root->cert().pem, 0644); !s.ok()) return s;
    if (auto s = Write(dir + "/root.key", *key, 0600); !s.ok()) return s;
  }
  auto root = LoadCa(f.root_crt, dir + "/root.key");
  if (!root.ok()) return root.status();
  if (auto st = EnsureTenantCa(dir, tenant, now_ms); !st.ok()) return st.status();
  auto ca = LoadCa(tdir + "/ca.crt", tdir + "/ca.key");
  if (!ca.ok()) return ca.status();
  struct Leaf {
    std::string crt, key;
    Subject who;
  };
  for (const Leaf& l : {Leaf{f.server_crt, f.server_key, {tenant, server_name, Role::kServer}},
                        Leaf{f.operator_crt, f.operator_key, {tenant, "admin", Role::kOperator}}}) {
    if (Exists(l.crt)) continue;
    std::string key;
    auto cert = ca->IssueWithNewKey(
        rng, l.who, now_ms, kDeviceValidity, &key,
        l.who.role == Role::kServer ? std::vector<std::string>{server_name} : std::vector<std::string>{});
    if (!cert.ok()) return cert.status();
    if (auto s = Write(l.crt, cert->pem + ca->cert().pem, 0644); !s.ok()) return s;
    if (auto s = Write(l.key, key, 0600); !s.ok()) return s;
  }
  if (!Exists(f.admin_crt)) {
    std::string key;
    auto cert =
        root->IssueWithNewKey(rng, Subject{kPlatformTenant, "admin", Role::kAdmin}, now_ms, kDeviceValidity, &key);
    if (!cert.ok()) return cert.status();
    if (auto s = Write(f.admin_crt, cert->pem, 0644); !s.ok()) return s;
    if (auto s = Write(f.admin_key, key, 0600); !s.ok()) return s;
  }
  if (DIR* d = opendir((dir + "/tenants").c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name == "." || name == "..") continue;
      if (Exists(dir + "/tenants/" + name + "/ca.crt")) f.tenant_cas.push_back(dir + "/tenants/" + name + "/ca.crt");
    }
    closedir(d);
  }
  std::sort(f.tenant_cas.begin(), f.tenant_cas.end());
  return f;
}

absl::StatusOr<std::string> TrustBundle(const PkiFiles& files) {
  std::string pem = ReadFile(files.root_crt);
  if (pem.empty()) return absl::NotFoundError("no root certificate at " + files.root_crt);
  for (const std::string& ca : files.tenant_cas) pem += ReadFile(ca);
  return pem;
}

}  // namespace fmq::pki
