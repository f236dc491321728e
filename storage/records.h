// Stored records: flatbuffers tables (storage/schema/records.fbs) with a
// trailing record-format byte. Every read verifies the buffer; a corrupt or
// unknown record is a DataLoss status naming the family and key, never a
// crash. Stateless helpers; any thread.
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
inline constexpr uint8_t kRecordFormat = 1;

// Key bytes made printable for error messages and logs.
std::string PrintableKey(std::string_view key);

absl::Status CorruptRecord(Family f, std::string_view key, std::string_view why);

template <class Table>
std::string EncodeRecord(const typename Table::NativeTableType& obj) {
  flatbuffers::FlatBufferBuilder fbb(256);
  fbb.Finish(Table::Pack(fbb, &obj));
  std::string out(reinterpret_cast<const char*>(fbb.GetBufferPointer()), fbb.GetSize());
  out.push_back(static_cast<char>(kRecordFormat));
  return out;
}

// Verifies and unpacks; `f` and `key` only name the record in errors.
template <class Table>
absl::Status DecodeRecord(Family f, std::string_view key, std::string_view bytes,
                          typename Table::NativeTableType* out) {
  if (bytes.size() < 2) return CorruptRecord(f, key, "too short");
  if (static_cast<uint8_t>(bytes.back()) != kRecordFormat) {
    return CorruptRecord(f, key, "unknown record format " + std::to_string(static_cast<uint8_t>(bytes.back())));
  }
  const size_t n = bytes.size() - 1;
  const uint8_t* p = reinterpret_cast<const uint8_t*>(bytes.data());
  std::vector<uint64_t> aligned;  // flatbuffers wants 8-byte alignment
  if (reinterpret_cast<uintptr_t>(p) % 8 != 0) {
    aligned.resize((n + 7) / 8);
    std::memcpy(aligned.data(), p, n);
    p = reinterpret_cast<const uint8_t*>(aligned.data());
  }
  flatbuffers::Verifier v(p, n);
  if (!v.VerifyBuffer<Table>(nullptr)) return CorruptRecord(f, key, "flatbuffer verification failed");
  flatbuffers::GetRoot<Table>(p)->UnPackTo(out);
  return absl::OkStatus();
}

// Reads and decodes one record; NotFound when absent.
template <class Table>
absl::Status ReadRecord(KvStore& kv, Family f, std::string_view key,
                        typename Table::NativeTableType* out) {
  absl::StatusOr<std::string> v = kv.Get(f, key);
  if (!v.ok()) return v.status();
  return DecodeRecord<Table>(f, key, *v, out);
}

}  // namespace fmq::storage
