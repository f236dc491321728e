// RocksDB implementation of KvStore: one column family per Family.
#include <rocksdb/cache.h>
#include <rocksdb/db.h>
#include <rocksdb/filter_policy.h>
#include <rocksdb/table.h>
#include <rocksdb/write_batch.h>

#include "storage/kv_store.h"

namespace fmq::storage {
namespace {

absl::Status FromRocks(const rocksdb::Status& s, std::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = std::string(what) + ": " + s.ToString();
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsIOError() || s.IsNoSpace()) return absl::UnavailableError(msg);
  return absl::InternalError(msg);
}

class RocksKvStore final : public KvStore {
 public:
  RocksKvStore(std::unique_ptr<rocksdb::DB> db, std::vector<rocksdb::ColumnFamilyHandle*> cfs)
      : db_(std::move(db)), cfs_(std::move(cfs)) {}
  ~RocksKvStore() override {
    for (auto* h : cfs_) db_->DestroyColumnFamilyHandle(h);
    db_->Close();
  }

  absl::Status Write(const WriteBatch& batch, bool sync) override {
    rocksdb::WriteBatch wb;
    for (const auto& op : batch.ops()) {
      auto* cf = cfs_[static_cast<size_t>(op.family)];
      rocksdb::Status s = op.del ? wb.Delete(cf, op.key) : wb.Put(cf, op.key, op.value);
      if (!s.ok()) return FromRocks(s, "batch");
    }
    rocksdb::WriteOptions wo;
    wo.sync = sync;
    return FromRocks(db_->Write(wo, &wb), "write");
  }

  absl::StatusOr<std::string> Get(Family f, std::string_view key) override {
    std::string value;
    rocksdb::Status s = db_->Get(rocksdb::ReadOptions(), cfs_[static_cast<size_t>(f)],
                                 rocksdb::Slice(key.data(), key.size()), &value);
    if (!s.ok()) return FromRocks(s, "get");
    return value;
  }

  absl::Status Scan(Family f, std::string_view start, std::string_view limit,
                    const ScanFn& fn) override {
    rocksdb::ReadOptions ro;
    rocksdb::Slice upper(limit.data(), limit.size());
    if (!limit.empty()) ro.iterate_upper_bound = &upper;
    std::unique_ptr<rocksdb::Iterator> it(db_->NewIterator(ro, cfs_[static_cast<size_t>(f)]));
    for (it->Seek(rocksdb::Slice(start.data(), start.size())); it->Valid(); it->Next()) {
      rocksdb::Slice k = it->key(), v = it->value();
      if (!fn(std::string_view(k.data(), k.size()), std::string_view(v.data(), v.size()))) break;
    }
    return FromRocks(it->status(), "scan");
  }

 private:
  std::unique_ptr<rocksdb::DB> db_;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<KvStore>> OpenRocksKvStore(const std::string& dir,
                                                          const RocksOptions& opts) {
  rocksdb::Options options;
  options.create_if_missing = true;
  options.create_missing_column_families = true;
  options.max_background_jobs = 2;
  options.db_write_buffer_size = opts.write_buffer_bytes;
  options.max_open_files = 512;  // well under the process limit of 20,000 fds
  rocksdb::BlockBasedTableOptions table;
  table.block_cache = rocksdb::NewLRUCache(opts.block_cache_bytes);
  table.filter_policy.reset(rocksdb::NewBloomFilterPolicy(10));
  rocksdb::ColumnFamilyOptions cf_opts(options);
  cf_opts.table_factory.reset(rocksdb::NewBlockBasedTableFactory(table));
  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  for (size_t i = 0; i < static_cast<size_t>(Family::kCount); ++i) {
    std::string name = i == 0 ? rocksdb::kDefaultColumnFamilyName
                              : std::string(FamilyName(static_cast<Family>(i)));
    descs.emplace_back(name, cf_opts);
  }
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(rocksdb::DBOptions(options), dir, descs, &handles, &raw);
  if (!s.ok()) return FromRocks(s, "open " + dir);
  return std::unique_ptr<KvStore>(new RocksKvStore(std::unique_ptr<rocksdb::DB>(raw), std::move(handles)));
}

}  // namespace fmq::storage
