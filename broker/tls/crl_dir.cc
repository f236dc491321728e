#include "broker/tls/crl_dir.h"

#include <dirent.h>
#include <mbedtls/md.h>
#include <mbedtls/x509_crl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/log.h"
#include "mgmt/pki/pki.h"

namespace fmq::tls {
namespace {

bool WantedName(const std::string& n) {
  for (const char* ext : {".crl", ".pem", ".der"}) {
    const size_t l = std::strlen(ext);
    if (n.size() > l && n.compare(n.size() - l, l, ext) == 0) return true;
  }
  return false;
}

}  // namespace

bool CrlDir::LoadFile(const std::string& path, absl::flat_hash_set<std::string>* out, std::string* why) {
  mbedtls_x509_crl crl;
  mbedtls_x509_crl_init(&crl);
  struct Free {
    mbedtls_x509_crl* c;
    ~Free() { mbedtls_x509_crl_free(c); }
  } free_crl{&crl};
  int rc = mbedtls_x509_crl_parse_file(&crl, path.c_str());
  if (rc != 0) {
    *why = "not a CRL (DER or PEM): " + pki::MbedError(rc);
    return false;
  }
  for (const mbedtls_x509_crl* c = &crl; c != nullptr && c->raw.p != nullptr; c = c->next) {
    // The signer must be one of our tenant CAs; its tenant scopes the serials.
    const mbedtls_x509_crt* issuer = ctx_->FindTrustedIssuer(c->issuer_raw);
    if (issuer == nullptr) {
      *why = "issuer is not a trusted CA";
      return false;
    }
    auto id = pki::IdentityOf(*issuer);
    if (!id.ok() || id->role != pki::Role::kTenantCa) {
      *why = "issuer is not a tenant CA";
      return false;
    }
    const mbedtls_md_info_t* md = mbedtls_md_info_from_type(c->sig_md);
    unsigned char hash[MBEDTLS_MD_MAX_SIZE];
    if (md == nullptr || mbedtls_md(md, c->tbs.p, c->tbs.len, hash) != 0 ||
        mbedtls_pk_verify_ext(c->sig_pk, c->sig_opts, const_cast<mbedtls_pk_context*>(&issuer->pk), c->sig_md, hash,
                              mbedtls_md_get_size(md), c->sig.p, c->sig.len) != 0) {
      *why = "signature does not verify with the CA of tenant '" + id->tenant + "'";
      return false;
    }
    for (const mbedtls_x509_crl_entry* e = &c->entry; e != nullptr && e->raw.p != nullptr; e = e->next) {
      std::string k = id->tenant;
      k.push_back('\0');
      k += pki::SerialHex(e->serial);
      out->insert(std::move(k));
    }
  }
  return true;
}

bool CrlDir::Poll(bool force) {
  std::vector<std::pair<std::string, std::string>> files;  // name, size:mtime
  if (DIR* d = opendir(dir_.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (!WantedName(name)) continue;
      struct stat st;
      if (stat((dir_ + "/" + name).c_str(), &st) != 0 || !S_ISREG(st.st_mode)) continue;
      files.emplace_back(name, std::to_string(st.st_size) + ":" + std::to_string(st.st_mtim.tv_sec) + "." +
                                   std::to_string(st.st_mtim.tv_nsec));
    }
    closedir(d);
  }
  std::sort(files.begin(), files.end());
  std::string sig;
  for (const auto& [n, v] : files) sig += n + "=" + v + ";";
  if (!force && sig == signature_) return false;
  signature_ = sig;
  absl::flat_hash_map<std::string, absl::flat_hash_set<std::string>> next;
  for (const auto& [name, v] : files) {
    absl::flat_hash_set<std::string> serials;
    std::string why;
    if (LoadFile(dir_ + "/" + name, &serials, &why)) {
      next[name] = std::move(serials);
      continue;
    }
    errors_++;
    auto old = by_file_.find(name);
    FMQ_LOG_ERROR("CRL file %s/%s refused: %s (%s)", dir_.c_str(), name.c_str(), why.c_str(),
                  old != by_file_.end() ? "its previous revocations stay in force" : "ignored");
    if (old != by_file_.end()) next[name] = std::move(old->second);
  }
  absl::flat_hash_set<std::string> all;
  for (const auto& [name, s] : next) all.insert(s.begin(), s.end());
  revoked_ = all.size();
  by_file_ = std::move(next);
  std::vector<std::string> added;
  for (const std::string& k : all) {
    if (!all_.contains(k)) added.push_back(k);
  }
  all_ = all;
  ctx_->SetExternalRevoked(std::move(all));
  if (on_revoked_ && !added.empty()) on_revoked_(std::move(added));
  FMQ_LOG_INFO("external CRLs: %zu file%s, %zu revoked serials (%s)", by_file_.size(), by_file_.size() == 1 ? "" : "s",
               revoked_, dir_.c_str());
  return true;
}

}  // namespace fmq::tls
