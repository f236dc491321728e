// libFuzzer target: bytes read from disk. The first byte picks a record
// type (every top-level table of records.fbs); the rest goes through the
// verifying decoder, which must accept or return DataLoss, never crash or
// read out of bounds; what it accepts must round-trip: re-encoded, decoded
// and re-encoded again, the bytes are the same.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "storage/records.h"

namespace {

template <class T>
void Try(std::string_view bytes) {
  typename T::NativeTableType out;
  absl::Status s = fmq::storage::DecodeRecord<T>(fmq::storage::Family::kMeta, "fuzz", bytes, &out);
  if (!s.ok() && !absl::IsDataLoss(s)) std::abort();
  if (s.ok()) {
    std::string again = fmq::storage::EncodeRecord<T>(out);
    typename T::NativeTableType back;
    if (!fmq::storage::DecodeRecord<T>(fmq::storage::Family::kMeta, "fuzz", again, &back).ok()) std::abort();
    if (fmq::storage::EncodeRecord<T>(back) != again) std::abort();  // the same content both times
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  switch (data[0] % 14) {
    case 0:
      Try<fmq::fb::Session>(bytes);
      break;
    case 1:
      Try<fmq::fb::SessionMessage>(bytes);
      break;
    case 2:
      Try<fmq::fb::Retained>(bytes);
      break;
    case 3:
      Try<fmq::fb::Device>(bytes);
      break;
    case 4:
      Try<fmq::fb::DeviceGroup>(bytes);
      break;
    case 5:
      Try<fmq::fb::Configuration>(bytes);
      break;
    case 6:
      Try<fmq::fb::Certificate>(bytes);
      break;
    case 7:
      Try<fmq::fb::Job>(bytes);
      break;
    case 8:
      Try<fmq::fb::AuditEntry>(bytes);
      break;
    case 9:
      Try<fmq::fb::Tenant>(bytes);
      break;
    case 10:
      Try<fmq::fb::InboundQos2>(bytes);
      break;
    case 11:
      Try<fmq::fb::DeviceModel>(bytes);
      break;
    case 12:
      Try<fmq::fb::JobDevice>(bytes);
      break;
    default:
      Try<fmq::fb::DeviceConfig>(bytes);
      break;
  }
  return 0;
}
