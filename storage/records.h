// Stored records: flatbuffers tables (storage/schema/records.fbs) followed
// by a CRC32C of the table and a record-format byte (doc/storage-format.md).
// Every read checks the checksum and verifies the buffer; a corrupt or
// unknown record is a DataLoss status naming the family and key, never a
// crash and never another record's content. Stateless helpers; any thread.
#pragma once

#include <flatbuffers/flatbuffers.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "storage/kv_store.h"
#include "storage/records_generated.h"

namespace fmq::storage {

// Bumped only for a change the flatbuffers evolution rules cannot express.
// Format 1 (no checksum) was written before the checksum and is still read.
inline constexpr uint8_t kRecordFormat = 2;
inline constexpr uint8_t kRecordFormatNoChecksum = 1;

// CRC32C (Castagnoli) of `data`.
uint32_t Crc32c(std::string_view data);

// Key bytes made printable for error messages and logs.
std::string PrintableKey(std::string_view key);

absl::Status CorruptRecord(Family f, std::string_view key, std::string_view why);

template <class Table>
std::string EncodeRecord(const typename Table::NativeTableType& obj) {
  flatbuffers::FlatBufferBuilder fbb(256);
  fbb.Finish(Table::Pack(fbb, &obj));
  std::string out(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
  const uint32_t crc = Crc32c(out);
  for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(crc >> (8 * i)));  // little-endian
  out.push_back(static_cast<char>(kRecordFormat));
  return out;
}

// Verifies and unpacks; `f` and `key` only name the record in errors.
template <class Table>
absl::Status DecodeRecord(Family f, std::string_view key, std::string_view bytes,
                          typename Table::NativeTableType* out) {
  if (bytes.size() < 2) return CorruptRecord(f, key, "too short");
  const uint8_t format = static_cast<uint8_t>(bytes.back());
  size_t n = bytes.size() - 1;
  if (format == kRecordFormat) {
    if (n < 5) return CorruptRecord(f, key, "too short");
    n -= 4;
    uint32_t want = 0;
    for (int i = 0; i < 4; ++i) want |= uint32_t{static_cast<uint8_t>(bytes[n + i])} << (8 * i);
    if (Crc32c(bytes.substr(0, n)) != want) return CorruptRecord(f, key, "checksum mismatch");
  } else if (format != kRecordFormatNoChecksum) {
    return CorruptRecord(f, key, "unknown record format " + std::to_string(format));
  }
  const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
  std::vector<uint64_t> aligned;  // flatbuffers wants 8-byte alignment
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0) {
    aligned.resize((n + 7) / 8);
    std::memcpy(aligned.data(), p, n);
    p = reinterpret_cast<const uint8_t*>(aligned.data());
  }
  flatbuffers::Verifier v(p, n);
  if (!v.VerifyBuffer<Table>(nullptr)) return CorruptRecord(f, key, "flatbuffer verification failed");
  // UnPackTo leaves fields the stored table lacks as they were: a reused
  // object would keep another record's groups or strings.
  *out = typename Table::NativeTableType();
  flatbuffers::GetRoot<Table>(p)->UnPackTo(out);
  return absl::OkStatus();
}

// Reads and decodes one record; NotFound when absent.
template <class Table>
absl::Status ReadRecord(KvStore& kv, Family f, std::string_view key, typename Table::NativeTableType* out) {
  absl::StatusOr<std::string> v = kv.Get(f, key);
  if (!v.ok()) return v.status();
  return DecodeRecord<Table>(f, key, *v, out);
}

}  // namespace fmq::storage
