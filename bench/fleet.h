// What the in-process management benches share: a fleet of N active devices
// (dev-0 .. dev-N-1, model "m") in one group, registered straight into the
// registry in batches of 20,000 writes (not through commands: registering is
// not what they measure). Single-threaded; the caller's store.
#pragma once

#include <string>

#include "storage/registry.h"

namespace fmq::bench {

inline bool RegisterFleet(storage::Registry& reg, const storage::TenantId& t, long devices, const std::string& group) {
  storage::WriteBatch b;
  fb::DeviceGroupT g;
  g.group_id = group;
  reg.PutGroup(t, g, &b);
  for (long i = 0; i < devices; ++i) {
    fb::DeviceT d;
    d.device_id = "dev-" + std::to_string(i);
    d.tenant_id = t.str();
    d.serial_number = "sn-" + std::to_string(i);
    d.model_id = "m";
    d.group_ids = {group};
    d.status = fb::DeviceStatus::Active;
    if (!reg.PutDevice(t, d, &b).ok()) return false;
    if (b.ops().size() >= 20'000) {
      if (!reg.Commit(b, false).ok()) return false;
      b.Clear();
    }
  }
  return reg.Commit(b, true).ok();
}

}  // namespace fmq::bench
