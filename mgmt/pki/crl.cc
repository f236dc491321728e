// X.509 v2 CRL writer (RFC 5280 section 5) on mbedTLS's ASN.1 writer,
// which writes backwards from the end of a buffer:
//   CertificateList ::= SEQUENCE { tbsCertList, signatureAlgorithm, signatureValue BIT STRING }
//   TBSCertList ::= SEQUENCE { version v2, signature, issuer, thisUpdate, nextUpdate,
//                              revokedCertificates SEQUENCE OF SEQUENCE { serial, date } OPTIONAL,
//                              [0] EXPLICIT Extensions { authorityKeyIdentifier, cRLNumber } }
#include <mbedtls/asn1write.h>
#include <mbedtls/oid.h>
#include <mbedtls/sha1.h>
#include <mbedtls/sha256.h>
#include <mbedtls/x509_crl.h>

#include <algorithm>
#include <ctime>
#include <vector>

#include "mgmt/pki/pki.h"

namespace fmq::pki {
namespace {

absl::Status Fail(std::string_view what, int rc) {
  return absl::InternalError("CRL " + std::string(what) + ": " + MbedError(rc));
}

#define ADD(expr)                         \
  do {                                    \
    int rc_ = (expr);                     \
    if (rc_ < 0) return Fail(#expr, rc_); \
    len += static_cast<size_t>(rc_);      \
  } while (0)

// UTCTime for 1950..2049, GeneralizedTime after [RFC 5280 5.1.2.4].
int WriteTime(unsigned char** p, unsigned char* start, int64_t ms) {
  time_t t = static_cast<time_t>(ms / 1000);
  tm g;
  gmtime_r(&t, &g);
  char buf[32];
  if (g.tm_year + 1900 < 2050) {
    std::strftime(buf, sizeof buf, "%y%m%d%H%M%SZ", &g);
    return mbedtls_asn1_write_tagged_string(p, start, MBEDTLS_ASN1_UTC_TIME, buf, std::strlen(buf));
  }
  std::strftime(buf, sizeof buf, "%Y%m%d%H%M%SZ", &g);
  return mbedtls_asn1_write_tagged_string(p, start, MBEDTLS_ASN1_GENERALIZED_TIME, buf, std::strlen(buf));
}

// AlgorithmIdentifier for ecdsa-with-SHA256: parameters absent [RFC 5758].
int WriteEcdsaSha256(unsigned char** p, unsigned char* start) {
  size_t len = 0;
  int rc = mbedtls_asn1_write_oid(p, start, MBEDTLS_OID_ECDSA_SHA256, MBEDTLS_OID_SIZE(MBEDTLS_OID_ECDSA_SHA256));
  if (rc < 0) return rc;
  len += static_cast<size_t>(rc);
  rc = mbedtls_asn1_write_len(p, start, len);
  if (rc < 0) return rc;
  len += static_cast<size_t>(rc);
  rc = mbedtls_asn1_write_tag(p, start, MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE);
  if (rc < 0) return rc;
  return static_cast<int>(len + static_cast<size_t>(rc));
}

int WriteSeqHeader(unsigned char** p, unsigned char* start, size_t content, unsigned char tag) {
  int a = mbedtls_asn1_write_len(p, start, content);
  if (a < 0) return a;
  int b = mbedtls_asn1_write_tag(p, start, tag);
  if (b < 0) return b;
  return a + b;
}

}  // namespace

absl::StatusOr<std::string> CertificateAuthority::WriteCrl(Rng& rng, const std::vector<Revoked>& revoked,
                                                           uint64_t crl_number, int64_t this_update_ms,
                                                           int64_t next_update_ms) {
  const unsigned char kSeq = MBEDTLS_ASN1_CONSTRUCTED | MBEDTLS_ASN1_SEQUENCE;
  std::vector<unsigned char> buf(64 * 1024 + revoked.size() * 64);
  unsigned char* start = buf.data();
  unsigned char* p = start + buf.size();
  size_t len = 0;

  // Extensions, last field first.
  {
    size_t ext = 0;
    // cRLNumber: SEQUENCE { OID, OCTET STRING { INTEGER } }
    size_t one = 0;
    unsigned char be[8];
    for (int i = 0; i < 8; ++i) be[i] = static_cast<unsigned char>(crl_number >> (56 - 8 * i));
    mbedtls_mpi n;
    mbedtls_mpi_init(&n);
    int rc = mbedtls_mpi_read_binary(&n, be, sizeof be);
    if (rc == 0) rc = mbedtls_asn1_write_mpi(&p, start, &n);
    mbedtls_mpi_free(&n);
    if (rc < 0) return Fail("crl number", rc);
    one += static_cast<size_t>(rc);
    rc = WriteSeqHeader(&p, start, one, MBEDTLS_ASN1_OCTET_STRING);
    if (rc < 0) return Fail("crl number", rc);
    one += static_cast<size_t>(rc);
    rc = mbedtls_asn1_write_oid(&p, start, MBEDTLS_OID_CRL_NUMBER, MBEDTLS_OID_SIZE(MBEDTLS_OID_CRL_NUMBER));
    if (rc < 0) return Fail("crl number", rc);
    one += static_cast<size_t>(rc);
    rc = WriteSeqHeader(&p, start, one, kSeq);
    if (rc < 0) return Fail("crl number", rc);
    ext += one + static_cast<size_t>(rc);

    // authorityKeyIdentifier: SEQUENCE { OID, OCTET STRING { SEQUENCE { [0] keyId } } }
    // keyId = SHA-1 of the CA's public key, as mbedTLS computes its SKI.
    unsigned char pub[MBEDTLS_MPI_MAX_SIZE * 2 + 20];
    unsigned char* q = pub + sizeof pub;
    int pl = mbedtls_pk_write_pubkey(&q, pub, key_.pk());
    if (pl < 0) return Fail("public key", pl);
    unsigned char kid[20];
    mbedtls_sha1_ret(pub + sizeof pub - pl, static_cast<size_t>(pl), kid);
    size_t aki = 0;
    rc = mbedtls_asn1_write_raw_buffer(&p, start, kid, sizeof kid);
    if (rc < 0) return Fail("aki", rc);
    aki += static_cast<size_t>(rc);
    rc = WriteSeqHeader(&p, start, aki, MBEDTLS_ASN1_CONTEXT_SPECIFIC | 0);
    if (rc < 0) return Fail("aki", rc);
    aki += static_cast<size_t>(rc);
    rc = WriteSeqHeader(&p, start, aki, kSeq);
    if (rc < 0) return Fail("aki", rc);
    aki += static_cast<size_t>(rc);
    rc = WriteSeqHeader(&p, start, aki, MBEDTLS_ASN1_OCTET_STRING);
    if (rc < 0) return Fail("aki", rc);
    aki += static_cast<size_t>(rc);
    rc = mbedtls_asn1_write_oid(&p, start, MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER,
                                MBEDTLS_OID_SIZE(MBEDTLS_OID_AUTHORITY_KEY_IDENTIFIER));
    if (rc < 0) return Fail("aki", rc);
    aki += static_cast<size_t>(rc);
    rc = WriteSeqHeader(&p, start, aki, kSeq);
    if (rc < 0) return Fail("aki", rc);
    ext += aki + static_cast<size_t>(rc);

    rc = WriteSeqHeader(&p, start, ext, kSeq);  // Extensions
    if (rc < 0) return Fail("extensions", rc);
    ext += static_cast<size_t>(rc);
    rc = WriteSeqHeader(&p, start, ext, MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_ASN1_CONSTRUCTED | 0);
    if (rc < 0) return Fail("extensions", rc);
    len += ext + static_cast<size_t>(rc);
  }

  // revokedCertificates, in the order given (written backwards).
  if (!revoked.empty()) {
    size_t all = 0;
    for (auto it = revoked.rbegin(); it != revoked.rend(); ++it) {
      size_t entry = 0;
      int rc = WriteTime(&p, start, it->revoked_at_ms);
      if (rc < 0) return Fail("revocation date", rc);
      entry += static_cast<size_t>(rc);
      mbedtls_mpi serial;
      mbedtls_mpi_init(&serial);
      rc = mbedtls_mpi_read_string(&serial, 16, it->serial.c_str());
      if (rc == 0) rc = mbedtls_asn1_write_mpi(&p, start, &serial);
      mbedtls_mpi_free(&serial);
      if (rc < 0) return Fail("serial '" + it->serial + "'", rc);
      entry += static_cast<size_t>(rc);
      rc = WriteSeqHeader(&p, start, entry, kSeq);
      if (rc < 0) return Fail("entry", rc);
      all += entry + static_cast<size_t>(rc);
    }
    int rc = WriteSeqHeader(&p, start, all, kSeq);
    if (rc < 0) return Fail("revoked list", rc);
    len += all + static_cast<size_t>(rc);
  }
  ADD(WriteTime(&p, start, next_update_ms));
  ADD(WriteTime(&p, start, this_update_ms));
  // issuer: the CA certificate's subject, byte for byte.
  ADD(mbedtls_asn1_write_raw_buffer(&p, start, parsed_->subject_raw.p, parsed_->subject_raw.len));
  ADD(WriteEcdsaSha256(&p, start));
  ADD(mbedtls_asn1_write_int(&p, start, 1));  // v2
  ADD(WriteSeqHeader(&p, start, len, kSeq));
  const std::string tbs(reinterpret_cast<const char*>(p), len);

  unsigned char hash[32];
  mbedtls_sha256_ret(reinterpret_cast<const unsigned char*>(tbs.data()), tbs.size(), hash, 0);
  unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
  size_t sig_len = 0;
  int rc = mbedtls_pk_sign(key_.pk(), MBEDTLS_MD_SHA256, hash, sizeof hash, sig, &sig_len, Rng::Fill, &rng);
  if (rc != 0) return Fail("sign", rc);

  // CertificateList, written into the space before the TBS.
  std::vector<unsigned char> out(tbs.size() + sig_len + 64);
  unsigned char* o_start = out.data();
  unsigned char* o = o_start + out.size();
  len = 0;
  ADD(mbedtls_asn1_write_bitstring(&o, o_start, sig, sig_len * 8));
  ADD(WriteEcdsaSha256(&o, o_start));
  ADD(mbedtls_asn1_write_raw_buffer(&o, o_start, reinterpret_cast<const unsigned char*>(tbs.data()), tbs.size()));
  ADD(WriteSeqHeader(&o, o_start, len, kSeq));
  return std::string(reinterpret_cast<const char*>(o), len);
}

namespace {
int64_t EpochMs(const mbedtls_x509_time& t) {
  tm g{};
  g.tm_year = t.year - 1900;
  g.tm_mon = t.mon - 1;
  g.tm_mday = t.day;
  g.tm_hour = t.hour;
  g.tm_min = t.min;
  g.tm_sec = t.sec;
  return static_cast<int64_t>(timegm(&g)) * 1000;
}
}  // namespace

absl::StatusOr<CrlInfo> ReadCrl(std::string_view der) {
  mbedtls_x509_crl crl;
  mbedtls_x509_crl_init(&crl);
  const int rc = mbedtls_x509_crl_parse_der(&crl, reinterpret_cast<const unsigned char*>(der.data()), der.size());
  if (rc != 0) {
    mbedtls_x509_crl_free(&crl);
    return absl::InvalidArgumentError("CRL: " + MbedError(rc));
  }
  CrlInfo info;
  info.this_update_ms = EpochMs(crl.this_update);
  info.next_update_ms = EpochMs(crl.next_update);
  for (const mbedtls_x509_crl_entry* e = &crl.entry; e != nullptr && e->raw.p != nullptr; e = e->next) {
    info.serials.push_back(SerialHex(e->serial));
  }
  std::sort(info.serials.begin(), info.serials.end());
  mbedtls_x509_crl_free(&crl);
  return info;
}

}  // namespace fmq::pki
